package vm

import (
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/consolelog"
	"banger/internal/guestinit"
	"banger/internal/hostnet"
	"banger/internal/snapshot"
	"banger/internal/store"
	"banger/internal/vmm"
	"banger/internal/vsockagent"
)

// This file is how a VM comes to run: a cold boot, or a restore from a
// snapshot or warm template followed by the new identity the guest
// needs, and the template a cold boot leaves for the next one.

// restoreFrom is what a VM is restored from instead of booted.
type restoreFrom struct {
	snap api.Snapshot
	// hostKey is the VM's own SSH host key (private, PEM): its disk is
	// the snapshot's copy, which holds the source's.
	hostKey []byte
	// run, for a warm start, is the VM's run spec: the guest's (the
	// template's) is replaced before the held command is released. A
	// fork keeps its source's, already running.
	run *guestinit.RunSpec
}

// startVMLocked boots v and waits for its agent.
func (s *Service) startVMLocked(v api.VM, progress func(string)) (*api.VM, error) {
	return s.launchVMLocked(v, nil, "", progress)
}

// launchVMLocked boots v, or restores it from a snapshot, and waits
// until it is ready: the agent's ready line after a boot, the agent
// having taken the VM's identity after a restore. The VMM outlives the
// request: it runs on the daemon's own context. A VM that does not
// become ready goes to error, its VMM killed, the reason in the message.
// With a template key, a booted VM is snapshotted as that warm template
// the moment it is ready, before anyone uses it. The VM's processes (VMM,
// virtiofsds, console log helper) start in its cgroup, made first and
// removed again on every failure.
func (s *Service) launchVMLocked(v api.VM, from *restoreFrom, templateKey string, progress func(string)) (_ *api.VM, err error) {
	ctx := context.Background()
	img, err := s.store.Image(ctx, v.Image)
	if err != nil {
		return nil, store.Hint(err, "the VM's image is gone: remove the VM")
	}
	k, err := s.store.Kernel(ctx, v.Kernel)
	if err != nil {
		return nil, store.Hint(err, "the VM's kernel is gone: remove the VM")
	}
	_, b, err := s.backends.Pick(v.VMM)
	if err != nil {
		return nil, err
	}
	if err := s.transition(ctx, &v, EvStart, 0, ""); err != nil {
		return nil, err
	}
	// Every failure below has ended the VM's processes (or is about to
	// find them in the group and kill them): the group goes too.
	defer func() {
		if err != nil {
			s.dropCgroup(v.ID, v.Name)
		}
	}()
	oomBase, err := s.makeCgroup(v)
	if err != nil {
		err = fmt.Errorf("%w: VM %q: making its cgroup: %w (run bangerd with --cgroups=false to run VMs without limits)", ErrStart, v.Name, err)
		s.transition(ctx, &v, EvFail, 0, err.Error())
		return nil, err
	}
	began := time.Now()
	if v.Network != "" && v.Network != "none" {
		say(progress, "network")
	}
	netArgs, err := s.net.Attach(ctx, v, s.netPolicy(v))
	if err != nil {
		s.transition(ctx, &v, EvFail, 0, err.Error())
		return nil, err
	}
	bootArgs := append([]string{}, netArgs...)
	syncs := hasMount(v.Mounts, api.MountSync)
	if (templateKey != "" || syncs) && from == nil {
		// The image's command waits until the template is taken, or
		// the synced mounts hold the host's files.
		bootArgs = append(bootArgs, "banger.hold=1")
	}
	var fsDevs []vmm.FS
	if len(v.Mounts) > 0 {
		if from != nil {
			err = fmt.Errorf("%w: VM %q has shared directories: it cannot be restored from a snapshot", api.ErrInvalid, v.Name)
		} else {
			var fsArgs []string
			fsDevs, fsArgs, err = s.startMounts(ctx, &v)
			bootArgs = append(bootArgs, fsArgs...)
		}
		if err != nil {
			s.transition(ctx, &v, EvFail, 0, err.Error())
			s.net.Detach(ctx, v)
			return nil, err
		}
	}
	spec := vmm.Spec{ID: v.Name, Dir: v.Dir, VCPUs: v.VCPU, MemoryMiB: v.MemoryMiB, Kernel: k.Vmlinux, Initrd: k.Initrd,
		Cmdline:   Cmdline(v.Name, bootArgs...),
		Drives:    []vmm.Drive{{ID: "root", Path: img.Rootfs, ReadOnly: true}, {ID: "data", Path: filepath.Join(v.Dir, DataDisk)}},
		FS:        fsDevs,
		StartHook: s.vmmStartHook(v)}
	if v.VMM == "qemu" && from == nil {
		// A restore maps its snapshot's memory file instead (see
		// vmm.Restorer).
		spec.MemoryFile = s.layout.RAMFile(v.ID)
	}
	if netArgs != nil {
		spec.TAP, spec.MAC = hostnet.TAPName(v.ID), hostnet.MAC(v.ID).String()
	}
	// Where the console stands at launch: it spans boots, and only this
	// one's output tells whether the guest is ready. Taken before the
	// console's writer starts, which may rotate the log at once.
	since := consolelog.Follow(consolePath(v.Dir), false)
	defer since.Close()
	var written <-chan struct{}
	spec.Console, written, err = s.startConsole(v)
	if err != nil {
		s.transition(ctx, &v, EvFail, 0, err.Error())
		s.net.Detach(ctx, v)
		return nil, fmt.Errorf("%w: VM %q: %v", ErrStart, v.Name, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	var m vmm.Machine
	// What the boot touches of the RAM directory is promised until the
	// boot is over (ready or not): its pages show in its use by then.
	releaseRAM := func() {}
	defer func() { releaseRAM() }()
	// The VMM enters the VM network's namespace through its start hook.
	if from == nil {
		say(progress, "vmm")
		if spec.MemoryFile != "" {
			var release func()
			if release, err = s.reserveBootRAM(v, k); err == nil {
				releaseRAM = sync.OnceFunc(release)
			}
		}
		if err == nil {
			m, err = b.Start(sctx, spec)
		}
	} else {
		say(progress, "restore")
		err = s.tapUp(v, netArgs, false)
		if err == nil {
			m, err = b.Restorer().Restore(sctx, spec, snapshot.Paths(from.snap.Dir))
		}
	}
	cancel()
	// The VMM has its copy (or is gone): from here the console's writer
	// ends with it.
	spec.Console.Close()
	if err != nil {
		err = s.startError(v, err, from)
		s.transition(ctx, &v, EvFail, 0, err.Error())
		s.net.Detach(ctx, v)
		return nil, fmt.Errorf("%w: VM %q: %v", ErrStart, v.Name, err)
	}
	restored := time.Since(began)
	s.setMachine(v.ID, m)
	if from != nil {
		s.setMapped(v.ID, mappedFrom(from.snap))
	}
	s.store.SetVMPID(ctx, v.Name, m.PID())
	v.PID = m.PID()
	if from == nil {
		say(progress, "boot")
		err = waitReady(m, since, written, s.readyTimeout())
		releaseRAM()
		if err == nil && syncs {
			if err = s.startSyncs(&v, progress); err == nil {
				err = s.store.SetVMMounts(ctx, v.Name, v.Mounts)
			}
			if err == nil && templateKey == "" {
				err = s.agentOp(ctx, v, "release")
			}
		}
	} else {
		say(progress, "identity")
		if err = s.reidentify(ctx, v, netArgs, from.hostKey, from.run); err == nil {
			err = s.tapUp(v, netArgs, true)
		}
	}
	if err != nil {
		s.stopSyncs(v)
		m.Kill()
		m.Wait(ctx)
		if s.oomKilled(v, m, oomBase) {
			err = fmt.Errorf("%s; %w", oomMessage, err)
		} else if why := s.busError(v, m, s.mappedOf(v.ID)); why != "" {
			err = fmt.Errorf("%s; %w", why, err)
		}
		s.setMachine(v.ID, nil)
		s.setMapped(v.ID, nil)
		s.dropAgent(v.ID)
		s.transition(ctx, &v, EvFail, 0, err.Error())
		s.net.Detach(ctx, v)
		s.log.Warn("vm failed to start", "vm", v.Name, "err", err)
		return nil, fmt.Errorf("%w: VM %q (now in state error; `banger vm logs %s` has the console): %v", ErrStart, v.Name, v.Name, err)
	}
	if err := s.transition(ctx, &v, EvReady, m.PID(), ""); err != nil {
		return nil, err
	}
	if from != nil {
		s.log.Info("vm running", "vm", v.Name, "pid", m.PID(), "ip", v.IP, "restored_from", from.snap.Name,
			"restore", restored, "ready_after", time.Since(began))
	} else {
		s.log.Info("vm running", "vm", v.Name, "pid", m.PID(), "ip", v.IP, "ready_after", time.Since(began))
	}
	if templateKey != "" && from == nil {
		say(progress, "template")
		s.captureTemplate(ctx, v, templateKey)
		if err := s.agentOp(ctx, v, "release"); err != nil {
			s.log.Warn("the image's command was not released: it waits until the VM restarts", "vm", v.Name, "err", err)
		}
	}
	// Open the agent session now, so the first exec does not pay for the
	// handshake; then keys registered since the VM's disk was made reach
	// it.
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		ctx, cancel := context.WithTimeout(s.jobCtx, 10*time.Second)
		if _, err := s.agentSession(ctx, v); err != nil {
			s.log.Info("no agent session yet (the first request retries)", "vm", v.Name, "err", err)
		}
		cancel()
		s.pushAuthorizedKeys(s.jobCtx, v)
	}()
	go s.watchExit(v, m, oomBase)
	return &v, nil
}

// reidentify makes a restored guest the VM v: its agent takes v's host
// name, MAC, address, resolver and SSH host key, the host's clock and
// fresh randomness (see vsockagent.Identity). Until it has, the guest is
// a copy of the snapshot's source and is not ready.
func (s *Service) reidentify(ctx context.Context, v api.VM, netArgs []string, hostKey []byte, run *guestinit.RunSpec) error {
	ctx, cancel := context.WithTimeout(ctx, s.readyTimeout())
	defer cancel()
	if _, err := s.agentSession(ctx, v); err != nil {
		return fmt.Errorf("the restored guest's agent did not answer: %w", err)
	}
	c := guestinit.ParseCmdline(strings.Join(netArgs, " "))
	id := vsockagent.Identity{Hostname: v.Name, Domain: c.Domain, Iface: c.Iface, IP: c.IP, GW: c.GW, DNS: c.DNS, MTU: c.MTU,
		SSHHostKey: hostKey, Entropy: make([]byte, 64), UnixNano: time.Now().UnixNano(), Run: run}
	if netArgs != nil {
		id.MAC = hostnet.MAC(v.ID).String()
	}
	rand.Read(id.Entropy)
	if err := s.agentCall(ctx, v, "identity", id); err != nil {
		return fmt.Errorf("giving the restored guest its identity: %w", err)
	}
	return nil
}

// tapUp sets a networked VM's TAP up or down (see hostnet.SetTAPUp).
func (s *Service) tapUp(v api.VM, netArgs []string, up bool) error {
	if netArgs == nil {
		return nil
	}
	return s.net.SetTAPUp(v, up)
}

// watchExit records a VM's end when its VMM exits on its own (a power-off
// in the guest, a crash), as an error when the kernel killed it for
// its cgroup's memory limit (more OOM kills than oomBase), and removes
// its cgroup. Stops and kills record it themselves.
func (s *Service) watchExit(v api.VM, m vmm.Machine, oomBase uint64) {
	if err := m.Wait(s.jobCtx); err != nil {
		return // the daemon is stopping; the VM runs on
	}
	unlock := s.vmLock(v.Name)
	defer unlock()
	if s.machine(v.ID) != m {
		return
	}
	s.setMachine(v.ID, nil)
	mapped := s.mappedOf(v.ID)
	s.setMapped(v.ID, nil)
	cur, err := s.store.VM(context.Background(), v.Name)
	if err != nil || !State(cur.State).Live() {
		return
	}
	if why := s.busError(cur, m, mapped); why != "" {
		s.transition(context.Background(), &cur, EvCrash, 0, why)
		s.log.Warn("vm killed: its guest RAM could not be had", "vm", v.Name, "why", why)
	} else if s.oomKilled(cur, m, oomBase) {
		s.transition(context.Background(), &cur, EvCrash, 0, oomMessage)
		s.log.Warn("vm killed: out of memory", "vm", v.Name, "memory_mib", cur.MemoryMiB, "limit_bytes", limits(cur, s.memOverhead).MemoryBytes)
	} else {
		s.transition(context.Background(), &cur, EvExited, 0, "")
		s.log.Info("vm exited", "vm", v.Name)
	}
	s.dropAgent(cur.ID)
	s.net.Detach(context.Background(), cur)
	s.dropCgroup(cur.ID, cur.Name)
}
