package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/cgroup"
	"banger/internal/config"
	"banger/internal/paths"
	"banger/internal/store"
	"banger/internal/system"
	"banger/internal/vmm"
	"banger/internal/vmnet"
)

// ErrStart means a VM did not start or did not become ready.
var ErrStart = errors.New("VM failed to start")

// vmDirMode keeps a VM's directory to root: it holds the guest's disk
// (its SSH host key, environment, tokens), sockets into the guest and its
// console. Users reach a VM through the service, never through its files.
const vmDirMode = 0o700

// Backend is one VMM as the service uses it. The daemon's wiring makes
// them from vmm/qemu and vmm/firecracker; the service's own tests give
// a fake. Implementations are safe for concurrent use.
type Backend interface {
	// Start boots spec; the guest runs when it returns.
	Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error)
	// Restorer restores snapshots, nil when the backend cannot.
	Restorer() vmm.Restorer
	// Attach adopts the running VMM pid of the VM in dir after a
	// daemon restart: its process and control socket.
	Attach(ctx context.Context, dir string, pid int) (vmm.Machine, error)
	// DialAgent reaches the agent of the VM in dir when the service has
	// no handle on its VMM (it could not adopt it).
	DialAgent(ctx context.Context, dir string) (net.Conn, error)
	// Version is the VMM binary's version, from its --version.
	Version(ctx context.Context) (string, error)
}

// Backends picks a VM's backend.
type Backends interface {
	// Pick resolves a --vmm choice (firecracker, qemu, auto or "") to a
	// VMM kind and its backend, or says why it cannot (api.ErrInvalid).
	Pick(choice string) (kind string, b Backend, err error)
}

// KernelResolver finds the kernel a VM boots (the kernel service).
type KernelResolver interface {
	// Resolve is the kernel named name, or the default one when name
	// is "" (configured if it exists, else the host's, imported).
	Resolve(ctx context.Context, name, configured string) (api.Kernel, error)
}

// Deps are what the service needs, given once by the daemon's wiring.
type Deps struct {
	Layout   paths.Layout
	Store    *store.Store
	Backends Backends
	Net      *vmnet.Runtime
	Kernels  KernelResolver
	// Runner runs host commands (mkfs.ext4 for a VM's disk).
	Runner system.CommandRunner
	Log    *slog.Logger
	// Config holds the VM defaults, warm starts and the console cap.
	Config config.Config
	// ReadyTimeout bounds how long a VM may take to become ready
	// (default 2 minutes: software emulation is slow).
	ReadyTimeout time.Duration
	// ConsoleWriter starts the writer of a VM's console log at path,
	// capped at max bytes, and returns the pipe's writing end and a
	// channel closed when all is written (consolelog.Pipe's shape). Nil:
	// `bangerd console-log`, a process that outlives the daemon as the
	// VMM does; tests that run no bangerd give consolelog.Pipe.
	ConsoleWriter func(path string, max int64) (*os.File, <-chan struct{}, error)
	// Cgroups contains each VM's processes in a group of its own under
	// the manager's parent (see cgroups.go). Nil: VMs run uncontained.
	Cgroups *cgroup.Manager
	// MemoryOverhead is what a VM's processes may use on top of its
	// guest memory before the OOM killer ends them. Zero: the measured
	// vmMemoryOverhead; tests set less to push a VMM past its limit.
	MemoryOverhead int64
}

// Service owns VMs end to end: creating, starting (boot or restore),
// stopping, pausing, snapshotting, forking, warm templates, their
// mounts and agent sessions, and adopting them again after a daemon
// restart. Every transition goes through the state machine (Next);
// work on one VM is serialised by a lock per VM name, never one lock
// for all. It knows nothing of HTTP. Safe for concurrent use.
type Service struct {
	layout   paths.Layout
	store    *store.Store
	backends Backends
	net      *vmnet.Runtime
	kernels  KernelResolver
	runner   system.CommandRunner
	log      *slog.Logger
	cfg      config.Config
	ready    time.Duration
	// consoleWriter: see Deps.ConsoleWriter.
	consoleWriter func(path string, max int64) (*os.File, <-chan struct{}, error)
	// cg and memOverhead: see Deps.Cgroups and Deps.MemoryOverhead.
	cg          *cgroup.Manager
	memOverhead int64

	// jobCtx outlives requests: agent sessions, syncs, watchers and
	// the work after a start run on it. Close cancels it.
	jobCtx    context.Context
	jobCancel context.CancelFunc
	jobs      sync.WaitGroup

	vms       vmRuntime
	agents    agentRuntime
	syncs     syncRuntime
	snaps     snapshotState
	snapLocks snapshotLocks
	templates templateFlights
	admits    admissions
	ram       ramRoom
}

// New returns the VM service. Call Reconcile before serving, and Close
// when done.
func New(d Deps) *Service {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Runner == nil {
		d.Runner = system.Runner{}
	}
	if d.ReadyTimeout <= 0 {
		d.ReadyTimeout = 2 * time.Minute
	}
	if d.MemoryOverhead <= 0 {
		d.MemoryOverhead = vmMemoryOverhead
	}
	s := &Service{layout: d.Layout, store: d.Store, backends: d.Backends, net: d.Net, kernels: d.Kernels,
		runner: d.Runner, log: d.Log, cfg: d.Config, ready: d.ReadyTimeout, consoleWriter: d.ConsoleWriter,
		cg: d.Cgroups, memOverhead: d.MemoryOverhead}
	s.jobCtx, s.jobCancel = context.WithCancel(context.Background())
	return s
}

// Close cancels the service's background work (agent calls, syncs,
// watchers) and waits for it. VMs keep running: the next service adopts
// them.
func (s *Service) Close() { s.drainJobs() }

// vmRuntime is the service's live view of VMs: per-VM locks and the
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
	// mapped is the snapshot memory file each restored VM's VMM maps,
	// by VM id (see restores.go).
	mapped map[string]*mappedSnapshot
}

// vmLock takes the lock of the VM named name; the caller unlocks.
func (s *Service) vmLock(name string) func() {
	l := s.lockOf(name)
	l.Lock()
	return l.Unlock
}

// tryVMLock takes the lock of the VM named name when no one holds it.
func (s *Service) tryVMLock(name string) (func(), bool) {
	l := s.lockOf(name)
	if !l.TryLock() {
		return nil, false
	}
	return l.Unlock, true
}

// lockOf is the VM named name's lock, made on first use.
func (s *Service) lockOf(name string) *sync.Mutex {
	s.vms.mu.Lock()
	defer s.vms.mu.Unlock()
	if s.vms.locks == nil {
		s.vms.locks = map[string]*sync.Mutex{}
	}
	l := s.vms.locks[name]
	if l == nil {
		l = &sync.Mutex{}
		s.vms.locks[name] = l
	}
	return l
}

func (s *Service) machine(id string) vmm.Machine {
	s.vms.mu.Lock()
	defer s.vms.mu.Unlock()
	return s.vms.machines[id]
}

func (s *Service) setMachine(id string, m vmm.Machine) {
	s.vms.mu.Lock()
	defer s.vms.mu.Unlock()
	if s.vms.machines == nil {
		s.vms.machines = map[string]vmm.Machine{}
	}
	if m == nil {
		delete(s.vms.machines, id)
	} else {
		s.vms.machines[id] = m
	}
}

// readyTimeout bounds a start's wait for the guest.
func (s *Service) readyTimeout() time.Duration { return s.ready }

// say reports a stage to progress, when someone listens.
func say(progress func(string), stage string) {
	if progress != nil {
		progress(stage)
	}
}

// HelperBinary is this daemon's own binary, which also runs its helper
// processes (`bangerd filesync`, `bangerd console-log`).
func HelperBinary() (string, error) {
	exe, err := os.Executable()
	if err == nil && !strings.HasPrefix(filepath.Base(exe), "bangerd") {
		err = fmt.Errorf("%s is not bangerd", exe)
	}
	return exe, err
}

// drainJobs cancels the background jobs (syncs, agent calls, watchers),
// closes the agent sessions so no job waits on a guest (the VMs run on),
// and waits for the jobs to end.
func (s *Service) drainJobs() {
	s.jobCancel()
	s.closeAgents()
	s.jobs.Wait()
}
