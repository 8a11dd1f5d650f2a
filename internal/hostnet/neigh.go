package hostnet

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The host's neighbour entries on the bridge pin each live VM's address
// to its MAC (`ip neigh replace IP lladdr MAC dev BRIDGE nud permanent`):
// the host then never asks who has a VM's address, and no ARP, forged
// or not, changes the answer. Every permanent entry on the bridge for an
// address of the subnet is banger's: Apply removes those of VMs that are
// gone, the leftovers of a daemon that died included.

// neighbour is one permanent entry: an address and the MAC it is pinned to.
type neighbour struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// neighbourChanges is what turns the permanent entries have into want:
// entries to delete (not wanted, or pinned to another MAC) and entries
// to set.
func neighbourChanges(have, want []neighbour) (del, set []neighbour) {
	wanted := map[netip.Addr]net.HardwareAddr{}
	for _, w := range want {
		wanted[w.IP] = w.MAC
	}
	ok := map[netip.Addr]bool{}
	for _, h := range have {
		if mac, found := wanted[h.IP]; found && bytes.Equal(mac, h.MAC) {
			ok[h.IP] = true
			continue
		}
		if _, found := wanted[h.IP]; !found {
			del = append(del, h)
		}
	}
	for _, w := range want {
		if !ok[w.IP] {
			set = append(set, w) // a replace: it overwrites another MAC
		}
	}
	sort.Slice(del, func(i, j int) bool { return del[i].IP.Less(del[j].IP) })
	sort.Slice(set, func(i, j int) bool { return set[i].IP.Less(set[j].IP) })
	return del, set
}

// syncNeighbours makes the bridge's permanent entries for subnet
// addresses exactly eps'. The caller holds n.mu and is in the namespace.
func (n *Net) syncNeighbours(eps []Endpoint) error {
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) && len(eps) == 0 {
			return nil // no bridge, no entries
		}
		return fmt.Errorf("finding bridge %s: %w", n.cfg.Bridge, err)
	}
	idx := br.Attrs().Index
	list, err := netlink.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the neighbours of %s: %w", n.cfg.Bridge, err)
	}
	var have, want []neighbour
	for _, e := range list {
		a, ok := netip.AddrFromSlice(e.IP)
		if ok && e.State&netlink.NUD_PERMANENT != 0 && n.cfg.Subnet.Contains(a.Unmap()) {
			have = append(have, neighbour{a.Unmap(), e.HardwareAddr})
		}
	}
	for _, ep := range eps {
		want = append(want, neighbour{ep.IP, ep.MAC})
	}
	del, set := neighbourChanges(have, want)
	for _, d := range del {
		err := netlink.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, IP: net.IP(d.IP.AsSlice())})
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing the neighbour entry of %s from %s: %w", d.IP, n.cfg.Bridge, err)
		}
	}
	for _, s := range set {
		err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: net.IP(s.IP.AsSlice()), HardwareAddr: s.MAC})
		if err != nil {
			return fmt.Errorf("pinning %s to %s on %s: %w", s.IP, s.MAC, n.cfg.Bridge, err)
		}
	}
	return nil
}
