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
// queue of what it sends (this file), and how it applies what it
// receives (apply.go).
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
// queue is empty) or the stream fails. The queue is unbounded so that
// the receiver never blocks on it: both sides always read.
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
	// Exactly e.Size bytes, whatever happens to the file meanwhile: what
	// a failed or short read leaves is zeros (the change sends the file
	// again). A small file goes out with its header in one write.
	content := io.LimitReader(io.MultiReader(readOrEOF{f}, zeros{}), e.Size)
	if int64(len(hdr))+e.Size <= int64(len(buf)) {
		n := copy(buf, hdr)
		io.ReadFull(content, buf[n:n+int(e.Size)])
		_, err = p.w.Write(buf[:n+int(e.Size)])
		return err
	}
	if _, err := p.w.Write(hdr); err != nil {
		return err
	}
	_, err = io.CopyBuffer(p.w, content, buf)
	return err
}

// readOrEOF ends a file's content at its first read error, so that the
// zeros after it make up the size that was announced.
type readOrEOF struct{ f *os.File }

func (r readOrEOF) Read(b []byte) (int, error) {
	n, err := r.f.Read(b)
	if err != nil {
		err = io.EOF
	}
	return n, err
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
func (p *peer) dropSeen(rel string) { dropUnder(p.seen, rel) }

// dropBase drops rel and all under it from the base (mu held).
func (p *peer) dropBase(rel string) {
	if dropUnder(p.base, rel) {
		p.dirty = true
	}
}

// dropUnder deletes rel and the paths under it from m, and reports
// whether there were any.
func dropUnder(m map[string]Entry, rel string) bool {
	found := false
	for k := range m {
		if under(k, rel) {
			delete(m, k)
			found = true
		}
	}
	return found
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
