// Package vmnet is the VM network's one owner: it brings the bridge and
// the DNS server up on first use, chooses addresses, attaches and
// detaches VMs (TAP, rules, guard, egress policy, DNS name, published
// ports), changes a running VM's egress policy, and sweeps what no VM
// owns after a restart. It keeps each attached VM's Policy, by address,
// for the DNS server, which asks it about every question a VM sends. It is the only code that touches
// hostnet's bridge and vmdns's server; callers hand it VM records and get
// kernel parameters back. It knows nothing of VM lifecycles or of HTTP.
package vmnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/system"
	"banger/internal/vmdns"
)

// ErrNetwork means the VM network could not be set up.
var ErrNetwork = errors.New("VM network unavailable")

// Config places the network and says where DNS forwards.
type Config struct {
	// Net is the bridge, subnet, namespace and TAP owner; StateDir must
	// be set (hostnet keeps its state there).
	Net hostnet.Config
	// DNSUpstreams are where the DNS server forwards other names
	// (default: the host's /etc/resolv.conf).
	DNSUpstreams []string
	// Runner runs host commands (systemd-resolved's configuration).
	Runner system.CommandRunner
	Log    *slog.Logger
}

// Runtime is the VM network of one daemon: opened on first use, since
// daemons that never run a networked VM need no privileges for it. Safe
// for concurrent use.
type Runtime struct {
	cfg Config

	mu       sync.Mutex
	net      *hostnet.Net
	dns      *vmdns.Server
	up       bool
	fwds     map[string][]*hostnet.Forwarder // by VM id
	attached map[string]hostnet.Endpoint     // by VM id: what the rules are made of
	// byIP are the attached VMs by address: whose question banger's
	// DNS server is answering, under which policy.
	byIP map[netip.Addr]attachedVM
	// learnQuota is how many addresses DNS may let one VM reach at
	// once (hostnet.LearnedPerVM; tests lower it).
	learnQuota int

	// applyMu serialises rule updates: each applies the set of attached
	// VMs as it is when it runs.
	applyMu sync.Mutex
}

// New returns the network runtime for cfg; nothing is opened yet.
func New(cfg Config) *Runtime {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Runtime{cfg: cfg, fwds: map[string][]*hostnet.Forwarder{}, attached: map[string]hostnet.Endpoint{},
		byIP: map[netip.Addr]attachedVM{}, learnQuota: hostnet.LearnedPerVM}
}

// Networked reports whether a VM of that network mode has a network
// device.
func Networked(network string) bool {
	return network != "" && network != string(hostnet.None)
}

// Net opens the VM network's configuration and namespace; it changes
// nothing on the host.
func (r *Runtime) Net() (*hostnet.Net, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.openLocked()
}

func (r *Runtime) openLocked() (*hostnet.Net, error) {
	if r.net != nil {
		return r.net, nil
	}
	n, err := hostnet.Open(r.cfg.Net)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNetwork, err)
	}
	r.net = n
	return n, nil
}

// Up reports whether the bridge and DNS server are up in this daemon.
func (r *Runtime) Up() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.up
}

// ensureUp makes the bridge and the DNS server exist. Done once per
// daemon; a failure is returned to the VM that needed it and retried by
// the next.
func (r *Runtime) ensureUp() (*hostnet.Net, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, err := r.openLocked()
	if err != nil {
		return nil, err
	}
	if r.up {
		return n, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: VM networking needs bangerd to run as root; use --network none for a VM without one", ErrNetwork)
	}
	if err := n.EnsureBridge(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNetwork, err)
	}
	upstreams := r.cfg.DNSUpstreams
	if len(upstreams) == 0 {
		if upstreams, err = vmdns.HostResolvers("/etc/resolv.conf", n.Gateway()); err != nil {
			r.cfg.Log.Warn("no upstream resolvers: VMs resolve only NAME.vm", "err", err)
		}
	}
	srv := vmdns.New(n.Subnet(), upstreams, vmdns.WithFilter(dnsFilter{r}))
	addr := net.JoinHostPort(n.Gateway().String(), "53")
	var pc net.PacketConn
	var ln net.Listener
	err = n.Do(func() (err error) {
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp", addr); err != nil {
			pc.Close()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: serving DNS on %s: %v (is another DNS server bound to the bridge address?)", ErrNetwork, addr, err)
	}
	srv.Serve(pc, ln)
	r.dns = srv
	r.up = true
	if n.NetNS() == "" && r.cfg.Runner != nil {
		if err := vmdns.ConfigureHost(context.Background(), r.cfg.Runner, n.Bridge(), n.Gateway()); err != nil {
			r.cfg.Log.Info("NAME.vm resolves inside VMs only; see `banger doctor` for the host", "why", err.Error())
		}
	}
	r.cfg.Log.Info("vm network up", "bridge", n.Bridge(), "subnet", n.Subnet().String(), "dns", addr, "upstreams", strings.Join(upstreams, ","), "netns", n.NetNS())
	return n, nil
}

// Close stops what lives in the daemon: DNS and published ports.
// Bridge, TAPs and rules stay for the VMs that keep running.
func (r *Runtime) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, fs := range r.fwds {
		for _, f := range fs {
			f.Close()
		}
		delete(r.fwds, id)
	}
	if r.dns != nil {
		r.dns.Close()
		r.dns = nil
	}
	r.up = false
	if r.net != nil {
		r.net.Close()
		r.net = nil
	}
}

// Subnet is the VM subnet.
func (r *Runtime) Subnet() netip.Prefix {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.net != nil {
		return r.net.Subnet()
	}
	if n, err := hostnet.Open(r.cfg.Net); err == nil {
		defer n.Close()
		return n.Subnet()
	}
	return r.cfg.Net.Subnet
}

// SetSubnet makes p the VM subnet: the bridge, its rules and the DNS
// server of the old one go now, and the next networked VM brings them
// up on p. p must be a private IPv4 /16 to /29 that no host route
// overlaps. The caller makes sure that no VM holds an address
// (store.Unaddressed), and the runtime that none is attached.
func (r *Runtime) SetSubnet(p netip.Prefix) error {
	cfg := r.cfg.Net
	cfg.Subnet = p
	n, err := hostnet.Open(cfg)
	if err != nil {
		return fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	defer n.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.attached) > 0 {
		return fmt.Errorf("%w: %d VMs are attached to the VM network: stop and remove them first", api.ErrConflict, len(r.attached))
	}
	if r.net != nil && r.net.Subnet() == n.Subnet() {
		return nil
	}
	if os.Geteuid() == 0 {
		if err := n.CheckSubnet(); err != nil {
			return fmt.Errorf("%w: %v", api.ErrInvalid, err)
		}
	}
	if r.dns != nil {
		r.dns.Close()
		r.dns = nil
	}
	old := r.net
	if old == nil && os.Geteuid() == 0 {
		old, _ = hostnet.Open(r.cfg.Net)
	}
	if old != nil {
		// No VM is attached: what is left is the bridge with the old
		// address (and its route) and, at most, empty tables.
		if os.Geteuid() == 0 {
			if err := old.Teardown(); err != nil {
				r.cfg.Log.Warn("removing the old VM network", "err", err)
			}
		}
		old.Close()
	}
	r.net, r.up = nil, false
	r.cfg.Net.Subnet = n.Subnet()
	r.cfg.Log.Info("vm subnet changed", "subnet", n.Subnet().String())
	return nil
}

// Prepare checks, before anything is recorded, that the network of mode
// can exist (no colliding subnet, the privileges) and that ports are
// free now, and returns the address allocator of mode (nil for none).
func (r *Runtime) Prepare(mode hostnet.Mode, ports []string) (func([]netip.Addr) (netip.Addr, error), error) {
	if mode == hostnet.None {
		return nil, nil
	}
	n, err := r.ensureUp()
	if err != nil {
		return nil, err
	}
	for _, s := range ports {
		p, err := hostnet.ParsePort(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
		}
		if err := n.PortFree(p); err != nil {
			return nil, fmt.Errorf("%w: %v", api.ErrConflict, err)
		}
	}
	return func(used []netip.Addr) (netip.Addr, error) {
		// The subnet now, not at Prepare: SetSubnet runs in a store
		// transaction as this does, so the two never interleave.
		a, err := hostnet.Allocate(r.Subnet(), used)
		if err != nil {
			return a, fmt.Errorf("%w: %v", ErrNetwork, err)
		}
		return a, nil
	}, nil
}

// ParsePorts checks -p values and returns them in canonical form.
func ParsePorts(mode hostnet.Mode, specs []string) ([]string, error) {
	out := []string{}
	seen := map[string]bool{}
	for _, s := range specs {
		p, err := hostnet.ParsePort(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
		}
		if mode == hostnet.None {
			return nil, fmt.Errorf("%w: -p %s needs a network: drop --network none", api.ErrInvalid, s)
		}
		key := fmt.Sprintf("%s:%d", p.HostIP, p.Host)
		if seen[key] {
			return nil, fmt.Errorf("%w: host port %s is published twice", api.ErrInvalid, key)
		}
		seen[key] = true
		out = append(out, p.String())
	}
	return out, nil
}

// Attach gives a starting VM its network: TAP, rules and guard, egress
// policy p, DNS name and published ports. It returns the kernel
// parameters that configure the guest's side (nil for a VM without a
// network). On error nothing of it is left.
func (r *Runtime) Attach(ctx context.Context, v api.VM, p Policy) (cmdline []string, err error) {
	if !Networked(v.Network) {
		return nil, nil
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("VM %q: %w", v.Name, err)
	}
	n, err := r.ensureUp()
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(v.IP)
	if err != nil || !n.Subnet().Contains(ip) {
		return nil, fmt.Errorf("%w: VM %q has address %q, outside banger's subnet %s (was --subnet changed?): remove and create it again", ErrNetwork, v.Name, v.IP, n.Subnet())
	}
	defer func() {
		if err != nil {
			r.Detach(ctx, v)
		}
	}()
	if err := n.AddTAP(hostnet.TAPName(v.ID)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNetwork, err)
	}
	// The guard pins the TAP to v's own MAC and address before the VMM
	// opens it: a restored guest that still carries its snapshot's
	// identity cannot send a frame as that. The MAC is derived from the
	// id, so a fork or a warm start (a new id) is pinned to its own.
	r.mu.Lock()
	r.attached[v.ID] = hostnet.Endpoint{VM: v.Name, TAP: hostnet.TAPName(v.ID), MAC: hostnet.MAC(v.ID), IP: ip,
		Mode: hostnet.Mode(v.Network), Egress: p.egress()}
	// What DNS let it reach before (a daemon restart) is counted at
	// its first answer.
	r.byIP[ip] = attachedVM{id: v.ID, name: v.Name, policy: p, learned: r.learnQuota}
	r.mu.Unlock()
	if err := r.apply(); err != nil {
		return nil, err
	}
	var fwds []*hostnet.Forwarder
	for _, s := range v.Ports {
		p, err := hostnet.ParsePort(s)
		if err == nil {
			var f *hostnet.Forwarder
			if f, err = n.Forward(p, ip); err == nil {
				fwds = append(fwds, f)
				continue
			}
		}
		for _, f := range fwds {
			f.Close()
		}
		class := api.ErrInvalid
		if errors.Is(err, hostnet.ErrPortInUse) {
			class = api.ErrConflict
		}
		return nil, fmt.Errorf("%w: VM %q: %v", class, v.Name, err)
	}
	r.mu.Lock()
	r.fwds[v.ID] = fwds
	if r.dns != nil {
		r.dns.Set(v.Name, ip)
	}
	r.mu.Unlock()
	gw := n.Gateway().String()
	return []string{fmt.Sprintf("banger.ip=%s/%d", ip, n.Subnet().Bits()), "banger.gw=" + gw, "banger.dns=" + gw, "banger.domain=" + vmdns.Domain}, nil
}

// Detach undoes Attach for a VM that stopped: its ports close, its name
// stops resolving and its rules, guard entry and neighbour entry go. The
// TAP stays until the VM is removed (see hostnet.AddTAP); with no entry
// in the guard's set it passes no frame.
func (r *Runtime) Detach(ctx context.Context, v api.VM) {
	if !Networked(v.Network) {
		return
	}
	r.mu.Lock()
	for _, f := range r.fwds[v.ID] {
		f.Close()
	}
	delete(r.fwds, v.ID)
	if r.dns != nil {
		r.dns.Remove(v.Name)
	}
	ep, was := r.attached[v.ID]
	delete(r.attached, v.ID)
	if was && r.byIP[ep.IP].id == v.ID {
		delete(r.byIP, ep.IP)
	}
	up := r.up
	r.mu.Unlock()
	if up && was {
		if err := r.apply(); err != nil {
			r.cfg.Log.Warn("updating network rules", "vm", v.Name, "err", err)
		}
	}
}

// Remove drops a removed VM's TAP.
func (r *Runtime) Remove(v api.VM) {
	if !Networked(v.Network) || os.Geteuid() != 0 {
		return
	}
	n, err := r.Net()
	if err == nil {
		err = n.DelTAP(hostnet.TAPName(v.ID))
	}
	if err != nil {
		r.cfg.Log.Warn("removing the VM's TAP (the next daemon start retries)", "vm", v.Name, "err", err)
	}
}

// SetTAPUp sets a networked VM's TAP up or down (see hostnet.SetTAPUp).
func (r *Runtime) SetTAPUp(v api.VM, up bool) error {
	if !Networked(v.Network) {
		return nil
	}
	n, err := r.ensureUp()
	if err == nil {
		err = n.SetTAPUp(hostnet.TAPName(v.ID), up)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNetwork, err)
	}
	return nil
}

// Do runs fn (a VMM start) in the VM network's namespace when v is
// networked, so the VMM finds its TAP there.
func (r *Runtime) Do(v api.VM, fn func() error) error {
	if !Networked(v.Network) {
		return fn()
	}
	n, err := r.Net()
	if err != nil {
		return err
	}
	return n.Do(fn)
}

// apply makes the rules and neighbour entries those of the attached VMs.
func (r *Runtime) apply() error {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	n, err := r.Net()
	if err != nil {
		return err
	}
	r.mu.Lock()
	eps := make([]hostnet.Endpoint, 0, len(r.attached))
	for _, ep := range r.attached {
		eps = append(eps, ep)
	}
	r.mu.Unlock()
	if err := n.Apply(eps); err != nil {
		return fmt.Errorf("%w: %v", ErrNetwork, err)
	}
	return nil
}

// Reconcile runs at daemon start, after the VMs are reconciled: every
// VM in vms that is still live gets its network back (rules, guard,
// egress policy, DNS name, published ports), the rules become exactly
// theirs, and every banger TAP of a VM not in vms goes. policy gives
// each VM's egress policy (nil: the default for all). What banger's DNS
// let a closed VM reach stays, as far as its policy still allows it.
func (r *Runtime) Reconcile(ctx context.Context, vms []api.VM, live func(api.VM) bool, policy func(api.VM) Policy) error {
	if os.Geteuid() != 0 {
		return nil // an unprivileged daemon never made any
	}
	n, err := r.Net()
	if err != nil {
		r.cfg.Log.Warn("VM network configuration", "err", err)
		return nil
	}
	keep := map[string]bool{}
	for _, v := range vms {
		if !Networked(v.Network) {
			continue
		}
		keep[hostnet.TAPName(v.ID)] = true
		if !live(v) {
			continue
		}
		var p Policy
		if policy != nil {
			p = policy(v)
		}
		if _, err := r.Attach(ctx, v, p); err != nil {
			r.cfg.Log.Warn("restoring a running VM's network", "vm", v.Name, "err", err)
		}
	}
	removed, err := n.RemoveOrphans(keep)
	if len(removed) > 0 {
		r.cfg.Log.Info("removed orphan TAPs", "taps", strings.Join(removed, ","))
	}
	if err != nil {
		return err
	}
	return r.apply()
}

// Status is what `banger doctor` reports of the network.
type Status struct {
	Bridge, Subnet, DNS string
	Up                  bool
	// Tables, Subnet and DNS problems, each nil when fine.
	TablesErr, SubnetErr, DNSErr error
}

// Check probes the network for doctor: nftables, a free subnet (before
// the bridge is up), a DNS server that answers (after).
func (r *Runtime) Check() (Status, error) {
	n, err := r.Net()
	if err != nil {
		return Status{}, err
	}
	st := Status{Bridge: n.Bridge(), Subnet: n.Subnet().String(), Up: r.Up(), TablesErr: n.Tables()}
	st.DNS = net.JoinHostPort(n.Gateway().String(), "53")
	if !st.Up {
		st.SubnetErr = n.CheckSubnet()
		return st, nil
	}
	st.Subnet = fmt.Sprintf("%s/%d", n.Gateway(), n.Subnet().Bits())
	st.DNSErr = n.Do(func() error {
		c, err := net.DialTimeout("tcp", st.DNS, 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	return st, nil
}
