package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/guestinit"
	"banger/internal/hostnet"
	"banger/internal/store"
	"banger/internal/system"
	"banger/internal/vm"
	"banger/internal/vmm"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
)

// errVMStart means a VM did not start or did not become ready.
var errVMStart = errors.New("VM failed to start")

// vmRuntime is the daemon's live view of VMs: per-VM locks and the
// handles of the VMM processes it holds.
type vmRuntime struct {
	mu       sync.Mutex
	locks    map[string]*sync.Mutex // by VM name
	machines map[string]vmm.Machine // by VM id

	probeOnce sync.Once
	caps      qemu.Caps
}

func (d *Daemon) vmLock(name string) func() {
	d.vms.mu.Lock()
	if d.vms.locks == nil {
		d.vms.locks = map[string]*sync.Mutex{}
	}
	l := d.vms.locks[name]
	if l == nil {
		l = &sync.Mutex{}
		d.vms.locks[name] = l
	}
	d.vms.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func (d *Daemon) machine(id string) vmm.Machine {
	d.vms.mu.Lock()
	defer d.vms.mu.Unlock()
	return d.vms.machines[id]
}

func (d *Daemon) setMachine(id string, m vmm.Machine) {
	d.vms.mu.Lock()
	defer d.vms.mu.Unlock()
	if d.vms.machines == nil {
		d.vms.machines = map[string]vmm.Machine{}
	}
	if m == nil {
		delete(d.vms.machines, id)
	} else {
		d.vms.machines[id] = m
	}
}

// backend returns the VMM backend for a choice: firecracker, qemu, or
// auto (Firecracker when its binary exists and guests run at hardware
// speed, QEMU otherwise).
func (d *Daemon) backend(choice string) (string, func(context.Context, vmm.Spec) (vmm.Machine, error), error) {
	// Probed once per daemon: what the host can do does not change
	// between VMs.
	d.vms.probeOnce.Do(func() { d.vms.caps = qemu.Probe() })
	caps := d.vms.caps
	fcBin, fcErr := d.firecrackerBin()
	if choice == "" || choice == "auto" {
		choice = "qemu"
		if fcErr == nil && caps.KVM {
			choice = "firecracker"
		}
	}
	switch choice {
	case "firecracker":
		if fcErr != nil {
			return "", nil, fmt.Errorf("%w: --vmm firecracker: no firecracker binary on PATH: install it, or use --vmm qemu", errInvalid)
		}
		b, err := d.firecracker(fcBin)
		if err != nil {
			return "", nil, err
		}
		return choice, func(ctx context.Context, s vmm.Spec) (vmm.Machine, error) { return b.Start(ctx, s) }, nil
	case "qemu":
		bin, err := system.LookPath("qemu-system-x86_64")
		if err != nil {
			return "", nil, fmt.Errorf("%w: no qemu-system-x86_64 on PATH: apt-get install qemu-system-x86", errInvalid)
		}
		b, err := qemu.New(bin, caps)
		if err != nil {
			return "", nil, err
		}
		return choice, func(ctx context.Context, s vmm.Spec) (vmm.Machine, error) { return b.Start(ctx, s) }, nil
	}
	return "", nil, fmt.Errorf("%w: --vmm %q: use firecracker, qemu or auto", errInvalid, choice)
}

func vmHint(err error) error {
	return withHint(err, "list VMs with `banger vm ls`")
}

func (d *Daemon) handleCreateVM(w http.ResponseWriter, r *http.Request) error {
	var req api.VMCreateRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	return respondVM(w, r, http.StatusCreated, func(progress func(string)) (*api.VM, error) {
		return d.createVM(r.Context(), req, progress)
	})
}

// respondVM runs a VM operation and answers with the VM, or, with
// ?stream=1, with NDJSON progress events (stages: disk, network, vmm,
// boot) and a final result or error event.
func respondVM(w http.ResponseWriter, r *http.Request, status int, op func(progress func(string)) (*api.VM, error)) error {
	if r.URL.Query().Get("stream") != "1" {
		v, err := op(nil)
		if err != nil {
			return err
		}
		writeJSON(w, status, v)
		return nil
	}
	ew := newEventWriter(w)
	v, err := op(func(stage string) { ew.emit(api.Event{Type: api.EventProgress, Stage: stage}) })
	if err != nil {
		return ew.emit(api.Event{Type: api.EventError, Error: apiError(err)})
	}
	return ew.emit(api.Event{Type: api.EventResult, VM: v})
}

// say reports a stage to progress, when someone listens.
func say(progress func(string), stage string) {
	if progress != nil {
		progress(stage)
	}
}

func (d *Daemon) createVM(ctx context.Context, req api.VMCreateRequest, progress func(string)) (*api.VM, error) {
	name := req.Name
	if name == "" {
		for i := 0; i < 10; i++ {
			name = vm.GenerateName()
			if _, err := d.store.VM(ctx, name); errors.Is(err, store.ErrNotFound) {
				break
			}
		}
	}
	if err := vm.ValidateName(name); err != nil {
		return nil, fmt.Errorf("%w: %v", errInvalid, err)
	}
	unlock := d.vmLock(name)
	defer unlock()
	if _, err := d.store.VM(ctx, name); err == nil {
		return nil, fmt.Errorf("%w: VM %q exists: pick another --name or remove it with `banger vm rm %s`", store.ErrExists, name, name)
	}
	cfg := d.opts.Config.Config
	if req.Image == "" {
		req.Image = cfg.DefaultImage
	}
	img, err := d.store.Image(ctx, req.Image)
	if err != nil {
		return nil, withHint(err, "pull it with `banger image pull "+req.Image+"`")
	}
	var k *api.Kernel
	if req.Kernel != "" {
		kk, err := d.store.Kernel(ctx, req.Kernel)
		if err != nil {
			return nil, withHint(err, "list kernels with `banger kernel list`")
		}
		k = &kk
	} else if kk, err := d.store.Kernel(ctx, cfg.DefaultKernel); err == nil {
		k = &kk
	} else if k, err = d.defaultKernel(ctx); err != nil {
		return nil, err
	}
	if req.VMM == "" {
		req.VMM = cfg.VMM
	}
	if req.Network == "" {
		req.Network = cfg.Network
	}
	choice, _, err := d.backend(req.VMM)
	if err != nil {
		return nil, err
	}
	mode, err := hostnet.ParseMode(req.Network)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errInvalid, err)
	}
	ports, err := parsePorts(mode, req.Ports)
	if err != nil {
		return nil, err
	}
	alloc, err := d.allocator(mode)
	if err != nil {
		return nil, err
	}
	if mode != hostnet.None {
		// Before anything is recorded: a network that cannot exist (a
		// colliding subnet, no privileges) or a port that is taken fails
		// the create with nothing left behind.
		n, err := d.networkUp()
		if err != nil {
			return nil, err
		}
		if err := portsFree(n, ports); err != nil {
			return nil, err
		}
	}
	mem, _ := config.ParseSize(cfg.Memory)
	v := api.VM{ID: newID(), Name: name, State: string(vm.Created), Image: img.Name, Kernel: k.Name, VMM: choice,
		VCPU: orInt(req.VCPU, cfg.VCPU), MemoryMiB: orInt(req.MemoryMiB, int(mem>>20)), DiskBytes: req.DiskBytes,
		Network: string(mode), Ports: ports}
	if v.DiskBytes == 0 {
		v.DiskBytes, _ = config.ParseSize(cfg.DiskSize)
	}
	if v.VCPU < 1 || v.VCPU > 32 || v.MemoryMiB < 128 || v.DiskBytes < 64<<20 {
		return nil, fmt.Errorf("%w: --vcpu 1..32, --memory at least 128 MiB, --disk-size at least 64 MiB", errInvalid)
	}
	v.Dir = d.layout.VMDir(v.ID)
	if err := os.MkdirAll(v.Dir, 0o755); err != nil {
		return nil, err
	}
	spec := &guestinit.RunSpec{Image: img.Name, Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd, Env: img.Config.Env,
		WorkingDir: img.Config.WorkingDir, User: img.Config.User}
	say(progress, "disk")
	seed, err := d.sshSeed(v)
	if err != nil {
		os.RemoveAll(v.Dir)
		return nil, err
	}
	if _, err := vm.CreateDataDisk(ctx, d.opts.Runner, v.Dir, v.DiskBytes, spec, seed); err != nil {
		os.RemoveAll(v.Dir)
		return nil, err
	}
	v.CreatedAt = time.Now().UTC()
	if err := d.store.InsertVM(ctx, &v, alloc); err != nil {
		os.RemoveAll(v.Dir)
		return nil, err
	}
	d.log.Info("vm created", "vm", name, "image", img.Name, "kernel", k.Name, "vmm", choice)
	if req.NoStart {
		return &v, nil
	}
	return d.startVMLocked(v, progress)
}

// firecrackerBin is the configured firecracker binary, else the one on
// PATH.
func (d *Daemon) firecrackerBin() (string, error) {
	if b := d.opts.Config.Firecracker.Binary; b != "" {
		if _, err := os.Stat(b); err != nil {
			return "", fmt.Errorf("firecracker binary %s (config firecracker.binary): %w", b, err)
		}
		return b, nil
	}
	return system.LookPath("firecracker")
}

// firecracker is the Firecracker backend for bin, jailed when the
// daemon is configured with a jailer (its jails live under the state
// directory, on the filesystem of the files they hard-link).
func (d *Daemon) firecracker(bin string) (*firecracker.Backend, error) {
	b, err := firecracker.New(bin)
	if err != nil || d.opts.Jailer == nil {
		return b, err
	}
	j := *d.opts.Jailer
	if j.ChrootBase == "" {
		j.ChrootBase = filepath.Join(d.layout.StateDir, "jail")
	}
	return b.WithJailer(j)
}

// attach adopts the running VMM of v after a daemon restart.
func (d *Daemon) attach(ctx context.Context, v api.VM) (vmm.Machine, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if v.VMM == "firecracker" {
		bin, err := d.firecrackerBin()
		if err != nil {
			return nil, err
		}
		b, err := d.firecracker(bin)
		if err != nil {
			return nil, err
		}
		return b.Attach(ctx, v.Dir, v.PID)
	}
	return qemu.Attach(ctx, v.Dir, v.PID)
}

// inVMNet runs fn (a VMM start) in the VM network's namespace when the
// VM is networked, so the VMM finds its TAP there.
func (d *Daemon) inVMNet(v api.VM, fn func() error) error {
	if v.Network == string(hostnet.None) || v.Network == "" {
		return fn()
	}
	n, err := d.hostNet()
	if err != nil {
		return err
	}
	return n.Do(fn)
}

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func (d *Daemon) transition(ctx context.Context, v *api.VM, ev vm.Event, pid int, msg string) error {
	next, err := vm.Next(vm.State(v.State), ev)
	if err != nil {
		return fmt.Errorf("VM %q: %w", v.Name, err)
	}
	if err := d.store.SetVMState(ctx, v.Name, string(next), pid, msg); err != nil {
		return err
	}
	v.State, v.PID, v.Error = string(next), pid, msg
	return nil
}

// startVMLocked boots v and waits for its agent. The VMM outlives the
// request: it runs on the daemon's own context. A VM that does not become
// ready goes to error, its VMM killed, the console's tail in the message.
func (d *Daemon) startVMLocked(v api.VM, progress func(string)) (*api.VM, error) {
	ctx := context.Background()
	img, err := d.store.Image(ctx, v.Image)
	if err != nil {
		return nil, withHint(err, "the VM's image is gone: remove the VM")
	}
	k, err := d.store.Kernel(ctx, v.Kernel)
	if err != nil {
		return nil, withHint(err, "the VM's kernel is gone: remove the VM")
	}
	_, start, err := d.backend(v.VMM)
	if err != nil {
		return nil, err
	}
	if err := d.transition(ctx, &v, vm.EvStart, 0, ""); err != nil {
		return nil, err
	}
	began := time.Now()
	if v.Network != "" && v.Network != "none" {
		say(progress, "network")
	}
	netArgs, err := d.attachNet(ctx, v)
	if err != nil {
		d.transition(ctx, &v, vm.EvFail, 0, err.Error())
		return nil, err
	}
	spec := vmm.Spec{ID: v.Name, Dir: v.Dir, VCPUs: v.VCPU, MemoryMiB: v.MemoryMiB, Kernel: k.Vmlinux, Initrd: k.Initrd,
		Cmdline: vm.Cmdline(v.Name, netArgs...),
		Drives:  []vmm.Drive{{ID: "root", Path: img.Rootfs, ReadOnly: true}, {ID: "data", Path: filepath.Join(v.Dir, vm.DataDisk)}}}
	if netArgs != nil {
		spec.TAP, spec.MAC = hostnet.TAPName(v.ID), hostnet.MAC(v.ID).String()
	}
	console := filepath.Join(v.Dir, "console.log")
	offset := fileSize(console)
	say(progress, "vmm")
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	var m vmm.Machine
	err = d.inVMNet(v, func() (err error) { m, err = start(sctx, spec); return })
	cancel()
	if err != nil {
		d.transition(ctx, &v, vm.EvFail, 0, err.Error())
		d.detachNet(ctx, v)
		return nil, fmt.Errorf("%w: VM %q: %v", errVMStart, v.Name, err)
	}
	d.setMachine(v.ID, m)
	d.store.SetVMState(ctx, v.Name, v.State, m.PID(), "")
	v.PID = m.PID()
	say(progress, "boot")
	if err := waitReady(m, m.ConsolePath(), offset, d.readyTimeout()); err != nil {
		m.Kill()
		m.Wait(ctx)
		d.setMachine(v.ID, nil)
		d.transition(ctx, &v, vm.EvFail, 0, err.Error())
		d.detachNet(ctx, v)
		d.log.Warn("vm failed to start", "vm", v.Name, "err", err)
		return nil, fmt.Errorf("%w: VM %q (now in state error; `banger vm logs %s` has the console): %v", errVMStart, v.Name, v.Name, err)
	}
	if err := d.transition(ctx, &v, vm.EvReady, m.PID(), ""); err != nil {
		return nil, err
	}
	d.log.Info("vm running", "vm", v.Name, "pid", m.PID(), "ip", v.IP, "ready_after", time.Since(began))
	// Open the agent session now, so the first exec does not pay for the
	// handshake; then keys registered since the VM's disk was made reach
	// it.
	d.jobs.Add(1)
	go func() {
		defer d.jobs.Done()
		ctx, cancel := context.WithTimeout(d.jobCtx, 10*time.Second)
		if _, err := d.agentSession(ctx, v); err != nil {
			d.log.Info("no agent session yet (the first request retries)", "vm", v.Name, "err", err)
		}
		cancel()
		d.pushAuthorizedKeys(d.jobCtx, v)
	}()
	go d.watchExit(v, m)
	return &v, nil
}

func (d *Daemon) readyTimeout() time.Duration {
	if d.opts.ReadyTimeout > 0 {
		return d.opts.ReadyTimeout
	}
	return 2 * time.Minute
}

// watchExit records a VM's end when its VMM exits on its own (a power-off
// in the guest, a crash). Stops and kills record it themselves.
func (d *Daemon) watchExit(v api.VM, m vmm.Machine) {
	if err := m.Wait(d.jobCtx); err != nil {
		return // the daemon is stopping; the VM runs on
	}
	unlock := d.vmLock(v.Name)
	defer unlock()
	if d.machine(v.ID) != m {
		return
	}
	d.setMachine(v.ID, nil)
	cur, err := d.store.VM(context.Background(), v.Name)
	if err != nil || !vm.State(cur.State).Live() {
		return
	}
	d.transition(context.Background(), &cur, vm.EvExited, 0, "")
	d.dropAgent(cur.ID)
	d.detachNet(context.Background(), cur)
	d.log.Info("vm exited", "vm", v.Name)
}

func (d *Daemon) handleVMAction(w http.ResponseWriter, r *http.Request) error {
	name, action := r.PathValue("name"), r.PathValue("action")
	unlock := d.vmLock(name)
	defer unlock()
	v, err := d.store.VM(r.Context(), name)
	if err != nil {
		return vmHint(err)
	}
	if action == "start" || action == "restart" {
		return respondVM(w, r, http.StatusOK, func(progress func(string)) (*api.VM, error) {
			if action == "start" {
				if _, err := vm.Next(vm.State(v.State), vm.EvStart); err != nil {
					return nil, fmt.Errorf("VM %q: %w", name, err)
				}
			} else if vm.State(v.State).Live() {
				if _, err := d.stopVMLocked(r.Context(), v, false); err != nil {
					return nil, err
				}
				v, _ = d.store.VM(r.Context(), name)
			}
			return d.startVMLocked(v, progress)
		})
	}
	var out *api.VM
	switch action {
	case "stop":
		out, err = d.stopVMLocked(r.Context(), v, false)
	case "kill":
		out, err = d.stopVMLocked(r.Context(), v, true)
	case "pause", "resume":
		out, err = d.pauseVMLocked(r.Context(), v, action == "pause")
	default:
		return fmt.Errorf("%w: no VM action %q", store.ErrNotFound, action)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
