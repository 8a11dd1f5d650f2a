package filesync

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// peer is one side of a sync: what it knows of the other side, the
// queue of what it sends, and how it applies what it receives.
type peer struct {
	root string
	host bool
	ro   bool // host: the guest is a read-only copy
	// inPlace lets new files be written at their own name: only while
	// no watcher would see them half-written (the guest's initial sync).
	inPlace atomic.Bool
	log     func(string)
	r       *bufio.Reader
	w       io.Writer

	mu       sync.Mutex
	seen     map[string]Entry    // what the other side has, as far as this side knows
	gone     map[string]int64    // when a path this side had was found gone
	inflight map[string][]*Entry // sent and not yet acknowledged; nil is an rm
	base     map[string]Entry    // what both acknowledged: the next initial sync's base
	dirty    bool                // base changed since it was saved
	stats    Stats

	qmu    sync.Mutex
	qc     *sync.Cond
	q      []item
	closed bool
}

// Stats count what a sync carried.
type Stats struct {
	Sent, Received, Removed, Conflicts int
	Bytes                              int64
}

// item is one thing for the sender: a message, or a path whose current
// entry (and content) goes out when its turn comes.
type item struct {
	m     *msg
	path  string
	force bool
}

func newPeer(rw io.ReadWriter, root string, host bool, log func(string)) *peer {
	p := &peer{root: root, host: host, log: log, r: bufio.NewReaderSize(rw, 256<<10), w: rw,
		seen: map[string]Entry{}, gone: map[string]int64{}, inflight: map[string][]*Entry{}, base: map[string]Entry{}}
	p.qc = sync.NewCond(&p.qmu)
	return p
}

func (p *peer) send(m msg) { p.push(item{m: &m}) }

func (p *peer) sendPath(rel string, force bool) { p.push(item{path: rel, force: force}) }

func (p *peer) push(it item) {
	p.qmu.Lock()
	p.q = append(p.q, it)
	p.qmu.Unlock()
	p.qc.Signal()
}

func (p *peer) stop() {
	p.qmu.Lock()
	p.closed = true
	p.qmu.Unlock()
	p.qc.Broadcast()
}

// sender writes the queue out in order until the peer stops (and the
// queue is empty) or the stream fails. The queue is unbounded so that the receiver never
// blocks on it: both sides always read.
func (p *peer) sender(errc chan<- error) {
	buf := make([]byte, 256<<10)
	for {
		p.qmu.Lock()
		for len(p.q) == 0 && !p.closed {
			p.qc.Wait()
		}
		if len(p.q) == 0 {
			p.qmu.Unlock()
			return // stopped, and all that was queued went out
		}
		it := p.q[0]
		p.q[0] = item{}
		p.q = p.q[1:]
		p.qmu.Unlock()
		var err error
		if it.m != nil {
			err = writeMsg(p.w, *it.m)
		} else {
			err = p.put(it.path, it.force, buf)
		}
		if err != nil {
			errc <- fmt.Errorf("sending to the other side: %w", err)
			return
		}
	}
}

// put sends rel as it is now: its entry and content, or an rm when it is
// gone. Unless force, nothing goes out when the other side has it.
func (p *peer) put(rel string, force bool, buf []byte) error {
	full := filepath.Join(p.root, filepath.FromSlash(rel))
	e, ok := lstat(p.root, rel)
	if ok && !force {
		// Most events are this side's own writes: settle them on the
		// lstat alone.
		p.mu.Lock()
		old, had := p.seen[rel]
		p.mu.Unlock()
		if had && unchanged(old, e) {
			return nil
		}
	}
	var f *os.File
	if ok && e.Kind == KindFile {
		var err error
		if f, err = os.OpenFile(full, os.O_RDONLY|unix.O_NOFOLLOW, 0); err != nil {
			if !os.IsNotExist(err) {
				p.log(fmt.Sprintf("cannot read %s: %v (not synced)", rel, err))
			}
			ok = false
		} else {
			defer f.Close()
			fi, err := f.Stat()
			if err == nil {
				e, ok = entryOf(p.root, rel, fi)
			}
			ok = ok && err == nil && e.Kind == KindFile
		}
	}
	if !ok {
		return p.rm(rel)
	}
	p.mu.Lock()
	old, had := p.seen[rel]
	if had && !force && unchanged(old, e) {
		p.mu.Unlock()
		return nil
	}
	p.seen[rel] = e
	delete(p.gone, rel)
	p.inflight[rel] = append(p.inflight[rel], &e)
	p.stats.Sent++
	p.stats.Bytes += e.Size
	p.mu.Unlock()
	hdr, err := frame(msg{Op: "put", E: &e})
	if err != nil {
		return err
	}
	if f == nil {
		_, err = p.w.Write(hdr)
		return err
	}
	// Exactly e.Size bytes, whatever happens to the file meanwhile (its
	// change sends it again). A small file goes out with its header in
	// one write.
	if int64(len(hdr))+e.Size <= int64(len(buf)) {
		n := copy(buf, hdr)
		got, _ := io.ReadFull(f, buf[n:n+int(e.Size)])
		clear(buf[n+got : n+int(e.Size)])
		_, err = p.w.Write(buf[:n+int(e.Size)])
		return err
	}
	if _, err := p.w.Write(hdr); err != nil {
		return err
	}
	left := e.Size
	for left > 0 {
		n, rerr := f.Read(buf[:min(int64(len(buf)), left)])
		if n > 0 {
			if _, err := p.w.Write(buf[:n]); err != nil {
				return err
			}
			left -= int64(n)
		}
		if rerr != nil {
			break
		}
	}
	if left > 0 {
		_, err := io.CopyN(p.w, zeros{}, left)
		return err
	}
	return nil
}

// rm tells the other side rel is gone, if it has it.
func (p *peer) rm(rel string) error {
	p.mu.Lock()
	if _, had := p.seen[rel]; !had {
		p.mu.Unlock()
		return nil
	}
	t := time.Now().UnixNano()
	p.dropSeen(rel)
	p.gone[rel] = t
	p.inflight[rel] = append(p.inflight[rel], nil)
	p.mu.Unlock()
	return writeMsg(p.w, msg{Op: "rm", P: rel, Time: t})
}

// dropSeen forgets rel and all under it (mu held).
func (p *peer) dropSeen(rel string) {
	for k := range p.seen {
		if under(k, rel) {
			delete(p.seen, k)
		}
	}
}

func (p *peer) dropBase(rel string) {
	for k := range p.base {
		if under(k, rel) {
			delete(p.base, k)
			p.dirty = true
		}
	}
}

// remoteWins settles a conflict: the later modification wins, the host
// on a tie. Both sides compute the same answer from the same times.
func (p *peer) remoteWins(local, remote int64) bool {
	if local != remote {
		return remote > local
	}
	return !p.host
}

func (p *peer) conflict(rel, kept string) {
	p.mu.Lock()
	p.stats.Conflicts++
	p.mu.Unlock()
	p.log(fmt.Sprintf("conflict on %s: both sides changed it; kept the %s copy (last writer wins)", rel, kept))
}

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
	body := int64(0)
	if e.Kind == KindFile {
		body = e.Size
	}
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
	if !clash && has && same(cur, e) {
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
	if now, ok := lstat(p.root, rel); ok && !clash && has && same(cur, e) {
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
	body := int64(0)
	if e.Kind == KindFile {
		body = e.Size
	}
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

// follow sends what the watcher reports, until it stops.
func (p *peer) follow(w *watcher) error {
	for batch := range w.Batches() {
		if len(batch) > 0 && batch[0] == rescan {
			batch = p.everything()
		}
		for _, rel := range batch {
			p.sendPath(rel, false)
		}
	}
	if err := w.Err(); err != nil {
		return err
	}
	return errors.New("the watcher stopped")
}

// everything is every path here or known to the other side.
func (p *peer) everything() []string {
	now, _ := Scan(p.root)
	p.mu.Lock()
	for k := range p.seen {
		now[k] = Entry{}
	}
	p.mu.Unlock()
	out := make([]string, 0, len(now))
	for k := range now {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
