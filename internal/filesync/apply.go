package filesync

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// This file is the receiving side of a peer: applying puts and rms
// (conflicts included) and settling acknowledgements.

// receive applies what the other side sends until the stream ends;
// handle gets the messages that are not puts, rms or acks.
func (p *peer) receive(handle func(msg) error) error {
	for {
		m, err := readMsg(p.r)
		if err != nil {
			return err
		}
		switch m.Op {
		case "put":
			err = p.applyPut(*m.E)
		case "rm":
			p.applyRm(m.P, m.Time)
		case "ack":
			p.acked(m.P, m.OK)
		default:
			err = handle(m)
		}
		if err != nil {
			return err
		}
	}
}

// drain reads and drops n bytes of a put's content.
func (p *peer) drain(n int64) error {
	_, err := io.CopyN(io.Discard, p.r, n)
	return err
}

func (p *peer) ack(rel string, ok bool) { p.send(msg{Op: "ack", P: rel, OK: ok}) }

func (p *peer) applyPut(e Entry) error {
	body := e.body()
	rel := e.Path
	if err := checkRel(rel); err != nil || (e.Kind != KindFile && e.Kind != KindDir && e.Kind != KindLink) {
		p.log(fmt.Sprintf("refused a change from the other side: %v", err))
		p.ack(rel, false)
		return p.drain(body)
	}
	if p.host && p.ro {
		p.log(fmt.Sprintf("the mount is read-only: dropped the guest's change to %s", rel))
		p.ack(rel, false)
		return p.drain(body)
	}
	p.mu.Lock()
	cur, has := lstat(p.root, rel)
	old, had := p.seen[rel]
	local, clash := int64(0), false
	switch {
	case len(p.inflight[rel]) > 0:
		local, clash = old.Mtime, true
		if !had {
			local = p.gone[rel]
		}
	case has && (!had || !unchanged(old, cur)):
		local, clash = cur.Mtime, true // changed here, not yet sent
	}
	p.mu.Unlock()
	if clash {
		if !p.remoteWins(local, e.Mtime) {
			p.conflict(rel, "local")
			p.ack(rel, false)
			return p.drain(body)
		}
		p.conflict(rel, "other side's")
	}
	// Already here as sent (an echo, a retry): nothing to write.
	here := !clash && has && same(cur, e)
	if here {
		if err := p.drain(body); err != nil {
			return err
		}
	} else if err := p.write(e, cur, has); err != nil {
		if errors.Is(err, errStream) {
			return err
		}
		p.log(fmt.Sprintf("could not write %s: %v", rel, err))
		p.ack(rel, false)
		return nil
	}
	p.mu.Lock()
	if now, ok := lstat(p.root, rel); ok && here {
		p.seen[rel] = now // not rewritten: place did not run
	}
	delete(p.gone, rel)
	p.base[rel] = e
	p.dirty = true
	p.stats.Received++
	p.stats.Bytes += body
	p.mu.Unlock()
	p.ack(rel, true)
	return nil
}

// place makes a received path appear (a rename, a mkdir) and records
// it as seen in one step under mu: the sender, which compares with seen
// under mu, never takes the arrival for a change made here and echoes
// it back.
func (p *peer) place(rel string, fn func() error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := fn(); err != nil {
		return err
	}
	if now, ok := lstat(p.root, rel); ok {
		p.seen[rel] = now
	}
	return nil
}

// errStream marks a failure to read the stream itself (not the disk).
var errStream = errors.New("reading from the other side")

// write puts e in place of cur: through a temporary name in the same
// directory, so a reader never sees half a file.
func (p *peer) write(e, cur Entry, has bool) (err error) {
	body := e.body()
	defer func() {
		if err != nil && body > 0 {
			if derr := p.drain(body); derr != nil {
				err = fmt.Errorf("%w: %v", errStream, derr)
			}
		}
	}()
	rel := e.Path
	full := filepath.Join(p.root, filepath.FromSlash(rel))
	if err := parentsReal(p.root, rel); err != nil {
		return err
	}
	if has && cur.Kind != e.Kind {
		if err := os.RemoveAll(full); err != nil {
			return err
		}
		if cur.Kind == KindDir {
			p.log(fmt.Sprintf("%s: the other side made the directory a %s", rel, map[string]string{KindFile: "file", KindLink: "link"}[e.Kind]))
		}
	}
	dir := filepath.Dir(full)
	switch e.Kind {
	case KindDir:
		return p.place(rel, func() error {
			if err := os.Mkdir(full, 0o700); err != nil && !os.IsExist(err) {
				return err
			}
			return os.Chmod(full, os.FileMode(e.Mode).Perm())
		})
	case KindLink:
		tmp := filepath.Join(dir, tempPrefix+newSuffix())
		if err := os.Symlink(e.Target, tmp); err != nil {
			return err
		}
		if err := p.place(rel, func() error { return os.Rename(tmp, full) }); err != nil {
			os.Remove(tmp)
			return err
		}
		return nil
	}
	// A file goes through a temporary name, so a reader never sees half
	// of it; during the guest's initial sync (mostly new files, the
	// image's command held) a new one is written in place, in half the
	// syscalls.
	target := full
	f, err := (*os.File)(nil), errors.New("")
	if !has && p.inPlace.Load() {
		f, err = os.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	}
	if err != nil {
		if f, err = os.CreateTemp(dir, tempPrefix+"*"); err != nil {
			return err
		}
		target = f.Name()
	}
	// What was read counts, not what was written: a failed write has
	// taken its bytes from the stream all the same.
	lr := &io.LimitedReader{R: p.r, N: body}
	_, cerr := io.Copy(f, lr)
	if cerr == nil && lr.N > 0 {
		cerr = fmt.Errorf("%w: %v", errStream, io.ErrUnexpectedEOF)
	}
	body = lr.N
	if cerr == nil {
		cerr = f.Chmod(os.FileMode(e.Mode).Perm())
	}
	if err := f.Close(); cerr == nil {
		cerr = err
	}
	if cerr == nil {
		ts := []unix.Timespec{unix.NsecToTimespec(e.Mtime), unix.NsecToTimespec(e.Mtime)}
		cerr = unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if cerr == nil {
		cerr = p.place(rel, func() error {
			if target != full {
				return os.Rename(target, full)
			}
			return nil
		})
	}
	if cerr != nil {
		os.Remove(target)
		if isNoSpace(cerr) {
			cerr = fmt.Errorf("%w: the disk is full; free space and touch the file to sync it again", cerr)
		}
	}
	return cerr
}

var suffixMu sync.Mutex
var suffixN int

func newSuffix() string {
	suffixMu.Lock()
	defer suffixMu.Unlock()
	suffixN++
	return fmt.Sprintf("%d.%d", os.Getpid(), suffixN)
}

// applyRm removes rel and what is under it, except what changed here
// since the other side last had it: that is kept and sent back.
func (p *peer) applyRm(rel string, t int64) {
	if err := checkRel(rel); err != nil {
		p.log(fmt.Sprintf("refused a removal from the other side: %v", err))
		p.ack(rel, false)
		return
	}
	if p.host && p.ro {
		p.ack(rel, false)
		return
	}
	p.mu.Lock()
	if len(p.inflight[rel]) > 0 {
		old, had := p.seen[rel]
		p.mu.Unlock()
		if had && !p.remoteWins(old.Mtime, t) {
			p.conflict(rel, "local")
			p.ack(rel, false)
			return
		}
		if had {
			p.conflict(rel, "other side's (removed)")
		}
		p.mu.Lock()
	}
	p.mu.Unlock()
	kept := p.removeTree(rel, t)
	p.mu.Lock()
	if len(kept) == 0 {
		p.dropBase(rel)
	}
	p.stats.Removed++
	p.mu.Unlock()
	p.ack(rel, len(kept) == 0)
	for _, k := range kept {
		p.sendPath(k, true)
	}
}

// removeTree removes rel and, deepest first, what is under it that the
// other side had as it is: a path changed here after t, or never sent,
// stays. It returns what stayed, parents first.
func (p *peer) removeTree(rel string, t int64) []string {
	top, ok := lstat(p.root, rel)
	if !ok {
		p.mu.Lock()
		p.dropSeen(rel)
		p.mu.Unlock()
		return nil
	}
	paths := []string{rel}
	ents := map[string]Entry{rel: top}
	if top.Kind == KindDir {
		sub, _ := Scan(filepath.Join(p.root, filepath.FromSlash(rel)))
		for k, e := range sub {
			e.Path = rel + "/" + k
			ents[e.Path] = e
			paths = append(paths, e.Path)
		}
	}
	slices.Sort(paths)
	var kept []string
	stay := map[string]bool{}
	for i := len(paths) - 1; i >= 0; i-- {
		x := paths[i]
		cur := ents[x]
		p.mu.Lock()
		old, had := p.seen[x]
		p.mu.Unlock()
		keep := false
		switch {
		case stay[x]:
			keep = true // a directory with something kept in it
		case cur.Kind == KindDir:
		case !had:
			keep = cur.Mtime > t // made here after the other side removed it
		case !same(old, cur):
			keep = !p.remoteWins(cur.Mtime, t)
		}
		if !keep {
			if err := os.Remove(filepath.Join(p.root, filepath.FromSlash(x))); err != nil && !os.IsNotExist(err) {
				keep = true
			}
		}
		if keep {
			kept = append(kept, x)
			for d := parent(x); d != "" && under(d, rel); d = parent(d) {
				stay[d] = true
			}
			continue
		}
		p.mu.Lock()
		delete(p.seen, x)
		p.mu.Unlock()
	}
	slices.Reverse(kept)
	return kept
}

// acked settles the oldest unacknowledged send of rel: applied, it is
// what both have.
func (p *peer) acked(rel string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	q := p.inflight[rel]
	if len(q) == 0 {
		return
	}
	sent := q[0]
	if len(q) == 1 {
		delete(p.inflight, rel)
	} else {
		p.inflight[rel] = q[1:]
	}
	if !ok {
		return
	}
	if sent == nil {
		p.dropBase(rel)
		delete(p.gone, rel)
	} else {
		p.base[rel] = *sent
		p.dirty = true
	}
}
