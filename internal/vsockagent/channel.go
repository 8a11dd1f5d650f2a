package vsockagent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// StallTimeout is how long a write to a channel may make no progress
// before its session is failed with ErrStalled (noticed between once and
// twice this after the peer's last read). Both sides' read loops never
// wait on a write, so a live peer drains the channel at once: a write
// stuck this long means the peer stopped reading, on purpose (a hostile
// guest that pings and never reads) or because it is wedged. Either way
// the host must get its writers, and the VM's lock they may hold (a
// stop's power-off), back. 15 s is far beyond any scheduling pause of a
// loaded guest under software emulation, and short enough that a stuck
// guest is dropped before a person at `vm stop` gives up.
const StallTimeout = 15 * time.Second

// ErrStalled means the peer stopped reading the channel: a write made
// no progress for the stall timeout, and the session was dropped.
var ErrStalled = errors.New("the agent stopped reading its channel")

// errAbandoned is a write given up before it began: its context ended,
// or its stream did, while another write held the channel.
var errAbandoned = errors.New("write abandoned")

// Channel is one byte stream that carries sessions: a vsock connection
// carries one; a virtio-serial port carries one after another, as hosts
// come and go, which is why its reader and write lock outlive them.
type Channel struct {
	rw io.ReadWriter
	r  *bufio.Reader
	// wlock serialises writes. It is a channel rather than a mutex so a
	// writer waiting for it can give up (its context ended, its session
	// failed) instead of queueing behind a write a stuck peer never lets
	// finish.
	wlock chan struct{}
	// dl sets write deadlines: nil when the writer has none (a pipe, a
	// file in blocking mode), and then writes have no stall bound.
	dl deadliner

	// dmu guards stall and kicked, and orders a failing session's kick
	// before the first deadline of the next session on the channel.
	dmu    sync.Mutex
	stall  time.Duration
	kicked bool // a failed session set a past deadline to end its write
}

type deadliner interface{ SetWriteDeadline(time.Time) error }

// NewChannel wraps a byte stream. Writes are bounded by StallTimeout
// when rw has write deadlines (a net.Conn, a pollable file): see
// SetStallTimeout.
func NewChannel(rw io.ReadWriter) *Channel {
	return newChannel(rw, bufio.NewReaderSize(rw, 256<<10), rw)
}

// NewChannelReader makes a channel whose reads continue from r (which
// may already hold bytes, as after an HTTP upgrade) and whose writes go
// to w, bounded as NewChannel's are.
func NewChannelReader(r *bufio.Reader, w io.Writer) *Channel {
	return newChannel(struct {
		io.Reader
		io.Writer
	}{r, w}, r, w)
}

func newChannel(rw io.ReadWriter, r *bufio.Reader, w io.Writer) *Channel {
	ch := &Channel{rw: rw, r: r, wlock: make(chan struct{}, 1), stall: StallTimeout}
	// A file that is not pollable says so only when asked for a deadline.
	if d, ok := w.(deadliner); ok && d.SetWriteDeadline(time.Time{}) == nil {
		ch.dl = d
	}
	return ch
}

// SetStallTimeout sets how long a write may make no progress before its
// session fails with ErrStalled: StallTimeout by default, 0 for as long
// as the session lives. It applies to a write under way too, so a host
// can lift the bound while it has frozen the guest on purpose (a pause).
// A channel without write deadlines has no bound whatever this says.
func (ch *Channel) SetStallTimeout(d time.Duration) {
	ch.dmu.Lock()
	defer ch.dmu.Unlock()
	ch.stall = d
	if ch.dl == nil || ch.kicked {
		return // a kicked write belongs to a failed session: let it end
	}
	var at time.Time
	if d > 0 {
		at = time.Now().Add(d)
	}
	ch.dl.SetWriteDeadline(at)
}

// arm sets the deadline of the write s is about to make, and reports
// whether s is still live. It checks under dmu, so a session that fails
// after it has armed still kicks the write (see fail).
func (s *Session) arm() bool {
	ch := s.ch
	ch.dmu.Lock()
	defer ch.dmu.Unlock()
	select {
	case <-s.done:
		return false
	default:
	}
	if ch.dl == nil {
		return true
	}
	switch {
	case ch.stall > 0:
		ch.dl.SetWriteDeadline(time.Now().Add(ch.stall))
	case ch.kicked:
		ch.dl.SetWriteDeadline(time.Time{})
	}
	ch.kicked = false
	return true
}

// kick ends a write of s under way at once; the caller holds ch.dmu and
// has closed s.done. On a channel that outlives sessions, the next
// session must not wait for a write of this one: its host is gone.
func (ch *Channel) kick() {
	if ch.dl != nil {
		ch.dl.SetWriteDeadline(time.Now())
		ch.kicked = true
	}
}

// writeRaw writes b as one unit under the channel's lock, refusing once
// the session is over: a writer of an ended session never interleaves
// with the next session's frames. While another write holds the lock it
// waits until cancel is closed (then errAbandoned), or the session ends.
// A write that makes no progress for the stall timeout fails the
// session with ErrStalled; one that does, slowly, goes on.
func (s *Session) writeRaw(cancel <-chan struct{}, b []byte) error {
	select {
	case s.ch.wlock <- struct{}{}:
	case <-s.done:
		return s.Err()
	case <-cancel:
		return errAbandoned
	}
	defer func() { <-s.ch.wlock }()
	for {
		if !s.arm() {
			return s.Err()
		}
		n, err := s.ch.rw.Write(b)
		if err == nil {
			return nil
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			select {
			case <-s.done:
				return s.Err() // kicked: the session failed meanwhile
			default:
			}
			if n > 0 {
				b = b[n:]
				continue // the peer reads, slowly: a new deadline
			}
			s.ch.dmu.Lock()
			stall := s.ch.stall
			s.ch.dmu.Unlock()
			err = fmt.Errorf("%w: nothing written for %s, so the session is dropped (a new request reconnects)", ErrStalled, stall)
		}
		s.fail(fmt.Errorf("writing to the agent channel: %w", err))
		return s.Err()
	}
}

func (s *Session) send(cancel <-chan struct{}, t byte, id uint32, payload []byte) error {
	return s.writeRaw(cancel, AppendFrame(nil, Frame{Type: t, Stream: id, Payload: payload}))
}
