// Package hostnet is the host side of VM networking: one bridge, a TAP
// per VM attached to it, addresses from a private /24, and the nftables
// rules that give VMs the outside through NAT as far as each VM's
// egress policy lets it (and the host only for DNS), keep them apart
// from each other unless they share, and pin each TAP to its VM's MAC
// and address (with the host's neighbour entries) so no guest passes as
// another. It knows addresses and networks, not names: vmnet turns a
// VM's names into the addresses it Learns. Everything is done over netlink (no
// `ip`, no `nft`), in the daemon's network namespace or in a named one
// (bangerd --netns), and everything banger creates is named so that a
// restarted daemon can find and remove what no live VM owns.
package hostnet

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Defaults: a /24 from the private ranges that common tools (Docker,
// libvirt, Podman, cloud VPC defaults) do not take.
const (
	DefaultBridge = "banger0"
	DefaultSubnet = "10.253.0.0/24"
)

// TAPPrefix starts every TAP banger creates; nothing else may use it.
const TAPPrefix = "bg-"

// Mode is how a VM is networked.
type Mode string

const (
	// NAT (the default): the outside through NAT, the host and DNS;
	// no traffic to or from other VMs.
	NAT Mode = "nat"
	// Shared: NAT, and the other shared VMs on the bridge.
	Shared Mode = "shared"
	// None: no network device at all.
	None Mode = "none"
)

// ParseMode checks a --network value; "" is NAT.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "":
		return NAT, nil
	case NAT, Shared, None:
		return Mode(s), nil
	}
	return "", fmt.Errorf("--network %q: use nat (the default: outside through NAT, isolated from other VMs), shared (nat, and reachable by other shared VMs) or none", s)
}

// Config says where VM networking lives.
type Config struct {
	Bridge string       // default DefaultBridge
	Subnet netip.Prefix // an IPv4 /16../29; default DefaultSubnet
	// NetNS is a named network namespace (/run/netns/NAME) to build
	// everything in; "" is the daemon's own.
	NetNS string
	// StateDir keeps the record of whether banger turned IPv4
	// forwarding on, so that it is turned off again only then.
	StateDir string
	// TAPOwner and TAPGroup own every TAP (TUNSETOWNER/TUNSETGROUP): a
	// VMM that runs unprivileged (Firecracker under the jailer) may then
	// attach to it. 0 is root.
	TAPOwner, TAPGroup int
}

// Net is the VM network of one daemon. Methods are safe for concurrent use.
type Net struct {
	cfg Config
	gw  netip.Addr
	ns  netns.NsHandle // -1: the daemon's own namespace
	mu  sync.Mutex     // serialises link and rule changes
	// learn is Learn's nftables connection, opened in the namespace
	// on first use (under mu).
	learn *nftables.Conn
}

// Open validates cfg and opens its namespace; it changes nothing yet.
func Open(cfg Config) (*Net, error) {
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = netip.MustParsePrefix(DefaultSubnet)
	}
	if len(cfg.Bridge) > 15 || strings.HasPrefix(cfg.Bridge, TAPPrefix) {
		return nil, fmt.Errorf("bridge name %q: at most 15 characters, not starting with %q", cfg.Bridge, TAPPrefix)
	}
	p := cfg.Subnet.Masked()
	if !p.Addr().Is4() || p.Bits() < 16 || p.Bits() > 29 {
		return nil, fmt.Errorf("subnet %s: use an IPv4 network between /16 and /29, such as %s", cfg.Subnet, DefaultSubnet)
	}
	if !p.Addr().IsPrivate() {
		return nil, fmt.Errorf("subnet %s is not a private range: use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16", p)
	}
	cfg.Subnet = p
	n := &Net{cfg: cfg, gw: p.Addr().Next(), ns: -1}
	if cfg.NetNS != "" {
		h, err := netns.GetFromName(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("opening network namespace %q: %w: create it with `ip netns add %s`", cfg.NetNS, err, cfg.NetNS)
		}
		n.ns = h
	}
	return n, nil
}

// Close releases the namespace handle and Learn's connection.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.learn != nil {
		n.learn.CloseLasting()
		n.learn = nil
	}
	n.mu.Unlock()
	if n.ns >= 0 {
		return n.ns.Close()
	}
	return nil
}

// Bridge is the bridge's name; Gateway its address, the VMs' gateway
// and resolver; Subnet the VMs' network.
func (n *Net) Bridge() string       { return n.cfg.Bridge }
func (n *Net) Gateway() netip.Addr  { return n.gw }
func (n *Net) Subnet() netip.Prefix { return n.cfg.Subnet }
func (n *Net) NetNS() string        { return n.cfg.NetNS }
func (n *Net) prefix() netip.Prefix { return netip.PrefixFrom(n.gw, n.cfg.Subnet.Bits()) }
func (n *Net) gatewayIP() net.IP    { return net.IP(n.gw.AsSlice()) }

// Do runs fn in the VM network's namespace: sockets it opens and
// processes it starts live there. Without a namespace it just runs fn.
func (n *Net) Do(fn func() error) error {
	if n.ns < 0 {
		return fn()
	}
	return within(n.ns, n.cfg.NetNS, fn)
}

// InNetNS runs fn in the named network namespace (for tools and tests
// that reach into a namespace bangerd was given).
func InNetNS(name string, fn func() error) error {
	h, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("opening network namespace %q: %w", name, err)
	}
	defer h.Close()
	return within(h, name, fn)
}

// within switches the calling goroutine's OS thread into h for fn. The
// goroutine stays locked to that thread while it is switched.
func within(h netns.NsHandle, name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading the current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %q: %w", name, err)
	}
	defer func() {
		// A thread that cannot go back is left locked: Go ends it with
		// the goroutine instead of reusing it in the wrong namespace.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// TAPName is the TAP of the VM with this id: short enough for the
// 15-character limit, and recognisably banger's.
func TAPName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return fmt.Sprintf("%s%x", TAPPrefix, sum[:6])
}

// MAC is the guest address of the VM with this id: locally administered,
// unicast, and stable for the VM's life.
func MAC(id string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("mac:" + id))
	return net.HardwareAddr{0x02, 0xb9, sum[0], sum[1], sum[2], sum[3]}
}

// ErrSubnetInUse means the configured subnet overlaps a network the host
// already routes.
var ErrSubnetInUse = errors.New("subnet overlaps a host network")

// CheckSubnet refuses a subnet that overlaps a route of any link but the
// bridge itself: VMs there would shadow (or be shadowed by) that network.
func (n *Net) CheckSubnet() error {
	return n.Do(func() error {
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("listing routes: %w", err)
		}
		own := -1
		if br, err := netlink.LinkByName(n.cfg.Bridge); err == nil {
			own = br.Attrs().Index
		}
		for _, r := range routes {
			if r.Dst == nil || r.LinkIndex == own || r.Table == unix.RT_TABLE_LOCAL && r.Dst.IP.IsLoopback() {
				continue
			}
			dst, ok := ipNetPrefix(r.Dst)
			if !ok || dst.Bits() == 0 || !dst.Overlaps(n.cfg.Subnet) {
				continue
			}
			if r.Table == unix.RT_TABLE_LOCAL && dst.Bits() == 32 && !n.cfg.Subnet.Contains(dst.Addr()) {
				continue
			}
			dev := fmt.Sprint(r.LinkIndex)
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			return fmt.Errorf("%w: %s is routed via %s: choose another subnet for banger (bangerd --subnet, e.g. 10.254.0.0/24)", ErrSubnetInUse, dst, dev)
		}
		// Addresses of links that are down have no route yet, but will.
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("listing addresses: %w", err)
		}
		for _, a := range addrs {
			p, ok := ipNetPrefix(a.IPNet)
			if !ok || a.LinkIndex == own || !p.Masked().Overlaps(n.cfg.Subnet) {
				continue
			}
			dev := fmt.Sprint(a.LinkIndex)
			if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			return fmt.Errorf("%w: %s is on %s: choose another subnet for banger (bangerd --subnet, e.g. 10.254.0.0/24)", ErrSubnetInUse, p.Masked(), dev)
		}
		return nil
	})
}

// EnsureBridge creates the bridge with the gateway address and brings it
// up; an existing one is checked and reused.
func (n *Net) EnsureBridge() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.CheckSubnet(); err != nil {
		return err
	}
	return n.Do(func() error {
		l, err := netlink.LinkByName(n.cfg.Bridge)
		if err != nil {
			br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.cfg.Bridge}}
			if err := netlink.LinkAdd(br); err != nil {
				return fmt.Errorf("creating bridge %s: %w", n.cfg.Bridge, err)
			}
			if l, err = netlink.LinkByName(n.cfg.Bridge); err != nil {
				return fmt.Errorf("creating bridge %s: %w", n.cfg.Bridge, err)
			}
		} else if l.Type() != "bridge" {
			return fmt.Errorf("%s exists and is a %s, not a bridge: remove it or choose another bridge name (bangerd --bridge)", n.cfg.Bridge, l.Type())
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.gatewayIP(), Mask: net.CIDRMask(n.cfg.Subnet.Bits(), 32)}}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("listing addresses of %s: %w", n.cfg.Bridge, err)
		}
		have := false
		for _, a := range addrs {
			if p, ok := ipNetPrefix(a.IPNet); ok && p == n.prefix() {
				have = true
			} else if err := netlink.AddrDel(l, &a); err != nil {
				return fmt.Errorf("removing stale address %s from %s: %w", a.IPNet, n.cfg.Bridge, err)
			}
		}
		if !have {
			if err := netlink.AddrAdd(l, addr); err != nil {
				return fmt.Errorf("adding %s to %s: %w", addr.IPNet, n.cfg.Bridge, err)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("bringing %s up: %w", n.cfg.Bridge, err)
		}
		return nil
	})
}

// AddTAP makes sure the persistent TAP name exists, enslaved to the
// bridge and up: one that already is is reused, anything else of that
// name is replaced.
func (n *Net) AddTAP(name string) error {
	if !strings.HasPrefix(name, TAPPrefix) || len(name) > 15 {
		return fmt.Errorf("TAP name %q: must start with %q and have at most 15 characters", name, TAPPrefix)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.Do(func() error {
		br, err := netlink.LinkByName(n.cfg.Bridge)
		if err != nil {
			return fmt.Errorf("finding bridge %s: %w", n.cfg.Bridge, err)
		}
		if old, err := netlink.LinkByName(name); err == nil {
			// A VM keeps its TAP from its first start to its removal:
			// deleting a link costs the kernel an RCU grace period
			// (about 20 ms here), too much for every stop and start.
			if _, ok := old.(*netlink.Tuntap); ok && old.Attrs().MasterIndex == br.Attrs().Index {
				if err := netlink.LinkSetUp(old); err != nil {
					return fmt.Errorf("bringing TAP %s up: %w", name, err)
				}
				return nil
			}
			netlink.LinkDel(old)
		}
		// No multi-queue: Firecracker and QEMU both open the TAP with
		// IFF_NO_PI|IFF_VNET_HDR, and a persistent TAP's queue mode
		// must match its openers'.
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
			Owner: uint32(n.cfg.TAPOwner), Group: uint32(n.cfg.TAPGroup)}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("creating TAP %s: %w", name, err)
		}
		for _, f := range tap.Fds {
			f.Close()
		}
		l, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetMaster(l, br)
		}
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		if err != nil {
			if l != nil {
				netlink.LinkDel(l)
			}
			return fmt.Errorf("attaching TAP %s to %s: %w", name, n.cfg.Bridge, err)
		}
		return nil
	})
}

// SetTAPUp brings a VM's TAP up or down. A restored guest's TAP stays
// down until the guest has its new identity: until then it is a copy of
// its source and would send frames with the source's MAC and address,
// which the bridge would learn on the wrong port.
func (n *Net) SetTAPUp(name string, up bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("finding TAP %s: %w", name, err)
		}
		if up {
			err = netlink.LinkSetUp(l)
		} else {
			err = netlink.LinkSetDown(l)
		}
		if err != nil {
			return fmt.Errorf("setting TAP %s up=%v: %w", name, up, err)
		}
		return nil
	})
}

// DelTAP removes a TAP; one that is already gone is not an error.
func (n *Net) DelTAP(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.Do(func() error { return delLink(name) })
}

func delLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	return nil
}

// TAPs lists every link named like a banger TAP.
func (n *Net) TAPs() ([]string, error) {
	var out []string
	err := n.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("listing links: %w", err)
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, TAPPrefix) {
				out = append(out, l.Attrs().Name)
			}
		}
		return nil
	})
	return out, err
}

// RemoveOrphans deletes every banger TAP not in keep: the leftovers of
// VMs that died or of a daemon killed mid-setup.
func (n *Net) RemoveOrphans(keep map[string]bool) ([]string, error) {
	taps, err := n.TAPs()
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, t := range taps {
		if keep[t] {
			continue
		}
		if err := n.DelTAP(t); err != nil {
			return removed, err
		}
		removed = append(removed, t)
	}
	return removed, nil
}

// Teardown removes everything banger made in the namespace: rules, TAPs
// and the bridge, and turns IPv4 forwarding back off if banger turned it
// on. For `banger` uninstall paths and tests.
func (n *Net) Teardown() error {
	if err := n.Apply(nil); err != nil {
		return err
	}
	if _, err := n.RemoveOrphans(nil); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.Do(func() error { return delLink(n.cfg.Bridge) })
}

// Allocate picks the lowest free address of subnet for a VM: not the
// network, the gateway (the first host) or the broadcast address, and
// none of used.
func Allocate(subnet netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	taken := map[netip.Addr]bool{}
	for _, u := range used {
		taken[u] = true
	}
	subnet = subnet.Masked()
	gw := subnet.Addr().Next()
	for a := gw.Next(); subnet.Contains(a); a = a.Next() {
		if !subnet.Contains(a.Next()) {
			break // broadcast
		}
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: all %d addresses of %s are taken: remove VMs you no longer need (`banger vm prune`) or configure a larger subnet", ErrPoolExhausted, hosts(subnet), subnet)
}

// ErrPoolExhausted means no address is left for another VM.
var ErrPoolExhausted = errors.New("no free VM address")

func hosts(p netip.Prefix) int { return 1<<(32-p.Bits()) - 3 }

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// setForwarding sets net.ipv4.ip_forward in the namespace and returns
// the value it had.
func setForwarding(on bool) (bool, error) {
	const p = "/proc/sys/net/ipv4/ip_forward"
	b, err := os.ReadFile(p)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", p, err)
	}
	was := strings.TrimSpace(string(b)) == "1"
	if was == on {
		return was, nil
	}
	v := "0\n"
	if on {
		v = "1\n"
	}
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		return was, fmt.Errorf("setting %s: %w", p, err)
	}
	return was, nil
}
