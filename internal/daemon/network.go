package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/vm"
	"banger/internal/vmdns"
)

// errNetwork means the VM network could not be set up.
var errNetwork = errors.New("VM network unavailable")

// netRuntime is the daemon's VM network: opened on first use, since
// daemons that never run a networked VM need no privileges for it.
type netRuntime struct {
	mu   sync.Mutex
	net  *hostnet.Net
	dns  *vmdns.Server
	up   bool
	fwds map[string][]*hostnet.Forwarder // by VM id
}

// hostNet opens the VM network's configuration and namespace; it
// changes nothing on the host.
func (d *Daemon) hostNet() (*hostnet.Net, error) {
	d.netrt.mu.Lock()
	defer d.netrt.mu.Unlock()
	if d.netrt.net != nil {
		return d.netrt.net, nil
	}
	cfg := d.opts.Network
	cfg.StateDir = d.layout.RunDir
	if j := d.opts.Jailer; j != nil {
		cfg.TAPOwner, cfg.TAPGroup = j.UID, j.GID
	}
	n, err := hostnet.Open(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNetwork, err)
	}
	d.netrt.net = n
	return n, nil
}

// networkUp makes the bridge and the DNS server exist. Done once per
// daemon; a failure is returned to the VM that needed it and retried by
// the next.
func (d *Daemon) networkUp() (*hostnet.Net, error) {
	n, err := d.hostNet()
	if err != nil {
		return nil, err
	}
	d.netrt.mu.Lock()
	defer d.netrt.mu.Unlock()
	if d.netrt.up {
		return n, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: VM networking needs bangerd to run as root; use --network none for a VM without one", errNetwork)
	}
	if err := n.EnsureBridge(); err != nil {
		return nil, fmt.Errorf("%w: %v", errNetwork, err)
	}
	upstreams := d.opts.DNSUpstreams
	if len(upstreams) == 0 {
		if upstreams, err = vmdns.HostResolvers("/etc/resolv.conf", n.Gateway()); err != nil {
			d.log.Warn("no upstream resolvers: VMs resolve only NAME.vm", "err", err)
		}
	}
	srv := vmdns.New(n.Subnet(), upstreams)
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
		return nil, fmt.Errorf("%w: serving DNS on %s: %v (is another DNS server bound to the bridge address?)", errNetwork, addr, err)
	}
	srv.Serve(pc, ln)
	d.netrt.dns = srv
	d.netrt.up = true
	if n.NetNS() == "" {
		if err := vmdns.ConfigureHost(context.Background(), d.opts.Runner, n.Bridge(), n.Gateway()); err != nil {
			d.log.Info("NAME.vm resolves inside VMs only; see `banger doctor` for the host", "why", err.Error())
		}
	}
	d.log.Info("vm network up", "bridge", n.Bridge(), "subnet", n.Subnet().String(), "dns", addr, "upstreams", strings.Join(upstreams, ","), "netns", n.NetNS())
	return n, nil
}

// closeNetwork stops what lives in the daemon: DNS and published ports.
// Bridge, TAPs and rules stay for the VMs that keep running.
func (d *Daemon) closeNetwork() {
	d.netrt.mu.Lock()
	defer d.netrt.mu.Unlock()
	for id, fs := range d.netrt.fwds {
		for _, f := range fs {
			f.Close()
		}
		delete(d.netrt.fwds, id)
	}
	if d.netrt.dns != nil {
		d.netrt.dns.Close()
		d.netrt.dns = nil
	}
	d.netrt.up = false
	if d.netrt.net != nil {
		d.netrt.net.Close()
		d.netrt.net = nil
	}
}

// allocator returns the store's address chooser for a new VM in mode.
func (d *Daemon) allocator(mode hostnet.Mode) (func([]netip.Addr) (netip.Addr, error), error) {
	if mode == hostnet.None {
		return nil, nil
	}
	n, err := d.hostNet()
	if err != nil {
		return nil, err
	}
	return func(used []netip.Addr) (netip.Addr, error) {
		a, err := hostnet.Allocate(n.Subnet(), used)
		if err != nil {
			return a, fmt.Errorf("%w: %v", errNetwork, err)
		}
		return a, nil
	}, nil
}

// parsePorts checks -p values and returns them in canonical form.
func parsePorts(mode hostnet.Mode, specs []string) ([]string, error) {
	out := []string{}
	seen := map[string]bool{}
	for _, s := range specs {
		p, err := hostnet.ParsePort(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errInvalid, err)
		}
		if mode == hostnet.None {
			return nil, fmt.Errorf("%w: -p %s needs a network: drop --network none", errInvalid, s)
		}
		key := fmt.Sprintf("%s:%d", p.HostIP, p.Host)
		if seen[key] {
			return nil, fmt.Errorf("%w: host port %s is published twice", errInvalid, key)
		}
		seen[key] = true
		out = append(out, p.String())
	}
	return out, nil
}

// portsFree checks that every published port can be bound now.
func portsFree(n *hostnet.Net, ports []string) error {
	for _, s := range ports {
		p, err := hostnet.ParsePort(s)
		if err != nil {
			return fmt.Errorf("%w: %v", errInvalid, err)
		}
		if err := n.PortFree(p); err != nil {
			return fmt.Errorf("%w: %v", errConflict, err)
		}
	}
	return nil
}

// attachNet gives a starting VM its network: TAP, rules, DNS name and
// published ports. It returns the kernel parameters that configure the
// guest's side. On error nothing of it is left.
func (d *Daemon) attachNet(ctx context.Context, v api.VM) (cmdline []string, err error) {
	if v.Network == string(hostnet.None) || v.Network == "" {
		return nil, nil
	}
	n, err := d.networkUp()
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(v.IP)
	if err != nil || !n.Subnet().Contains(ip) {
		return nil, fmt.Errorf("%w: VM %q has address %q, outside banger's subnet %s (was --subnet changed?): remove and create it again", errNetwork, v.Name, v.IP, n.Subnet())
	}
	defer func() {
		if err != nil {
			d.detachNet(ctx, v)
		}
	}()
	if err := n.AddTAP(hostnet.TAPName(v.ID)); err != nil {
		return nil, fmt.Errorf("%w: %v", errNetwork, err)
	}
	// The guard (hostnet.Endpoint) pins the TAP to v's own MAC and
	// address before the VMM opens it: a restored guest that still
	// carries its snapshot's identity cannot send a frame as that.
	if err := d.applyRules(ctx, ""); err != nil {
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
		class := errInvalid
		if errors.Is(err, hostnet.ErrPortInUse) {
			class = errConflict
		}
		return nil, fmt.Errorf("%w: VM %q: %v", class, v.Name, err)
	}
	d.netrt.mu.Lock()
	if d.netrt.fwds == nil {
		d.netrt.fwds = map[string][]*hostnet.Forwarder{}
	}
	d.netrt.fwds[v.ID] = fwds
	d.netrt.dns.Set(v.Name, ip)
	d.netrt.mu.Unlock()
	gw := n.Gateway().String()
	return []string{fmt.Sprintf("banger.ip=%s/%d", ip, n.Subnet().Bits()), "banger.gw=" + gw, "banger.dns=" + gw, "banger.domain=" + vmdns.Domain}, nil
}

// detachNet undoes attachNet for a VM that stopped: its ports close, its
// name stops resolving and its rules, guard entry and neighbour entry
// go. The TAP stays until the VM is removed (see hostnet.AddTAP); with
// no entry in the guard's set it passes no frame.
func (d *Daemon) detachNet(ctx context.Context, v api.VM) {
	if v.Network == string(hostnet.None) || v.Network == "" {
		return
	}
	d.netrt.mu.Lock()
	for _, f := range d.netrt.fwds[v.ID] {
		f.Close()
	}
	delete(d.netrt.fwds, v.ID)
	if d.netrt.dns != nil {
		d.netrt.dns.Remove(v.Name)
	}
	up := d.netrt.up
	d.netrt.mu.Unlock()
	if up {
		// v is left out whatever the store says: attachNet undoes a
		// failed start before the VM's state leaves "starting".
		if err := d.applyRules(ctx, v.ID); err != nil {
			d.log.Warn("updating network rules", "vm", v.Name, "err", err)
		}
	}
}

// removeNet drops a removed VM's TAP.
func (d *Daemon) removeNet(v api.VM) {
	if v.Network == string(hostnet.None) || v.Network == "" || os.Geteuid() != 0 {
		return
	}
	n, err := d.hostNet()
	if err == nil {
		err = n.DelTAP(hostnet.TAPName(v.ID))
	}
	if err != nil {
		d.log.Warn("removing the VM's TAP (the next daemon start retries)", "vm", v.Name, "err", err)
	}
}

// applyRules makes the nftables rules and neighbour entries those of
// every VM that is live and networked, but the one with id except, from
// the store: what is recorded is what is applied.
func (d *Daemon) applyRules(ctx context.Context, except string) error {
	n, err := d.hostNet()
	if err != nil {
		return err
	}
	vms, err := d.store.VMs(ctx)
	if err != nil {
		return err
	}
	var eps []hostnet.Endpoint
	for _, v := range vms {
		if !vm.State(v.State).Live() || v.Network == string(hostnet.None) || v.Network == "" || v.ID == except {
			continue
		}
		ip, err := netip.ParseAddr(v.IP)
		if err != nil {
			continue
		}
		// The MAC is derived from the id, so a fork or a VM restored
		// from a warm template (a new id) is pinned to its own MAC,
		// never to its snapshot's.
		eps = append(eps, hostnet.Endpoint{VM: v.Name, TAP: hostnet.TAPName(v.ID), MAC: hostnet.MAC(v.ID), IP: ip, Mode: hostnet.Mode(v.Network)})
	}
	if err := n.Apply(eps); err != nil {
		return fmt.Errorf("%w: %v", errNetwork, err)
	}
	return nil
}

// reconcileNet runs at daemon start, after the VMs are reconciled: VMs
// that still run get their DNS names and published ports back, the
// rules become exactly theirs, and every banger TAP of a VM that no
// longer exists goes.
func (d *Daemon) reconcileNet(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return nil // an unprivileged daemon never made any
	}
	vms, err := d.store.VMs(ctx)
	if err != nil {
		return err
	}
	n, err := d.hostNet()
	if err != nil {
		d.log.Warn("VM network configuration", "err", err)
		return nil
	}
	keep := map[string]bool{}
	for _, v := range vms {
		if v.Network == string(hostnet.None) || v.Network == "" {
			continue
		}
		keep[hostnet.TAPName(v.ID)] = true
		if v.State != "running" {
			continue
		}
		if _, err := d.attachNet(ctx, v); err != nil {
			d.log.Warn("restoring a running VM's network", "vm", v.Name, "err", err)
		}
	}
	removed, err := n.RemoveOrphans(keep)
	if len(removed) > 0 {
		d.log.Info("removed orphan TAPs", "taps", strings.Join(removed, ","))
	}
	if err != nil {
		return err
	}
	return d.applyRules(ctx, "")
}
