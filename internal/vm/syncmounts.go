package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/system"
	"banger/internal/virtiofs"
	"banger/internal/vsockagent"
)

// This file is synced mounts: a -v on a VMM with no shared file system
// (Firecracker), or with the sync option. The guest's agent keeps a copy
// in sync with the host directory over one agent stream (package
// filesync); the host side is `bangerd filesync`, run as the mount's
// owner, which the daemon relays to the agent. It starts once the guest
// is up, holds the image's command until the first sync is done, and
// runs again whenever it ends while the VM lives.

// syncRuntime tracks the running syncs by fsMarker.
type syncRuntime struct {
	mu   sync.Mutex
	runs map[string]context.CancelFunc
}

// syncHelper is the binary that runs `filesync`: this bangerd.
func syncHelper() (string, error) {
	exe, err := HelperBinary()
	if err != nil {
		return "", fmt.Errorf("synced mounts run `bangerd filesync`, and this daemon cannot (%v): run the bangerd binary", err)
	}
	return exe, nil
}

// initialSyncTimeout bounds the first sync of a mount, which holds the
// VM's start: ample for 100,000 files under emulation, finite when a
// guest stops answering.
const initialSyncTimeout = 15 * time.Minute

func syncState(v api.VM, i int) string { return filepath.Join(v.Dir, "sync"+strconv.Itoa(i)+".state") }

// startSyncs runs v's synced mounts and waits for each one's initial
// sync; on error none runs.
func (s *Service) startSyncs(v *api.VM, progress func(string)) error {
	for i, m := range v.Mounts {
		if m.Kind != api.MountSync {
			continue
		}
		say(progress, "sync")
		ready := make(chan syncStart, 1)
		s.runSync(*v, i, ready)
		var r syncStart
		select {
		case r = <-ready:
		case <-time.After(initialSyncTimeout):
			r.err = fmt.Errorf("the initial sync did not finish in %v (%s has its log): share a smaller tree, or copy it with `banger vm cp`", initialSyncTimeout, fsLog(*v, i))
		}
		if r.err != nil {
			s.stopSyncs(*v)
			return fmt.Errorf("syncing %s to %s in the guest: %v", m.Host, m.Guest, r.err)
		}
		v.Mounts[i].PID, v.Mounts[i].Error = r.pid, ""
	}
	return nil
}

// syncStart is how a sync's first session began.
type syncStart struct {
	pid int
	err error
}

// runSync runs mount i of v in the background until stopSyncs: each
// session that ends while the VM lives is recorded and started again.
// When ready is set, the first session reports on it and a failure
// there ends the run.
func (s *Service) runSync(v api.VM, i int, ready chan<- syncStart) {
	ctx, cancel := context.WithCancel(s.jobCtx)
	key := fsMarker(v, i)
	s.syncs.mu.Lock()
	if s.syncs.runs == nil {
		s.syncs.runs = map[string]context.CancelFunc{}
	}
	if old := s.syncs.runs[key]; old != nil {
		old()
	}
	s.syncs.runs[key] = cancel
	s.syncs.mu.Unlock()
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		defer cancel()
		m := v.Mounts[i]
		backoff := time.Second
		for first := true; ; first = false {
			began := time.Now()
			onReady := func(pid int, stats string) {
				s.log.Info("mount synced", "vm", v.Name, "host", m.Host, "guest", m.Guest, "took", time.Since(began), "sent_received_bytes", stats)
				if first && ready != nil {
					ready <- syncStart{pid: pid}
					return
				}
				s.setMountState(ctx, v, i, pid, "")
				backoff = time.Second
			}
			err := s.syncSession(ctx, v, i, onReady)
			if ctx.Err() != nil {
				return
			}
			if first && ready != nil && !errors.Is(err, errSyncReady) {
				ready <- syncStart{err: err}
				return
			}
			msg := fmt.Sprintf("the sync of %s ended (%v): banger starts it again; %s has its log", m.Host, err, fsLog(v, i))
			s.log.Warn("synced mount lost", "vm", v.Name, "host", m.Host, "guest", m.Guest, "err", err)
			if !s.setMountState(ctx, v, i, 0, msg) {
				return // the VM is gone
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
		}
	}()
}

// errSyncReady wraps how a session that had become ready ended.
var errSyncReady = errors.New("after the initial sync")

// setMountState records mount i's helper and error, and reports whether
// the VM still runs (as v, not a later one of the same name).
func (s *Service) setMountState(ctx context.Context, v api.VM, i, pid int, msg string) bool {
	unlock := s.vmLock(v.Name)
	defer unlock()
	cur, err := s.store.VM(context.Background(), v.Name)
	if ctx.Err() != nil || err != nil || cur.ID != v.ID || i >= len(cur.Mounts) || !State(cur.State).Live() {
		return false
	}
	cur.Mounts[i].PID, cur.Mounts[i].Error = pid, msg
	s.store.SetVMMounts(context.Background(), cur.Name, cur.Mounts)
	return true
}

// stopSyncs ends v's syncs (their helpers end with their streams;
// stopMounts kills any left).
func (s *Service) stopSyncs(v api.VM) {
	s.syncs.mu.Lock()
	defer s.syncs.mu.Unlock()
	for i := range v.Mounts {
		if c := s.syncs.runs[fsMarker(v, i)]; c != nil {
			c()
			delete(s.syncs.runs, fsMarker(v, i))
		}
	}
}

// syncSession is one session of mount i: an agent stream to the guest,
// `bangerd filesync` as the mount's owner, and the relay between them,
// until one side ends or ctx is done.
func (s *Service) syncSession(ctx context.Context, v api.VM, i int, onReady func(pid int, stats string)) error {
	m := v.Mounts[i]
	exe, err := syncHelper()
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, s.readyTimeout())
	sess, err := s.agentSession(actx, v)
	cancel()
	if err != nil {
		return fmt.Errorf("no agent: %w", err)
	}
	st, err := sess.Open(ctx, vsockagent.Request{Op: "filesync", Path: m.Guest})
	if err != nil {
		return fmt.Errorf("opening the agent's sync: %w", err)
	}
	defer st.Close()
	// The helper's ends (its stream, its state file, its stdout and
	// stderr) are closed here once it has them, or on the way out.
	var ends []*os.File
	closeEnds := func() {
		for _, f := range ends {
			f.Close()
		}
		ends = nil
	}
	defer closeEnds()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	theirs := os.NewFile(uintptr(fds[1]), "sync")
	ends = append(ends, theirs)
	ourf := os.NewFile(uintptr(fds[0]), "sync")
	ours, err := net.FileConn(ourf)
	ourf.Close()
	if err != nil {
		return err
	}
	defer ours.Close()
	state, err := os.OpenFile(syncState(v, i), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	ends = append(ends, state)
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer outR.Close()
	ends = append(ends, outW)
	errR, errW, err := os.Pipe()
	if err != nil {
		return err
	}
	ends = append(ends, errW)
	args := []string{"filesync", "--root", m.Host}
	if m.ReadOnly {
		args = append(args, "--ro")
	}
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", virtiofs.MarkerEnv(fsMarker(v, i))}
	p, err := system.SpawnAs(exe, args, env, outW, errW, []*os.File{theirs, state}, m.UID, m.GID, GroupsOf(m.UID), system.WithStartHook(s.inCgroup(v)))
	closeEnds()
	if err != nil {
		errR.Close()
		return err
	}
	// The relay: either direction ending ends the session.
	go func() { io.Copy(ours, st); ours.(*net.UnixConn).CloseWrite() }()
	go func() { io.Copy(st, ours); st.CloseWrite() }()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			p.Signal(unix.SIGTERM)
		case <-stop:
		}
	}()
	var lastErr string
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		defer errR.Close()
		lf, _ := os.OpenFile(fsLog(v, i), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if lf != nil {
			defer lf.Close()
		}
		sc := bufio.NewScanner(errR)
		for sc.Scan() {
			line := sc.Text()
			if lf != nil {
				fmt.Fprintf(lf, "%s %s\n", time.Now().Format(time.RFC3339), line)
			}
			if e, ok := strings.CutPrefix(line, "error: "); ok {
				lastErr = e
			} else {
				s.log.Info("sync", "vm", v.Name, "guest", m.Guest, "msg", line)
			}
		}
	}()
	wasReady := false
	sc := bufio.NewScanner(outR)
	for sc.Scan() {
		if stats, ok := strings.CutPrefix(sc.Text(), "ready "); ok && !wasReady {
			wasReady = true
			onReady(p.Pid, stats)
		}
	}
	ps, _ := p.Wait()
	<-logDone
	err = errors.New(lastErr)
	if lastErr == "" {
		err = fmt.Errorf("bangerd filesync %v", ps)
	}
	if wasReady {
		err = fmt.Errorf("%w: %w", errSyncReady, err)
	}
	return err
}
