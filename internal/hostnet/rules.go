package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TableName names banger's nftables tables: "inet banger" (NAT) and
// "bridge banger" (what may enter the bridge from a VM's TAP, and which
// VMs may talk to each other). Bridged traffic between TAPs never
// reaches inet hooks, so both need a table of the bridge family; nothing
// else is needed, so there are exactly two.
const TableName = "banger"

// Endpoint is one VM's place on the bridge, for the rules.
type Endpoint struct {
	VM  string // the VM's name, in rule comments
	TAP string
	// MAC and IP are the only source addresses frames from TAP may
	// carry (hostnet.MAC of the VM's id, its allocated address).
	MAC  net.HardwareAddr
	IP   netip.Addr
	Mode Mode
	// Egress is what the VM may reach beyond the bridge (the zero
	// value: the default policy).
	Egress Egress
}

// forwardMarker records that banger turned IPv4 forwarding on, so that
// it turns it off again only in that case.
const forwardMarker = "ip_forward.banger"

// Apply makes banger's rules, the guard's set of VM addresses and the
// bridge's permanent neighbour entries exactly those for eps: rules in
// one nftables transaction, so no packet ever sees half a ruleset. Rules
// are keyed by their comment (which names the VM and what the rule is
// about) and set elements by their TAP, MAC and address: those already
// in place stay, missing ones are added and stale ones deleted, which
// is also how a restarted daemon drops what VMs that died left behind.
// Adding is cheap; deleting a rule costs the kernel an RCU grace period,
// so a VM's start touches no existing rule and its stop deletes only
// its own. With no endpoints the tables go. Forwarding is on while any
// VM is networked.
func (n *Net) Apply(eps []Endpoint) error {
	if len(eps) == 0 {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.Do(func() error {
			if err := deleteTables(); err != nil {
				return err
			}
			if err := n.syncNeighbours(nil); err != nil {
				return err
			}
			return n.forwarding(false)
		})
	}
	rs, err := buildRuleset(n.cfg.Bridge, n.cfg.Subnet, eps)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.Do(func() error {
		err := syncOnce(rs)
		if errors.Is(err, unix.ENOENT) {
			// A learned address expired between the listing and the
			// transaction, which then deleted what no longer exists:
			// list again.
			err = syncOnce(rs)
		}
		if err != nil {
			return fmt.Errorf("applying banger's nftables rules: %w (is the nf_tables module available? `modprobe nf_tables`)", err)
		}
		if err := n.syncNeighbours(eps); err != nil {
			return err
		}
		return n.forwarding(true)
	})
}

// syncOnce makes the tables rs in one transaction.
func syncOnce(rs ruleset) error {
	c, err := newConn()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	defer c.CloseLasting()
	have, err := ourObjects(c)
	if err != nil {
		return err
	}
	if err := syncRules(c, have, rs); err != nil {
		return err
	}
	return c.Flush()
}

// newConn opens nftables for a transaction of any size banger makes: a
// daemon that restores a full /24 of running VMs after its tables were
// flushed (a firewall reload) sends a few hundred rules at once.
//   - A transaction is one sendmsg, refused with EMSGSIZE when larger
//     than the socket's send buffer (212992 bytes by default, the
//     rules of about 250 VMs).
//   - Each of its messages is acknowledged, each ack a buffer of its
//     own of about 1 KiB: a few hundred overflow the default receive
//     buffer, and Flush fails with ENOBUFS although the kernel
//     committed the transaction. Acks are also capped to their header
//     (NETLINK_CAP_ACK) instead of echoing each message.
//
// Both buffers are forced to nlBuffer (root may exceed the
// net.core.[rw]mem_max limits; the sizes are limits, not allocations).
//
// The connection is one socket for all of an Apply's listings and its
// transaction (the caller closes it with CloseLasting): without that,
// each of the twenty-odd listings opens and sizes a socket of its own,
// which cost more than the listings themselves.
func newConn() (*nftables.Conn, error) {
	return nftables.New(nftables.AsLasting(), nftables.WithSockOptions(func(c *netlink.Conn) error {
		if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
			return fmt.Errorf("capping netlink acknowledgements: %w", err)
		}
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = raw.Control(func(fd uintptr) {
			for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], nlBuffer); e != nil {
					serr = errors.Join(serr, unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], nlBuffer))
				}
			}
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("sizing the netlink buffers for nftables: %w", err)
		}
		return nil
	}))
}

// nlBuffer sizes the netlink buffers of nftables transactions (the
// kernel doubles it): room for the rules of a few thousand VMs.
const nlBuffer = 4 << 20

// objects is what of banger's tables, chains and sets exists.
type objects struct {
	tables map[nftables.TableFamily]bool
	chains map[string]bool          // family and name
	sets   map[string]*nftables.Set // family and name
}

func chainID(c *nftables.Chain) string { return fmt.Sprintf("%d %s", c.Table.Family, c.Name) }
func setID(s *nftables.Set) string     { return fmt.Sprintf("%d %s", s.Table.Family, s.Name) }

// ourObjects lists what of banger's tables, chains and set exists, so
// that only what is missing is created: "adding" an existing base chain
// is an update that costs the kernel as much as a deletion, and a table
// made by an older banger may lack a chain or the set.
func ourObjects(c *nftables.Conn) (objects, error) {
	o := objects{tables: map[nftables.TableFamily]bool{}, chains: map[string]bool{}, sets: map[string]*nftables.Set{}}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge} {
		ts, err := c.ListTablesOfFamily(fam)
		if err != nil {
			return o, fmt.Errorf("listing nftables tables: %w", err)
		}
		for _, t := range ts {
			o.tables[fam] = o.tables[fam] || t.Name == TableName
		}
		if !o.tables[fam] {
			continue
		}
		chains, err := c.ListChainsOfTableFamily(fam)
		if err != nil {
			return o, fmt.Errorf("listing nftables chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name == TableName {
				o.chains[chainID(ch)] = true
			}
		}
		sets, err := c.GetSets(&nftables.Table{Name: TableName, Family: fam})
		if err != nil {
			return o, fmt.Errorf("listing nftables sets: %w", err)
		}
		for _, s := range sets {
			o.sets[setID(s)] = s
		}
	}
	return o, nil
}

// syncRules queues what turns what is in place into rs: the tables, chains
// and sets that are missing; deletions of set elements and rules that
// are not wanted (or are there twice); additions of those missing. An
// ordered chain whose rules differ from rs's in any way is rewritten.
func syncRules(c *nftables.Conn, have objects, rs ruleset) error {
	for _, t := range []*nftables.Table{rs.inet, rs.bridge} {
		if !have.tables[t.Family] {
			c.AddTable(t)
		}
	}
	for _, cs := range rs.chains {
		if !have.chains[chainID(cs.chain)] {
			c.AddChain(cs.chain)
		}
	}
	for _, s := range rs.sets {
		if err := syncElements(c, have.sets[setID(s.set)], s, rs.keepLearned); err != nil {
			return err
		}
	}
	wanted := map[string]bool{}
	for _, r := range rs.rules {
		wanted[chainID(r.chain)+"\x00"+r.key] = true
	}
	inPlace := map[string]bool{}
	for _, cs := range rs.chains {
		if !have.chains[chainID(cs.chain)] {
			continue // a chain that does not exist yet holds nothing
		}
		rules, err := c.GetRules(cs.chain.Table, cs.chain)
		if err != nil {
			return fmt.Errorf("listing the rules of nftables chain %s: %w", cs.chain.Name, err)
		}
		if cs.ordered && !sameKeys(rules, rs.inOrder(cs.chain)) {
			for _, old := range rules {
				if err := c.DelRule(old); err != nil {
					return fmt.Errorf("removing an nftables rule out of order: %w", err)
				}
			}
			continue
		}
		for _, old := range rules {
			key, _ := userdata.GetString(old.UserData, userdata.TypeComment)
			k := chainID(cs.chain) + "\x00" + key
			if !wanted[k] || inPlace[k] {
				if err := c.DelRule(old); err != nil {
					return fmt.Errorf("removing a stale nftables rule: %w", err)
				}
				continue
			}
			inPlace[k] = true
		}
	}
	// Rules that go first are inserted at the head one after another,
	// so they are queued in reverse to end up in order.
	for i := len(rs.rules) - 1; i >= 0; i-- {
		if r := rs.rules[i]; r.first && !inPlace[chainID(r.chain)+"\x00"+r.key] {
			c.InsertRule(&nftables.Rule{Table: r.chain.Table, Chain: r.chain, UserData: comment(r.key), Exprs: r.exprs})
		}
	}
	for _, r := range rs.rules {
		if !r.first && !inPlace[chainID(r.chain)+"\x00"+r.key] {
			c.AddRule(&nftables.Rule{Table: r.chain.Table, Chain: r.chain, UserData: comment(r.key), Exprs: r.exprs})
		}
	}
	return nil
}

// sameKeys reports whether rules are want, in order, by key.
func sameKeys(rules []*nftables.Rule, want []ruleSpec) bool {
	if len(rules) != len(want) {
		return false
	}
	for i, r := range rules {
		if key, _ := userdata.GetString(r.UserData, userdata.TypeComment); key != want[i].key {
			return false
		}
	}
	return true
}

// syncElements queues the changes that make the elements of the set
// cur those of want (creating the set with them when it is missing).
// An element is its key; one whose comment is not want's is replaced.
// The learned set is not made to match: its elements come from Learn,
// and only those keep refuses go.
func syncElements(c *nftables.Conn, cur *nftables.Set, want *setSpec, keep map[netip.Addr]func(string) bool) error {
	name := want.set.Name
	wanted := map[string]elemSpec{}
	var all []nftables.SetElement
	for _, e := range want.elems {
		wanted[e.id()] = e
		all = append(all, nftables.SetElement{Key: e.key, KeyEnd: e.keyEnd, Comment: e.comment})
	}
	if cur == nil {
		if err := c.AddSet(want.set, all); err != nil {
			return fmt.Errorf("creating nftables set %s: %w", name, err)
		}
		return nil
	}
	elems, err := c.GetSetElements(cur)
	if err != nil {
		return fmt.Errorf("listing nftables set %s: %w", name, err)
	}
	var del, add []nftables.SetElement
	if want.learned {
		del = staleLearned(elems, keep)
	} else {
		have := map[string]bool{}
		for _, e := range elems {
			id := elemSpec{key: e.Key, keyEnd: e.KeyEnd}.id()
			if w, ok := wanted[id]; ok && w.comment == e.Comment {
				have[id] = true
				continue
			}
			del = append(del, nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd})
		}
		for _, e := range want.elems {
			if !have[e.id()] {
				add = append(add, nftables.SetElement{Key: e.key, KeyEnd: e.keyEnd, Comment: e.comment})
			}
		}
	}
	if len(del) > 0 {
		if err := c.SetDeleteElements(want.set, del); err != nil {
			return fmt.Errorf("removing stale elements of nftables set %s: %w", name, err)
		}
	}
	if len(add) > 0 {
		if err := c.SetAddElements(want.set, add); err != nil {
			return fmt.Errorf("adding to nftables set %s: %w", name, err)
		}
	}
	return nil
}

// deleteTables removes both tables (the last VM gone, Teardown). The
// caller is in the namespace.
func deleteTables() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
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
