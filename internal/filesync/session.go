package filesync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// HostOptions configure the host side of a sync.
type HostOptions struct {
	// ReadOnly makes the guest a read-only copy: nothing comes back.
	ReadOnly bool
	// Base is what both sides had when they last agreed (see ReadBase);
	// nil the first time.
	Base map[string]Entry
	// Save keeps the base for the next session; it is called about once
	// a second while things change, and at the end.
	Save func(map[string]Entry) error
	// Log gets a line for each conflict, refusal and error of a path.
	Log func(string)
	// Ready is called once the initial sync is done.
	Ready func(Stats)
}

// Host runs the host side of a sync of root over rw until the stream
// ends, the watcher fails or ctx is done.
func Host(ctx context.Context, rw io.ReadWriter, root string, o HostOptions) error {
	if o.Log == nil {
		o.Log = func(string) {}
	}
	w, err := newWatcher(root)
	if err != nil {
		return err
	}
	defer w.Close()
	here, err := Scan(root)
	if err != nil {
		return fmt.Errorf("reading %s: %w", root, err)
	}
	p := newPeer(rw, root, true, o.Log)
	p.ro = o.ReadOnly
	if err := writeMsg(rw, msg{Op: "hello", RO: o.ReadOnly}); err != nil {
		return fmt.Errorf("starting the sync: %w", err)
	}
	m, err := readMsg(p.r)
	if err != nil {
		return fmt.Errorf("waiting for the guest's tree: %w", err)
	}
	if m.Op == "fail" {
		return fmt.Errorf("the guest: %s", m.Text)
	}
	if m.Op != "manifest" {
		return fmt.Errorf("the guest sent %q before its tree: its agent is not a banger sync peer", m.Op)
	}
	guest := make(map[string]Entry, len(m.Es))
	for _, e := range m.Es {
		if checkRel(e.Path) == nil {
			guest[e.Path] = e
		}
	}
	p.begin(Plan(here, guest, o.Base, o.ReadOnly), here, guest)

	var once sync.Once
	handle := func(m msg) error {
		switch m.Op {
		case "mark":
			once.Do(func() {
				if o.Ready != nil {
					o.Ready(p.snapshot())
				}
			})
		case "note":
			o.Log("guest: " + m.Text)
		case "fail":
			return fmt.Errorf("the guest: %s", m.Text)
		default:
			return fmt.Errorf("the guest sent %q: its agent does not match this banger", m.Op)
		}
		return nil
	}
	errc := make(chan error, 4)
	go p.sender(errc)
	go func() { errc <- p.receive(handle) }()
	go func() { errc <- p.follow(w) }()
	done := make(chan struct{})
	saved := make(chan struct{})
	go func() {
		defer close(saved)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				p.save(o.Save)
				return
			case <-t.C:
				p.save(o.Save)
			}
		}
	}()
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.stop()
	w.Close()
	close(done)
	<-saved
	if errors.Is(err, io.EOF) {
		err = errors.New("the guest ended the sync")
	}
	return err
}

// begin carries out the initial plan: what the guest must send is asked
// for, what it must get is queued, and a mark ends the list.
func (p *peer) begin(steps []Step, here, guest map[string]Entry) {
	var want []string
	var removed []string
	p.mu.Lock()
	for _, s := range steps {
		h, inH := here[s.Path]
		if s.Conflict {
			p.stats.Conflicts++
			side := map[bool]string{true: "host", false: "guest"}[s.Action == ToGuest]
			p.log(fmt.Sprintf("conflict on %s: both sides changed it while apart; kept the %s copy (last writer wins)", s.Path, side))
		}
		switch s.Action {
		case Agreed:
			p.seen[s.Path], p.base[s.Path] = h, h
		case ToHost:
			if inH {
				p.seen[s.Path] = h // as agreed: the guest's copy replaces it
			}
			want = append(want, s.Path)
		case ToGuest:
			p.push(item{path: s.Path, force: true})
		case DelGuest:
			if !coveredBy(s.Path, removed) {
				p.seen[s.Path] = guest[s.Path]
				p.push(item{path: s.Path})
				removed = append(removed, s.Path)
			}
		case DelHost:
			if !coveredBy(s.Path, removed) {
				if err := os.RemoveAll(filepath.Join(p.root, filepath.FromSlash(s.Path))); err != nil {
					p.log(fmt.Sprintf("could not remove %s (removed in the guest): %v", s.Path, err))
				}
				removed = append(removed, s.Path)
			}
		}
	}
	p.dirty = true
	p.mu.Unlock()
	if len(want) > 0 {
		p.send(msg{Op: "want", Ps: want})
	}
	p.send(msg{Op: "mark"})
}

// coveredBy reports whether rel is under one of dirs (dirs sorted, as
// the plan's steps are).
func coveredBy(rel string, dirs []string) bool {
	return len(dirs) > 0 && under(rel, dirs[len(dirs)-1])
}

func (p *peer) snapshot() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

func (p *peer) save(save func(map[string]Entry) error) {
	if save == nil {
		return
	}
	p.mu.Lock()
	if !p.dirty {
		p.mu.Unlock()
		return
	}
	b := maps.Clone(p.base)
	p.dirty = false
	p.mu.Unlock()
	if err := save(b); err != nil {
		p.log(fmt.Sprintf("could not keep the sync's state (the next start copies more): %v", err))
	}
}

// GuestOptions configure the guest side of a sync.
type GuestOptions struct {
	// Log gets the lines the host also gets.
	Log func(string)
	// Data is where the guest keeps its copies ("" is
	// /var/lib/banger/sync): the copy of DIR is DATA/DIR, bind-mounted
	// at DIR (read-only for a read-only mount, so writes there fail
	// with EROFS while the sync keeps the copy current). Like a mount,
	// it hides what DIR held, and nothing of that reaches the host; the
	// copy outlives the session, so the next one is three-way.
	Data string
}

// Guest runs the guest side of a sync of dir over rw until the stream
// ends.
func Guest(ctx context.Context, rw io.ReadWriter, dir string, o GuestOptions) error {
	p := newPeer(rw, dir, false, nil)
	log := o.Log
	if o.Data == "" {
		o.Data = "/var/lib/banger/sync"
	}
	fail := func(err error) error {
		writeMsg(rw, msg{Op: "fail", Text: err.Error()})
		return err
	}
	m, err := readMsg(p.r)
	if err != nil {
		return err
	}
	if m.Op != "hello" {
		return fail(fmt.Errorf("the host sent %q first: it is not a banger sync peer", m.Op))
	}
	ro := m.RO
	if p.root, err = view(dir, o.Data, ro); err != nil {
		return fail(err)
	}
	p.log = func(s string) {
		if log != nil {
			log(s)
		}
		p.send(msg{Op: "note", Text: s})
	}
	here, err := Scan(p.root)
	if err != nil {
		return fail(err)
	}
	p.seen = maps.Clone(here)
	p.inPlace.Store(true)
	if err := writeMsg(rw, msg{Op: "manifest", Es: sorted(here)}); err != nil {
		return err
	}
	// The watcher starts at the host's mark, once the host's initial
	// puts are in: watching them land would cost more than the sweep
	// that then catches what changed here meanwhile.
	errc := make(chan error, 3)
	var w atomic.Pointer[watcher]
	defer func() {
		if w := w.Load(); w != nil {
			w.Close()
		}
	}()
	handle := func(m msg) error {
		switch m.Op {
		case "want":
			for _, rel := range m.Ps {
				if checkRel(rel) == nil {
					p.sendPath(rel, true)
				}
			}
		case "mark":
			p.inPlace.Store(false)
			if !ro && w.Load() == nil {
				nw, err := newWatcher(p.root)
				if err != nil {
					p.send(msg{Op: "fail", Text: err.Error()})
					return err
				}
				w.Store(nw)
				for _, rel := range p.everything() {
					p.sendPath(rel, false)
				}
				go func() { errc <- p.follow(nw) }()
			}
			p.send(msg{Op: "mark"})
		default:
			return fmt.Errorf("the host sent %q: it does not match this agent", m.Op)
		}
		return nil
	}
	go p.sender(errc)
	go func() { errc <- p.receive(handle) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.stop()
	if errors.Is(err, io.EOF) {
		err = nil // the host ended it
	}
	return err
}

var (
	boundMu sync.Mutex
	bound   = map[string]string{}
)

// view bind-mounts the copy of dir under data at dir, once per process,
// and returns the copy's directory.
func view(dir, data string, ro bool) (string, error) {
	boundMu.Lock()
	defer boundMu.Unlock()
	if c, ok := bound[dir]; ok {
		return c, nil
	}
	c := filepath.Join(data, filepath.Clean(dir))
	for _, d := range []string{c, dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", fmt.Errorf("making %s: %w", d, err)
		}
	}
	if err := unix.Mount(c, dir, "", unix.MS_BIND, ""); err != nil {
		return "", fmt.Errorf("bind-mounting the synced copy at %s: %w", dir, err)
	}
	if ro {
		if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			unix.Unmount(dir, unix.MNT_DETACH)
			return "", fmt.Errorf("making %s read-only: %w", dir, err)
		}
	}
	bound[dir] = c
	return c, nil
}

// sorted is a tree's entries by path.
func sorted(tree map[string]Entry) []Entry {
	return slices.SortedFunc(maps.Values(tree), func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
}

// ReadBase reads a base Save wrote; an empty or unreadable one is empty
// (the next sync then deletes nothing).
func ReadBase(r io.Reader) map[string]Entry {
	var es []Entry
	if err := json.NewDecoder(r).Decode(&es); err != nil {
		return nil
	}
	out := make(map[string]Entry, len(es))
	for _, e := range es {
		out[e.Path] = e
	}
	return out
}

// WriteBase replaces f's content with base.
func WriteBase(f *os.File, base map[string]Entry) error {
	b, err := json.Marshal(sorted(base))
	if err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		return err
	}
	return f.Sync()
}
