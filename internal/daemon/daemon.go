// Package daemon is bangerd: the composition root that owns banger's
// state and privileges. It builds the store and the image puller, serves
// the HTTP API on a Unix socket to permitted local users, and reconciles
// on-disk state with the store when it starts. It renders nothing for
// people; that is the CLI's job.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/cgroup"
	"banger/internal/config"
	"banger/internal/doctor"
	"banger/internal/e2b"
	"banger/internal/images"
	"banger/internal/kernels"
	"banger/internal/paths"
	"banger/internal/store"
	"banger/internal/system"
	"banger/internal/vm"
	"banger/internal/vmnet"
)

// Daemon is one bangerd instance: the services, the HTTP server in front
// of them, and the order they start and stop in.
type Daemon struct {
	layout  paths.Layout
	opts    Options
	log     *slog.Logger
	store   *store.Store
	started time.Time
	allowed allowedPeers

	// The services, built by wire.
	net     *vmnet.Runtime
	images  *images.Service
	kernels *kernels.Service
	vms     *vm.Service
	e2b     *e2b.Service
	doctor  doctor.Inputs
	// cgroups holds the VMs' cgroups, nil when they run uncontained.
	cgroups *cgroup.Manager
	// netMu guards a change of the VM subnet (POST /v1/network) and
	// opts.Config, which records where the subnet came from.
	netMu sync.Mutex

	stopOnce sync.Once
	stopCh   chan struct{}
}

// New prepares a daemon for layout. Nothing is opened until Run.
func New(layout paths.Layout, opts Options) (*Daemon, error) {
	if opts.Group == "" {
		opts.Group = "banger"
	}
	if opts.Runner == nil {
		opts.Runner = system.Runner{}
	}
	if opts.Config.Source == nil {
		opts.Config = config.Loaded{Config: config.Defaults(), Source: config.Source{}}
	}
	return &Daemon{layout: layout, opts: opts, stopCh: make(chan struct{})}, nil
}

// Run serves until ctx is cancelled or a client asks the daemon to stop,
// then shuts down cleanly: it stops accepting, cancels pulls and the
// services' background work, waits for them to clean up, and closes the
// store. It refuses to start while another daemon answers on the
// socket. The order: directories and log, the agent check, the lock,
// guest RAM's directory, the socket, the store, the services (wire),
// reconcile, serve.
func (d *Daemon) Run(ctx context.Context) (err error) {
	if err := d.layout.MkdirAll(); err != nil {
		return err
	}
	var cleanups []func() error
	defer func() {
		// Also into the log: an autostarted daemon's stderr goes
		// nowhere, and the CLI quotes the log's last line.
		if err != nil && d.log != nil {
			d.log.Error("bangerd failed", "err", err)
		}
		for i := len(cleanups) - 1; i >= 0; i-- {
			err = errors.Join(err, cleanups[i]())
		}
	}()

	logFile, err := os.OpenFile(d.layout.DaemonLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("opening log %s: %w", d.layout.DaemonLog(), err)
	}
	cleanups = append(cleanups, logFile.Close)
	var handler slog.Handler = slog.NewJSONHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo})
	if d.opts.Logger != nil {
		handler = slog.NewMultiHandler(handler, d.opts.Logger.Handler())
	}
	d.log = slog.New(handler)

	// A dynamically linked agent would make every VM panic at boot, long
	// after the build that produced it: refuse it now, with the fix. A
	// missing agent is reported by the operations that need one.
	if err := checkAgent(); err != nil {
		return err
	}

	// One daemon per home: the lock is held for the daemon's life.
	lock, err := lockFile(d.layout.RunDir + "/bangerd.lock")
	if err != nil {
		return err
	}
	cleanups = append(cleanups, lock.Close)

	ln, err := d.listen()
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() error {
		err := os.Remove(d.layout.Socket())
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	})

	st, err := store.Open(ctx, d.layout.Database())
	if err != nil {
		ln.Close()
		return err
	}
	d.store = st
	cleanups = append(cleanups, st.Close)

	if err := d.loadSubnet(); err != nil {
		ln.Close()
		return err
	}
	if err := d.wire(); err != nil {
		ln.Close()
		return err
	}
	// Reconcile may start background work (watchers of the VMs still
	// running): the services end it on Close.
	if err := d.reconcile(ctx); err != nil {
		d.closeServices()
		ln.Close()
		return fmt.Errorf("reconciling state: %w", err)
	}

	d.started = time.Now()
	d.allowed = newAllowedPeers(d.opts.Group)
	stopE2B, err := d.startE2B()
	if err != nil {
		d.closeServices()
		ln.Close()
		return err
	}
	srv := &http.Server{
		Handler:     d.routes(),
		ConnContext: withPeerCred,
		ErrorLog:    slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
		// A client that opens connections and never finishes a request
		// header would hold a goroutine and a descriptor each, forever.
		// Bodies and upgraded streams are long-lived by design, so only
		// the header is timed (and idle keep-alives).
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	d.log.Info("bangerd started", "pid", os.Getpid(), "socket", d.layout.Socket(), "state", d.layout.StateDir)

	select {
	case <-ctx.Done():
	case <-d.stopCh:
	case err := <-serveErr:
		d.closeServices()
		stopE2B()
		return fmt.Errorf("serving API: %w", err)
	}
	d.log.Info("bangerd stopping")
	// The services' work first, so streaming handlers finish.
	d.closeServices()
	stopE2B()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
	}
	d.net.Close()
	d.removeCgroupParent()
	d.log.Info("bangerd stopped")
	return nil
}

// requestStop makes Run return; safe to call more than once.
func (d *Daemon) requestStop() { d.stopOnce.Do(func() { close(d.stopCh) }) }

// listen creates the API socket. A socket that still answers belongs to a
// running daemon and is left alone; one that refuses connections is stale.
func (d *Daemon) listen() (net.Listener, error) {
	sock := d.layout.Socket()
	if conn, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("another bangerd is already serving %s: stop it with `banger daemon stop`", sock)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", sock, err)
	}
	// Create the socket with no permissions for others from the start.
	old := syscall.Umask(0o117)
	ln, err := net.Listen("unix", sock)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", sock, err)
	}
	if err := os.Chmod(sock, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("setting mode of %s: %w", sock, err)
	}
	if g, err := user.LookupGroup(d.opts.Group); err == nil {
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(sock, -1, gid); err != nil && os.Geteuid() == 0 {
			ln.Close()
			return nil, fmt.Errorf("giving %s to group %s: %w", sock, d.opts.Group, err)
		}
	}
	return ln, nil
}

// lockFile takes an exclusive lock on path. A daemon that is stopping
// holds it until its clean-up ends, so it waits up to 10 seconds before
// concluding that another daemon runs.
func lockFile(path string) (io.Closer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another bangerd holds %s: stop it with `banger daemon stop`", path)
		}
	}
}

// checkAgent fails when the guest agent banger would use exists but is
// not a static executable.
func checkAgent() error {
	p, err := paths.CompanionBinaryPath(paths.AgentBinaryName)
	if err != nil {
		return nil
	}
	return paths.CheckStaticBinary(p)
}
