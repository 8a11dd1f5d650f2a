package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/cgroup"
	"banger/internal/config"
	"banger/internal/doctor"
	"banger/internal/e2b"
	"banger/internal/hostnet"
	"banger/internal/imagepull"
	"banger/internal/images"
	"banger/internal/kernels"
	"banger/internal/system"
	"banger/internal/vm"
	"banger/internal/vmm"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
	"banger/internal/vmnet"
	"banger/internal/vsockagent"
)

// This file is the wiring: it builds each service with its
// dependencies, once, and is the only place in the daemon that knows
// the VMM backends. Nothing else constructs a service.

// Options configure a Daemon. The zero value is valid.
type Options struct {
	// Group may use the socket besides root and the daemon's own user.
	// Default "banger"; ignored when no such group exists.
	Group string
	// Logger receives structured logs in addition to the daemon's log
	// file. Default: the log file only.
	Logger *slog.Logger
	// Runner runs host commands. Default system.Runner{}.
	Runner system.CommandRunner
	// PullOptions are passed to the image puller.
	PullOptions []imagepull.Option
	// KernelCatalog is a JSON file of extra kernel catalog entries
	// (default: none; the built-in catalog only).
	KernelCatalog string
	// AptDir is the host's apt configuration, read for the Debian
	// mirror that image builds and catalog kernels use. Default /etc/apt.
	AptDir string
	// HostRoot is where installed kernels are looked for (default "/").
	HostRoot string
	// ReadyTimeout bounds how long a VM may take to become ready
	// (default 2 minutes: software emulation is slow).
	ReadyTimeout time.Duration
	// Network places the VM network: bridge, subnet and namespace
	// (zero values: banger0, 10.253.0.0/24, the daemon's own).
	Network hostnet.Config
	// DNSUpstreams are where the VM DNS server forwards other names
	// (default: the host's /etc/resolv.conf).
	DNSUpstreams []string
	// Jailer, when set, runs every Firecracker VM under Firecracker's
	// jailer (ChrootBase defaults to STATE/jail).
	Jailer *firecracker.Jailer
	// Config holds the VM defaults (image, kernel, VMM, sizes, network)
	// and, for `banger config show`, every effective setting and where
	// it came from. Zero: config.Defaults().
	Config config.Loaded
	// NoCgroups runs VMs uncontained: no cgroup of their own, no memory,
	// CPU or pids limits. Default false: each VM's processes run in a
	// cgroup where the host allows it (else a warning, and none).
	NoCgroups bool
	// VMMemoryOverhead is what a VM's processes may use beyond its guest
	// memory. Zero: the VM service's measured default. Only tests set
	// it, lower, to push a VMM past its limit.
	VMMemoryOverhead int64
}

// wire builds the services on the open store.
func (d *Daemon) wire() error {
	pullOpts := append([]imagepull.Option{imagepull.WithLogger(d.log)}, d.opts.PullOptions...)
	puller, err := imagepull.New(d.layout.BlobsDir(), d.opts.Runner, pullOpts...)
	if err != nil {
		return err
	}
	netCfg := d.opts.Network
	netCfg.StateDir = d.layout.RunDir
	if j := d.opts.Jailer; j != nil {
		netCfg.TAPOwner, netCfg.TAPGroup = j.UID, j.GID
	}
	d.net = vmnet.New(vmnet.Config{Net: netCfg, DNSUpstreams: d.opts.DNSUpstreams, Runner: d.opts.Runner, Log: d.log})
	b := &backends{d: d}
	d.kernels = kernels.New(kernels.Deps{Layout: d.layout, Store: d.store, Puller: puller, Runner: d.opts.Runner, Log: d.log,
		Catalog: d.opts.KernelCatalog, AptDir: d.opts.AptDir, HostRoot: d.opts.HostRoot,
		Removed: func(ctx context.Context, k api.Kernel) { d.vms.KernelRemoved(ctx, k) }})
	d.images = images.New(images.Deps{Layout: d.layout, Store: d.store, Puller: puller, Runner: d.opts.Runner, Log: d.log,
		AptDir: d.opts.AptDir, Removed: func(ctx context.Context, img api.Image) { d.vms.ImageRemoved(ctx, img) }})
	cg, cgOff := d.containment()
	d.cgroups = cg
	d.vms = vm.New(vm.Deps{Layout: d.layout, Store: d.store, Backends: b, Net: d.net, Kernels: d.kernels,
		Runner: d.opts.Runner, Log: d.log, Config: d.opts.Config.Config, ReadyTimeout: d.opts.ReadyTimeout,
		Cgroups: cg, MemoryOverhead: d.opts.VMMemoryOverhead})
	d.e2b, err = e2b.New(context.Background(), e2b.Deps{VMs: d.vms, Images: d.images, Store: d.store, Log: d.log.With("component", "e2b"),
		Config: d.opts.Config.E2B, DefaultImage: d.opts.Config.DefaultImage,
		// A key acts as its owner only while the owner may use bangerd.
		Allowed: func(uid, gid int) string {
			return d.allowed.check(peerCred{ok: true, uid: uint32(uid), gid: uint32(gid)})
		}})
	if err != nil {
		return err
	}
	d.doctor = doctor.Inputs{Layout: d.layout, Runner: d.opts.Runner, Store: d.store, Config: d.opts.Config.Config, Net: d.net,
		FirecrackerBin: b.firecrackerBin, Jailer: d.opts.Jailer, Helper: vm.HelperBinary, Cgroups: cg, CgroupsOff: cgOff}
	return nil
}

// startE2B starts the E2B endpoint's expiry of sandboxes and, when
// e2b.listen is set, its listener. stop ends both and waits for them.
func (d *Daemon) startE2B() (stop func(), err error) {
	ln, err := d.e2b.Listen()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); d.e2b.Run(ctx) }()
	if ln != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.e2b.Serve(ctx, ln); err != nil {
				d.log.Error("the E2B endpoint stopped", "err", err)
			}
		}()
		d.log.Info("E2B endpoint listening", "addr", ln.Addr().String(), "url", d.e2b.APIURL())
	}
	return func() { cancel(); wg.Wait() }, nil
}

// containment is the manager of the VMs' cgroups, under a parent of this
// instance's own; or nil and why VMs run uncontained: turned off, or
// the host (or this user) cannot. It is checked once, here, and said
// once in the log (and by `banger doctor`), not at every VM start.
func (d *Daemon) containment() (*cgroup.Manager, error) {
	if d.opts.NoCgroups {
		err := errors.New("turned off (bangerd --cgroups=false or $BANGER_CGROUPS)")
		d.log.Info("VMs run uncontained: no memory, CPU or pids limits", "why", err)
		return nil, err
	}
	m, err := cgroup.New(d.layout.CgroupParent())
	if err == nil {
		err = m.Check()
	}
	if err != nil {
		d.log.Warn("cgroups are unusable: VMs run without memory, CPU or pids limits, so one VM can starve the others", "err", err)
		return nil, err
	}
	d.log.Info("VMs run in cgroups", "mode", m.Mode().String(), "parent", m.Parent())
	return m, nil
}

// reconcile makes files, records and processes agree after a crash or a
// restart, service by service: images, kernels, then VMs (with their
// snapshots and network).
func (d *Daemon) reconcile(ctx context.Context) error {
	if err := d.images.Reconcile(ctx); err != nil {
		return err
	}
	if err := d.kernels.Reconcile(ctx); err != nil {
		return err
	}
	return d.vms.Reconcile(ctx)
}

// closeServices ends the services' background work: pulls and builds,
// agent calls, syncs and watchers. VMs run on.
func (d *Daemon) closeServices() {
	d.images.Close()
	d.vms.Close()
}

// removeCgroupParent removes the instance's parent cgroup once the
// daemon serves no more, if no VM's group is left in it (the next VM
// start makes it again): every test's daemon has one, and empty ones
// would pile up on the host.
func (d *Daemon) removeCgroupParent() {
	if d.cgroups == nil {
		return
	}
	if names, err := d.cgroups.List(); err == nil && len(names) == 0 {
		if err := d.cgroups.RemoveParent(); err != nil {
			d.log.Warn("removing the instance's parent cgroup", "err", err)
		}
	}
}

// backends implements vm.Backends with the QEMU and Firecracker drivers.
type backends struct {
	d *Daemon
	// Probed once per daemon: what the host can do does not change
	// between VMs.
	probeOnce sync.Once
	caps      qemu.Caps
}

// Pick resolves firecracker, qemu or auto (Firecracker when its binary
// exists and guests run at hardware speed, QEMU otherwise).
func (b *backends) Pick(choice string) (string, vm.Backend, error) {
	b.probeOnce.Do(func() { b.caps = qemu.Probe() })
	fcBin, fcErr := b.firecrackerBin()
	if choice == "" || choice == "auto" {
		choice = "qemu"
		if fcErr == nil && b.caps.KVM {
			choice = "firecracker"
		}
	}
	switch choice {
	case "firecracker":
		if fcErr != nil {
			return "", nil, fmt.Errorf("%w: --vmm firecracker: no firecracker binary on PATH: install it, or use --vmm qemu", api.ErrInvalid)
		}
		fc, err := b.firecracker(fcBin)
		if err != nil {
			return "", nil, err
		}
		return choice, &fcBackend{Backend: fc, bin: fcBin, runner: b.d.opts.Runner}, nil
	case "qemu":
		bin, err := system.LookPath("qemu-system-x86_64")
		if err != nil {
			return "", nil, fmt.Errorf("%w: no qemu-system-x86_64 on PATH: apt-get install qemu-system-x86", api.ErrInvalid)
		}
		q, err := qemu.New(bin, b.caps)
		if err != nil {
			return "", nil, err
		}
		return choice, &qemuBackend{Backend: q, bin: bin, runner: b.d.opts.Runner}, nil
	}
	return "", nil, fmt.Errorf("%w: --vmm %q: use firecracker, qemu or auto", api.ErrInvalid, choice)
}

// firecrackerBin is the configured firecracker binary, else the one on
// PATH.
func (b *backends) firecrackerBin() (string, error) {
	if bin := b.d.opts.Config.Firecracker.Binary; bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("firecracker binary %s (config firecracker.binary): %w", bin, err)
		}
		return bin, nil
	}
	return system.LookPath("firecracker")
}

// firecracker is the Firecracker backend for bin, jailed when the
// daemon is configured with a jailer (its jails live under the state
// directory, on the filesystem of the files they hard-link).
func (b *backends) firecracker(bin string) (*firecracker.Backend, error) {
	fc, err := firecracker.New(bin)
	if err != nil || b.d.opts.Jailer == nil {
		return fc, err
	}
	j := *b.d.opts.Jailer
	if j.ChrootBase == "" {
		j.ChrootBase = filepath.Join(b.d.layout.StateDir, "jail")
	}
	return fc.WithJailer(j)
}

// vmmVersion asks a VMM binary its version.
func vmmVersion(ctx context.Context, runner system.CommandRunner, bin string) (string, error) {
	out, err := runner.Run(ctx, bin, "--version")
	if err != nil {
		return "", fmt.Errorf("asking %s its version: %w", bin, err)
	}
	v := vmm.ParseVersion(string(out))
	if v == "" {
		return "", fmt.Errorf("%s --version said %q: no version in it", bin, system.Tail(string(out), 100))
	}
	return v, nil
}

type qemuBackend struct {
	*qemu.Backend
	bin    string
	runner system.CommandRunner
}

func (q *qemuBackend) Start(ctx context.Context, s vmm.Spec) (vmm.Machine, error) {
	return q.Backend.Start(ctx, s)
}
func (q *qemuBackend) Restorer() vmm.Restorer { return q.Backend }
func (q *qemuBackend) Attach(ctx context.Context, dir string, pid int) (vmm.Machine, error) {
	return qemu.Attach(ctx, dir, pid)
}
func (q *qemuBackend) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	var dl net.Dialer
	return dl.DialContext(ctx, "unix", filepath.Join(dir, qemu.AgentSocket))
}
func (q *qemuBackend) Version(ctx context.Context) (string, error) {
	return vmmVersion(ctx, q.runner, q.bin)
}

type fcBackend struct {
	*firecracker.Backend
	bin    string
	runner system.CommandRunner
}

func (f *fcBackend) Start(ctx context.Context, s vmm.Spec) (vmm.Machine, error) {
	return f.Backend.Start(ctx, s)
}
func (f *fcBackend) Restorer() vmm.Restorer { return f.Backend }
func (f *fcBackend) Attach(ctx context.Context, dir string, pid int) (vmm.Machine, error) {
	return f.Backend.Attach(ctx, dir, pid)
}
func (f *fcBackend) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	return firecracker.DialVsock(ctx, filepath.Join(dir, firecracker.VsockSocket), vsockagent.VsockPort)
}
func (f *fcBackend) Version(ctx context.Context) (string, error) {
	return vmmVersion(ctx, f.runner, f.bin)
}
