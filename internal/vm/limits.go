package vm

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/hostnet"
)

// This file bounds what a VM may ask of the host: sizes no host can give
// are refused for everyone, and the per-user [limits] of the config for
// everyone but admins.

// checkSizes refuses, for every caller, a VM the host could never give:
// more memory than the host has, a disk larger than the file system its
// file would live on. Without it, QEMU fails late and leaves a VM in
// error, and a huge disk fails inside truncate.
func (s *Service) checkSizes(v api.VM) error {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		total := int64(si.Totalram) * int64(si.Unit)
		if int64(v.MemoryMiB)<<20 > total {
			return fmt.Errorf("%w: --memory %s: this host has %s of memory in all", api.ErrInvalid, sizeText(int64(v.MemoryMiB)<<20), sizeText(total))
		}
	}
	var st unix.Statfs_t
	if unix.Statfs(s.layout.VMsDir(), &st) == nil {
		total := int64(st.Blocks) * st.Bsize
		if v.DiskBytes > total {
			return fmt.Errorf("%w: --disk-size %s: the file system under %s holds %s in all (a VM's disk is a sparse file there)", api.ErrInvalid, sizeText(v.DiskBytes), s.layout.VMsDir(), sizeText(total))
		}
	}
	return nil
}

// admissions are the VMs let past [limits] whose records do not show
// it yet (not recorded, or not starting yet), by owner: creates, forks
// and starts of one user that run side by side count each other.
type admissions struct {
	mu      sync.Mutex
	pending map[int][]admitted
}

type admitted struct {
	v        api.VM
	starting bool
}

// admit checks v against c's [limits] (checkLimits), counting the VMs
// admitted before it that are still on their way, and holds v's place
// until release: call it once v is recorded in the state it asked for
// (running, or refused).
func (s *Service) admit(ctx context.Context, c Caller, v api.VM, starting bool) (release func(), err error) {
	l := s.cfg.Limits
	if c.Admin || (l.VMs == 0 && l.VCPUs == 0 && l.MemoryBytes() == 0) {
		return func() {}, nil
	}
	s.admits.mu.Lock()
	defer s.admits.mu.Unlock()
	if err := s.checkLimits(ctx, c, v, starting, s.admits.pending[c.UID]); err != nil {
		return nil, err
	}
	if s.admits.pending == nil {
		s.admits.pending = map[int][]admitted{}
	}
	s.admits.pending[c.UID] = append(s.admits.pending[c.UID], admitted{v, starting})
	return func() {
		s.admits.mu.Lock()
		defer s.admits.mu.Unlock()
		p := s.admits.pending[c.UID]
		for i, a := range p {
			if a.v.ID == v.ID {
				p = append(p[:i:i], p[i+1:]...)
				break
			}
		}
		if len(p) == 0 {
			delete(s.admits.pending, c.UID)
		} else {
			s.admits.pending[c.UID] = p
		}
	}, nil
}

// checkLimits refuses v for c when it would take c past [limits]: a new
// VM (creating) past vms, a VM that starts past vcpus or memory of c's
// running VMs and of those admitted before it (pending). Admins have
// no limits.
func (s *Service) checkLimits(ctx context.Context, c Caller, v api.VM, starting bool, pending []admitted) error {
	l := s.cfg.Limits
	if c.Admin || (l.VMs == 0 && l.VCPUs == 0 && l.MemoryBytes() == 0) {
		return nil
	}
	records, err := s.store.VMs(ctx)
	if err != nil {
		return err
	}
	// A VM admitted before v counts as what it asked to be, over its
	// record (if it has one yet).
	ahead := map[string]api.VM{}
	for _, a := range pending {
		if a.v.ID == v.ID {
			continue
		}
		o := a.v
		if a.starting {
			o.State = string(Starting)
		}
		ahead[o.ID] = o
	}
	var vms []api.VM
	for _, o := range records {
		if _, ok := ahead[o.ID]; !ok {
			vms = append(vms, o)
		}
	}
	for _, a := range pending {
		if o, ok := ahead[a.v.ID]; ok {
			vms = append(vms, o)
		}
	}
	var mine, live []string
	vcpus, mem := 0, int64(0)
	creating := true
	for _, o := range vms {
		if o.Owner != c.UID {
			continue
		}
		if o.ID == v.ID {
			creating = false
			continue
		}
		mine = append(mine, o.Name)
		if State(o.State).Live() {
			live = append(live, fmt.Sprintf("%s %d vCPU %s", o.Name, o.VCPU, sizeText(int64(o.MemoryMiB)<<20)))
			vcpus += o.VCPU
			mem += int64(o.MemoryMiB) << 20
		}
	}
	if creating && l.VMs > 0 && len(mine)+1 > l.VMs {
		return fmt.Errorf("%w: [limits] vms = %d per user, and you have %d (%s): remove one (`banger vm rm NAME`) or ask root to raise it", api.ErrLimit, l.VMs, len(mine), strings.Join(mine, ", "))
	}
	if !starting {
		return nil
	}
	inUse := "none running"
	if len(live) > 0 {
		inUse = "running: " + strings.Join(live, ", ")
	}
	if l.VCPUs > 0 && vcpus+v.VCPU > l.VCPUs {
		return fmt.Errorf("%w: [limits] vcpus = %d per user, and this VM needs %d while yours use %d (%s): stop one (`banger vm stop NAME`) or ask root to raise it", api.ErrLimit, l.VCPUs, v.VCPU, vcpus, inUse)
	}
	if m := l.MemoryBytes(); m > 0 && mem+int64(v.MemoryMiB)<<20 > m {
		return fmt.Errorf("%w: [limits] memory = %s per user, and this VM needs %s while yours use %s (%s): stop one (`banger vm stop NAME`) or ask root to raise it", api.ErrLimit, l.Memory, sizeText(int64(v.MemoryMiB)<<20), sizeText(mem), inUse)
	}
	return nil
}

// sizeText writes n bytes as people read sizes: 512M, 1G, 1.5T.
func sizeText(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"P", 1 << 50}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n >= u.size {
			v := float64(n) / float64(u.size)
			if v == float64(int64(v)) {
				return fmt.Sprintf("%d%s", int64(v), u.suffix)
			}
			return fmt.Sprintf("%.1f%s", v, u.suffix)
		}
	}
	return fmt.Sprintf("%dB", n)
}

// checkPorts refuses, for callers other than admins, a published port
// on an address other than loopback or a host port below 1024, unless
// the config's [limits] allows it: either would expose or take a port
// the host's users and services share.
func (s *Service) checkPorts(c Caller, ports []string) error {
	if c.Admin {
		return nil
	}
	for _, spec := range ports {
		p, err := hostnet.ParsePort(spec)
		if err != nil {
			return fmt.Errorf("%w: %v", api.ErrInvalid, err)
		}
		if !p.HostIP.IsLoopback() && !s.cfg.Limits.PublicPorts {
			return fmt.Errorf("%w: -p %s: only root publishes on an address other than loopback (the config's [limits] public_ports allows it): use -p %d:%d", api.ErrForbidden, spec, p.Host, p.Guest)
		}
		if p.Host < 1024 && !s.cfg.Limits.LowPorts {
			return fmt.Errorf("%w: -p %s: only root publishes host ports below 1024 (the config's [limits] low_ports allows it): pick a port of 1024 or more", api.ErrForbidden, spec)
		}
	}
	return nil
}
