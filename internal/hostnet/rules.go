package hostnet

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName names banger's nftables tables: "inet banger" (NAT) and
// "bridge banger" (which VMs may talk to each other). Bridged traffic
// between TAPs never reaches inet hooks, so isolation needs a table of
// the bridge family; nothing else is needed, so there are exactly two.
const TableName = "banger"

// Endpoint is one VM's place on the bridge, for the rules.
type Endpoint struct {
	VM   string // the VM's name, in rule comments
	TAP  string
	IP   netip.Addr
	Mode Mode
}

// forwardMarker records that banger turned IPv4 forwarding on, so that
// it turns it off again only in that case.
const forwardMarker = "ip_forward.banger"

// Apply makes banger's rules exactly those for eps, in one nftables
// transaction: each table is (re)created and filled in the same batch,
// so no packet ever sees half a ruleset. With no endpoints the tables
// go. Forwarding is on while any VM is networked.
func (n *Net) Apply(eps []Endpoint) error {
	if len(eps) == 0 {
		if err := n.deleteTables(); err != nil {
			return err
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.Do(func() error { return n.forwarding(false) })
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	eps = append([]Endpoint(nil), eps...)
	sort.Slice(eps, func(i, j int) bool { return eps[i].TAP < eps[j].TAP })
	return n.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return fmt.Errorf("opening nftables: %w", err)
		}
		n.natTable(c, eps)
		n.bridgeTable(c, eps)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("applying banger's nftables rules: %w (is the nf_tables module available? `modprobe nf_tables`)", err)
		}
		return n.forwarding(len(eps) > 0)
	})
}

// replaceTable queues "add table; flush table": the add is a no-op for a
// table that exists, the flush empties its chains, and the rules queued
// after it land in the same transaction. Flushing instead of deleting
// keeps the base chains' hooks registered, which spares the kernel an
// RCU grace period per change.
func replaceTable(c *nftables.Conn, fam nftables.TableFamily) *nftables.Table {
	t := c.AddTable(&nftables.Table{Name: TableName, Family: fam})
	c.FlushTable(t)
	return t
}

func (n *Net) natTable(c *nftables.Conn, eps []Endpoint) {
	t := replaceTable(c, nftables.TableFamilyINet)
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	for _, ep := range eps {
		// ip saddr VM oifname != BRIDGE masquerade: traffic leaving
		// towards the outside, not replies on the bridge.
		c.AddRule(&nftables.Rule{Table: t, Chain: post, UserData: comment("vm " + ep.VM), Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ep.IP.AsSlice()},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n.cfg.Bridge)},
			&expr.Masq{},
		}})
	}
}

// bridgeTable lets shared VMs reach each other and drops every other
// frame from one banger TAP to another. Traffic to and from the host
// (the bridge's own address) is input/output, not forward, and passes.
func (n *Net) bridgeTable(c *nftables.Conn, eps []Endpoint) {
	t := replaceTable(c, nftables.TableFamilyBridge)
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	shared := c.AddChain(&nftables.Chain{Name: "shared", Table: t})
	for _, ep := range eps {
		if ep.Mode != Shared {
			continue
		}
		// iifname TAP jump shared; in shared: oifname TAP accept.
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, UserData: comment("vm " + ep.VM), Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(ep.TAP)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: shared.Name},
		}})
		c.AddRule(&nftables.Rule{Table: t, Chain: shared, UserData: comment("vm " + ep.VM), Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(ep.TAP)},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
	}
	// iifname "bg-*" oifname "bg-*" drop: a prefix compare, as nft
	// compiles a trailing wildcard.
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, UserData: comment("isolate VMs"), Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(TAPPrefix)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(TAPPrefix)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
}

// deleteTables removes both tables (Teardown).
func (n *Net) deleteTables() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge} {
			t := &nftables.Table{Name: TableName, Family: fam}
			c.AddTable(t)
			c.DelTable(t)
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("removing banger's nftables tables: %w", err)
		}
		return nil
	})
}

// forwarding turns IPv4 forwarding on when VMs need it, remembering that
// banger did, and back off when none do and banger had turned it on.
func (n *Net) forwarding(need bool) error {
	if n.cfg.StateDir == "" {
		return fmt.Errorf("hostnet: no state directory configured")
	}
	marker := filepath.Join(n.cfg.StateDir, forwardMarker)
	if n.cfg.NetNS != "" {
		marker += "." + n.cfg.NetNS
	}
	_, ours := os.Stat(marker)
	if need {
		was, err := setForwarding(true)
		if err != nil {
			return err
		}
		if !was {
			return os.WriteFile(marker, []byte("banger turned net.ipv4.ip_forward on\n"), 0o644)
		}
		return nil
	}
	if ours != nil {
		return nil
	}
	if _, err := setForwarding(false); err != nil {
		return err
	}
	return os.Remove(marker)
}

// ifname is an interface name as nftables compares it: NUL-padded to
// IFNAMSIZ for an exact match.
func ifname(s string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, s)
	return b
}

func comment(s string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, s)
}
