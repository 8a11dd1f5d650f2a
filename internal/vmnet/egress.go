package vmnet

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/vmdns"
)

// LearnFloor is the shortest time an address banger's DNS answered a
// closed VM stays reachable: names with TTLs of a few seconds (or 0)
// would otherwise close before the guest has connected. The longest is
// hostnet.LearnedIdle, and the answer's TTLs are cut to it, so a guest
// never caches an address longer than it may reach it.
const LearnFloor = 30 * time.Second

// attachedVM is what DNS needs to know of an attached VM.
type attachedVM struct {
	id, name string
	policy   Policy
	// learned counts the addresses DNS let the VM reach since they
	// were last counted in the kernel: at most their number (the same
	// address learned twice counts twice, one expired still counts),
	// so that they are counted only when they may be too many.
	learned int
}

// SetPolicy changes a running VM's egress policy at once, in one
// nftables transaction: new connections and the next packet of open
// ones meet the new policy (an open TCP connection to an address now
// denied gets a reset), addresses banger's DNS gave it for names the
// policy no longer allows go, and its DNS questions are judged by the
// new policy. A VM that is not attached (stopped, or without a
// network) has nothing to change: Attach takes its policy when it
// starts. On error the old policy stays in force.
func (r *Runtime) SetPolicy(ctx context.Context, v api.VM, p Policy) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("VM %q: %w", v.Name, err)
	}
	r.mu.Lock()
	ep, ok := r.attached[v.ID]
	if !ok {
		r.mu.Unlock()
		return nil
	}
	old := r.byIP[ep.IP]
	r.setPolicyLocked(v.ID, ep, p)
	r.mu.Unlock()
	if err := r.apply(); err != nil {
		r.mu.Lock()
		if cur, ok := r.attached[v.ID]; ok {
			r.setPolicyLocked(v.ID, cur, old.policy)
		}
		r.mu.Unlock()
		return fmt.Errorf("changing the egress policy of VM %q: %w", v.Name, err)
	}
	return nil
}

func (r *Runtime) setPolicyLocked(id string, ep hostnet.Endpoint, p Policy) {
	ep.Egress = p.egress()
	r.attached[id] = ep
	r.byIP[ep.IP] = attachedVM{id: id, name: ep.VM, policy: p, learned: r.byIP[ep.IP].learned}
}

// Policy returns the egress policy in force for an attached VM, and
// whether it is attached.
func (r *Runtime) Policy(v api.VM) (Policy, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep, ok := r.attached[v.ID]
	if !ok {
		return Policy{}, false
	}
	return r.byIP[ep.IP].policy, true
}

// dnsFilter is the runtime as banger's DNS server's filter: each
// question is judged by the policy of the VM it comes from.
type dnsFilter struct{ r *Runtime }

var _ vmdns.Filter = dnsFilter{}

func (f dnsFilter) Check(client netip.Addr, name string) vmdns.Verdict {
	f.r.mu.Lock()
	vm, ok := f.r.byIP[client]
	f.r.mu.Unlock()
	switch {
	case !ok || !vm.policy.Closed():
		return vmdns.Open
	case vm.policy.AllowsName(name):
		return vmdns.Allow
	}
	return vmdns.Deny
}

// Learned lets the VM reach the addresses of an answer to a name it may
// resolve, before the answer goes back. Addresses the default policy
// keeps VMs from (private, link-local, loopback, multicast) are not
// let through this way: a public name pointed at 169.254.169.254 must
// not open the metadata server. An allow-list reaches those by
// listing them.
func (f dnsFilter) Learned(client netip.Addr, name string, addrs []netip.Addr, ttl time.Duration) (time.Duration, error) {
	timeout := min(max(ttl, LearnFloor), hostnet.LearnedIdle)
	var ok []netip.Addr
	for _, a := range addrs {
		if learnable(a) {
			ok = append(ok, a)
		}
	}
	if len(ok) == 0 {
		return timeout, nil
	}
	r := f.r
	// Under applyMu, so that a VM detached (or given a policy without
	// this name) meanwhile is not given addresses after its rules
	// were made without them.
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	r.mu.Lock()
	vm, attached := r.byIP[client]
	n := r.net
	r.mu.Unlock()
	if !attached || !vm.policy.Closed() || !vm.policy.AllowsName(name) || n == nil {
		return 0, fmt.Errorf("VM at %s may no longer resolve %s", client, name)
	}
	// The learned set is shared: a VM may fill its share only.
	learned := vm.learned + len(ok)
	if learned > r.learnQuota {
		have, err := n.Learned(client)
		if err != nil {
			return 0, err
		}
		learned = len(have)
		for _, a := range ok {
			if !slices.Contains(have, a) {
				learned++
			}
		}
		if learned > r.learnQuota {
			r.cfg.Log.Warn("a VM holds too many addresses from DNS: refusing more until some expire", "vm", vm.name,
				"addresses", len(have), "max", r.learnQuota)
			return 0, fmt.Errorf("VM %q reaches %d addresses banger's DNS gave it, at most %d", vm.name, len(have), r.learnQuota)
		}
	}
	if err := n.Learn(client, vm.name, strings.TrimSuffix(name, "."), ok, timeout); err != nil {
		r.cfg.Log.Warn("letting a VM reach what it resolved", "vm", vm.name, "name", name, "err", err)
		return 0, err
	}
	r.mu.Lock()
	if cur, ok := r.byIP[client]; ok && cur.id == vm.id {
		cur.learned = learned
		r.byIP[client] = cur
	}
	r.mu.Unlock()
	return timeout, nil
}

// learnable reports whether banger's DNS may open addr to a closed VM.
func learnable(a netip.Addr) bool {
	if !a.Is4() || !a.IsGlobalUnicast() {
		return false // loopback, link-local, multicast, unspecified, broadcast
	}
	for _, p := range hostnet.DefaultDenied {
		if p.Contains(a) {
			return false
		}
	}
	return true
}
