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
// transaction, so no packet ever sees half a ruleset. Rules are keyed
// by their comment (which names the VM and what the rule is about):
// rules already in place stay, missing ones are added and stale ones
// deleted. Adding is cheap; deleting costs the kernel an RCU grace
// period, so a VM's start touches no existing rule and its stop deletes
// only its own. With no endpoints the tables go. Forwarding is on while
// any VM is networked.
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
		existing, err := ourTables(c)
		if err != nil {
			return err
		}
		if err := n.sync(c, existing, n.desired(c, existing, eps)); err != nil {
			return err
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("applying banger's nftables rules: %w (is the nf_tables module available? `modprobe nf_tables`)", err)
		}
		return n.forwarding(true)
	})
}

// ruleSpec is one rule banger wants: its chain, its key (the comment),
// and whether it goes before the chain's other rules.
type ruleSpec struct {
	chain *nftables.Chain
	key   string
	exprs []expr.Any
	first bool
}

// ourTables reports which of banger's tables exist.
func ourTables(c *nftables.Conn) (map[nftables.TableFamily]bool, error) {
	existing := map[nftables.TableFamily]bool{}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge} {
		ts, err := c.ListTablesOfFamily(fam)
		if err != nil {
			return nil, fmt.Errorf("listing nftables tables: %w", err)
		}
		for _, t := range ts {
			existing[fam] = existing[fam] || t.Name == TableName
		}
	}
	return existing, nil
}

// desired queues the tables and chains that do not exist yet and
// returns the rules they should hold. Existing ones are not queued
// again: "adding" an existing base chain is an update that costs the
// kernel as much as a deletion.
func (n *Net) desired(c *nftables.Conn, existing map[nftables.TableFamily]bool, eps []Endpoint) []ruleSpec {
	table := func(fam nftables.TableFamily) *nftables.Table {
		t := &nftables.Table{Name: TableName, Family: fam}
		if !existing[fam] {
			c.AddTable(t)
		}
		return t
	}
	chain := func(ch *nftables.Chain) *nftables.Chain {
		if !existing[ch.Table.Family] {
			c.AddChain(ch)
		}
		return ch
	}
	inet := table(nftables.TableFamilyINet)
	post := chain(&nftables.Chain{Name: "postrouting", Table: inet, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	br := table(nftables.TableFamilyBridge)
	fwd := chain(&nftables.Chain{Name: "forward", Table: br, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	shared := chain(&nftables.Chain{Name: "shared", Table: br})
	var want []ruleSpec
	for _, ep := range eps {
		// ip saddr VM oifname != BRIDGE masquerade: traffic leaving
		// towards the outside, not replies on the bridge.
		want = append(want, ruleSpec{chain: post, key: fmt.Sprintf("vm %s %s", ep.VM, ep.IP), exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ep.IP.AsSlice()},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n.cfg.Bridge)},
			&expr.Masq{},
		}})
		if ep.Mode != Shared {
			continue
		}
		// Shared VMs reach each other: iifname TAP jump shared, and in
		// shared: oifname TAP accept. Everything else between banger
		// TAPs is dropped by the last rule. Traffic to and from the host
		// (the bridge's own address) is input/output, not forward.
		key := fmt.Sprintf("vm %s %s", ep.VM, ep.TAP)
		want = append(want, ruleSpec{chain: fwd, key: key, first: true, exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(ep.TAP)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: shared.Name},
		}}, ruleSpec{chain: shared, key: key, exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(ep.TAP)},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
	}
	// iifname "bg-*" oifname "bg-*" drop: a prefix compare, as nft
	// compiles a trailing wildcard.
	return append(want, ruleSpec{chain: fwd, key: "isolate VMs", exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(TAPPrefix)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(TAPPrefix)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
}

// sync queues what turns the rules in place into want: deletions of
// rules whose key is not wanted (or is there twice), additions of
// wanted keys that are missing.
func (n *Net) sync(c *nftables.Conn, existing map[nftables.TableFamily]bool, want []ruleSpec) error {
	wanted := map[string]bool{}
	for _, r := range want {
		wanted[r.chain.Name+"\x00"+r.key] = true
	}
	have := map[string]bool{}
	seenChain := map[*nftables.Chain]bool{}
	for _, r := range want {
		if seenChain[r.chain] || !existing[r.chain.Table.Family] {
			continue
		}
		seenChain[r.chain] = true
		rules, err := c.GetRules(r.chain.Table, r.chain)
		if err != nil {
			continue // a chain that does not exist yet holds nothing
		}
		for _, old := range rules {
			key, _ := userdata.GetString(old.UserData, userdata.TypeComment)
			k := r.chain.Name + "\x00" + key
			if !wanted[k] || have[k] {
				if err := c.DelRule(old); err != nil {
					return fmt.Errorf("removing a stale nftables rule: %w", err)
				}
				continue
			}
			have[k] = true
		}
	}
	// Rules that go first are inserted at the head one after another,
	// so they are queued in reverse to end up in order.
	for i := len(want) - 1; i >= 0; i-- {
		if r := want[i]; r.first && !have[r.chain.Name+"\x00"+r.key] {
			c.InsertRule(&nftables.Rule{Table: r.chain.Table, Chain: r.chain, UserData: comment(r.key), Exprs: r.exprs})
		}
	}
	for _, r := range want {
		if !r.first && !have[r.chain.Name+"\x00"+r.key] {
			c.AddRule(&nftables.Rule{Table: r.chain.Table, Chain: r.chain, UserData: comment(r.key), Exprs: r.exprs})
		}
	}
	return nil
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

// Tables checks that nftables answers in the namespace (doctor).
func (n *Net) Tables() error {
	return n.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		_, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
		return err
	})
}
