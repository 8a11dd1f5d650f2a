package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
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

// vmDirMode keeps a VM's directory to root: it holds the guest's disk
// (its SSH host key, environment, tokens), sockets into the guest and its
// console. Users reach a VM through the daemon, never through its files.
const vmDirMode = 0o700

// vmRuntime is the daemon's live view of VMs: per-VM locks and the
// handles of the VMM processes it holds.
type vmRuntime struct {
	mu       sync.Mutex
	locks    map[string]*sync.Mutex // by VM name
	machines map[string]vmm.Machine // by VM id
	// stopping cuts the graceful stop under way of a VM, and killers
	// counts the kills waiting for a VM's lock; both by VM name (see
	// killLock).
	stopping map[string]context.CancelCauseFunc
	killers  map[string]int

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

// vmmBackend is what the daemon needs of a VMM backend: start a VM,
// restore one (nil when the backend cannot), and its version.
type vmmBackend struct {
	start   func(context.Context, vmm.Spec) (vmm.Machine, error)
	restore vmm.Restorer
	// bin is the VMM binary; `bin --version` says its version.
	bin string
}

// backend returns the VMM backend for a choice: firecracker, qemu, or
// auto (Firecracker when its binary exists and guests run at hardware
// speed, QEMU otherwise).
func (d *Daemon) backend(choice string) (string, vmmBackend, error) {
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
			return "", vmmBackend{}, fmt.Errorf("%w: --vmm firecracker: no firecracker binary on PATH: install it, or use --vmm qemu", errInvalid)
		}
		b, err := d.firecracker(fcBin)
		if err != nil {
			return "", vmmBackend{}, err
		}
		return choice, vmmBackend{start: func(ctx context.Context, s vmm.Spec) (vmm.Machine, error) { return b.Start(ctx, s) }, restore: b, bin: fcBin}, nil
	case "qemu":
		bin, err := system.LookPath("qemu-system-x86_64")
		if err != nil {
			return "", vmmBackend{}, fmt.Errorf("%w: no qemu-system-x86_64 on PATH: apt-get install qemu-system-x86", errInvalid)
		}
		b, err := qemu.New(bin, caps)
		if err != nil {
			return "", vmmBackend{}, err
		}
		return choice, vmmBackend{start: func(ctx context.Context, s vmm.Spec) (vmm.Machine, error) { return b.Start(ctx, s) }, restore: b, bin: bin}, nil
	}
	return "", vmmBackend{}, fmt.Errorf("%w: --vmm %q: use firecracker, qemu or auto", errInvalid, choice)
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
	v, unlock, err := d.newVMRecord(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
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
	mounts, err := d.resolveMounts(ctx, req.Mounts, choice, *k)
	if err != nil {
		return nil, err
	}
	alloc, err := d.prepareNet(mode, ports)
	if err != nil {
		return nil, err
	}
	v.Mounts = mounts
	mem, _ := config.ParseSize(cfg.Memory)
	v.Image, v.Kernel, v.VMM = img.Name, k.Name, choice
	v.VCPU, v.MemoryMiB, v.DiskBytes = orInt(req.VCPU, cfg.VCPU), orInt(req.MemoryMiB, int(mem>>20)), req.DiskBytes
	v.Network, v.Ports = string(mode), ports
	if v.DiskBytes == 0 {
		v.DiskBytes, _ = config.ParseSize(cfg.DiskSize)
	}
	if v.VCPU < 1 || v.VCPU > 32 || v.MemoryMiB < 128 || v.DiskBytes < 64<<20 {
		return nil, fmt.Errorf("%w: --vcpu 1..32, --memory at least 128 MiB, --disk-size at least 64 MiB", errInvalid)
	}
	if err := os.MkdirAll(v.Dir, vmDirMode); err != nil {
		return nil, err
	}
	// A warm start: the template's disk instead of a new one, restored
	// instead of booted.
	var from *restoreFrom
	key := ""
	// A VM with shared directories cannot be snapshotted (see
	// takeSnapshot), so it neither restores a template nor makes one.
	if cfg.Warm && !req.Cold && !req.NoStart && len(mounts) == 0 {
		key, from = d.warmStart(ctx, v, img, *k)
	}
	say(progress, "disk")
	if from != nil {
		hostKey, err := d.restoredDisk(v, from.snap)
		if err != nil {
			return nil, err
		}
		from.hostKey = hostKey
		v.Origin = "template " + from.snap.Name
	} else if err := d.newDataDisk(ctx, v, img); err != nil {
		return nil, err
	}
	v.CreatedAt = time.Now().UTC()
	if err := d.store.InsertVM(ctx, &v, alloc); err != nil {
		os.RemoveAll(v.Dir)
		return nil, err
	}
	d.log.Info("vm created", "vm", v.Name, "image", img.Name, "kernel", k.Name, "vmm", choice, "origin", v.Origin)
	if req.NoStart {
		return &v, nil
	}
	if from == nil {
		return d.launchVMLocked(v, nil, key, progress)
	}
	out, err := d.launchVMLocked(v, from, "", progress)
	if err == nil {
		return out, nil
	}
	// A template that does not restore is of no use to anyone: drop it
	// and boot this VM cold on a new disk (which makes a new template).
	d.log.Warn("warm start failed: dropping the template, booting cold", "vm", v.Name, "template", from.snap.Name, "err", err)
	d.dropSnapshot(ctx, from.snap, "it did not restore")
	cur, gerr := d.store.VM(ctx, v.Name)
	if gerr != nil {
		return nil, err
	}
	os.Remove(filepath.Join(cur.Dir, vm.DataDisk))
	if err := d.newDataDisk(ctx, cur, img); err != nil {
		return nil, err
	}
	cur.Origin = ""
	if err := d.store.SetVMOrigin(ctx, cur.Name, ""); err != nil {
		return nil, err
	}
	return d.launchVMLocked(cur, nil, key, progress)
}

// newDataDisk makes v's writable disk, seeded with the image's run spec
// and the VM's SSH keys. On error v's directory is removed.
func (d *Daemon) newDataDisk(ctx context.Context, v api.VM, img api.Image) error {
	spec := &guestinit.RunSpec{Image: img.Name, Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd, Env: img.Config.Env,
		WorkingDir: img.Config.WorkingDir, User: img.Config.User}
	seed, err := d.sshSeed(v)
	if err != nil {
		os.RemoveAll(v.Dir)
		return err
	}
	if _, err := vm.CreateDataDisk(ctx, d.opts.Runner, v.Dir, v.DiskBytes, spec, seed); err != nil {
		os.RemoveAll(v.Dir)
		return err
	}
	return nil
}

// prepareNet checks, before anything is recorded, that the network of
// mode can exist (no colliding subnet, the privileges) and that ports
// are free, and returns the address allocator of mode.
func (d *Daemon) prepareNet(mode hostnet.Mode, ports []string) (func([]netip.Addr) (netip.Addr, error), error) {
	alloc, err := d.allocator(mode)
	if err != nil {
		return nil, err
	}
	if mode != hostnet.None {
		n, err := d.networkUp()
		if err != nil {
			return nil, err
		}
		if err := portsFree(n, ports); err != nil {
			return nil, err
		}
	}
	return alloc, nil
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
	if !next.Live() {
		// No VMM maps the guest's RAM any more, serves its mounts or
		// writes its console (but for a kill, recorded first: see
		// stopVMLocked).
		os.Remove(d.layout.RAMFile(v.ID))
		d.stopMounts(ctx, v.Name)
		d.endConsole(v.Dir)
	}
	return nil
}

func (d *Daemon) handleVMAction(w http.ResponseWriter, r *http.Request) error {
	name, action := r.PathValue("name"), r.PathValue("action")
	var unlock func()
	cut := false
	if action == "kill" {
		unlock, cut = d.killLock(name)
	} else {
		unlock = d.vmLock(name)
	}
	defer unlock()
	v, err := d.store.VM(r.Context(), name)
	if err != nil {
		return vmHint(err)
	}
	if cut && !vm.State(v.State).Live() {
		// The stop this kill cut short has killed the VM.
		writeJSON(w, http.StatusOK, v)
		return nil
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
				if d.killWaiting(name) {
					return nil, fmt.Errorf("%w: VM %q was killed while it restarted (`banger vm kill` or `vm rm -f`): it stays stopped; start it with `banger vm start %s`", errConflict, name, name)
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
