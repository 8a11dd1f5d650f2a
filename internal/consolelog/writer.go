// Package consolelog keeps a VM's serial console on disk within a size
// cap, and reads it back.
//
// The writing side: a VMM writes the guest's console into a pipe; the
// reader of that pipe (Drain, run by the `bangerd console-log` helper
// process, see HelperMain, so the log outlives the daemon like the VMM
// does) appends to the log file, and when it holds half the cap renames
// it to the log's name plus ".1" (replacing the older half) and starts a
// new one. The two files together never exceed the cap, whatever the
// guest writes: a guest cannot fill the host disk through its console.
//
// The reading side: Tail (the last bytes across both files), Follower
// (everything from a position on, across rotations, like `tail -F`) and
// Scanner (a needle found in a stream read piece by piece), so nobody
// re-reads a log to find what is new in it.
//
// It does not start VMMs or decide where logs live; callers pass paths.
package consolelog

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// DefaultMax is the cap on a console log when none is configured: the
// current file and its rotated half together.
const DefaultMax = 4 << 20

// MinMax is the smallest cap accepted: each half holds at least a few
// screens of boot messages.
const MinMax = 64 << 10

// Rotated is the suffix of a log's older half.
const Rotated = ".1"

// Writer appends to a console log, rotating it so the log and its
// rotated half stay within the cap. One process writes a log; a Writer
// is not safe for concurrent use.
type Writer struct {
	path string
	half int64
	f    *os.File // nil until (re)opened
	size int64    // bytes in f
}

// Open opens the log at path for appending, creating it (mode 0600) when
// needed; max is the cap, at least MinMax. A log already past half the
// cap (written by an older banger, uncapped, or under a larger cap)
// keeps its last half as the rotated file and starts over empty; a
// rotated half past half the cap is dropped.
func Open(path string, max int64) (*Writer, error) {
	if max < MinMax {
		return nil, fmt.Errorf("console log cap %d: use at least %d bytes", max, MinMax)
	}
	w := &Writer{path: path, half: max / 2}
	if fi, err := os.Stat(path + Rotated); err == nil && fi.Size() > w.half {
		os.Remove(path + Rotated)
	}
	if fi, err := os.Stat(path); err == nil && fi.Size() > w.half {
		if err := w.trim(fi.Size()); err != nil {
			return nil, err
		}
	}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

// trim keeps the last half of an oversized log as its rotated file (a
// new file, renamed into place) and empties the log in place. Emptying
// rather than renaming matters to a Follower positioned in it: it sees
// its file shrink and starts over from the top, instead of moving on to
// the rotated file and reading old output again.
func (w *Writer) trim(size int64) error {
	src, err := os.Open(w.path)
	if err != nil {
		return fmt.Errorf("opening oversized console log: %w", err)
	}
	defer src.Close()
	tmp := w.path + Rotated + ".tmp"
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("trimming oversized console log: %w", err)
	}
	_, err = io.Copy(dst, io.NewSectionReader(src, size-w.half, w.half))
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, w.path+Rotated)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("trimming oversized console log: %w", err)
	}
	if err := os.Truncate(w.path, 0); err != nil {
		return fmt.Errorf("trimming oversized console log: %w", err)
	}
	return nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening console log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening console log: %w", err)
	}
	w.f, w.size = f, fi.Size()
	return nil
}

// rotate renames the full log to its rotated name (replacing the older
// half) and opens a new one. Until it succeeds nothing more is written:
// the cap holds even when the directory misbehaves.
func (w *Writer) rotate() error {
	if w.f != nil {
		// ENOENT: someone removed the log; a new one is all it takes.
		if err := os.Rename(w.path, w.path+Rotated); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rotating console log: %w", err)
		}
		w.f.Close()
		w.f = nil
	}
	return w.open()
}

// Write appends p, rotating whenever the current file holds half the
// cap, so a write may span two files. On error, what was not written is
// dropped by the caller (see Drain); the next Write tries again.
func (w *Writer) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if w.f == nil || w.size >= w.half {
			if err := w.rotate(); err != nil {
				return n, err
			}
		}
		chunk := p[:min(int64(len(p)), w.half-w.size)]
		m, err := w.f.Write(chunk)
		n += m
		w.size += int64(m)
		p = p[m:]
		if err != nil {
			return n, fmt.Errorf("writing console log: %w", err)
		}
	}
	return n, nil
}

// Close closes the current file.
func (w *Writer) Close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// coalesce is how long Drain waits after a short read. QEMU writes the
// console a byte at a time; a reader woken for each byte would cost a
// read and a write per byte. Waiting a little lets bytes gather in the
// pipe (64 KiB of room, far above what an emulated serial line carries
// in that time) and delays readers of the log by as much.
const coalesce = 5 * time.Millisecond

// Drain copies r (the reading end of the console pipe) into w until r
// reaches EOF: every writing end is closed, so the VMM is gone. It
// never stops reading on a write error (a full disk, a failed
// rotation): the output is dropped instead of stalling the guest's
// console. report, when not nil, hears of the first write error after
// a success (a full disk fails every write until it is not). Drain
// returns r's error, nil at EOF; it does not close w.
func Drain(r io.Reader, w *Writer, report func(error)) error {
	buf := make([]byte, 64<<10)
	failing := false
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr == nil {
				failing = false
			} else if !failing {
				failing = true
				if report != nil {
					report(werr)
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if n < len(buf)/2 {
			time.Sleep(coalesce)
		}
	}
}

// Pipe keeps the log at path (cap max) in this process: it returns the
// writing end of a pipe for the VMM, which the caller closes once the
// VMM has its copy, and a channel closed once everything written to it
// is in the log. Output written after this process exits is lost; that
// suits tests and tools. bangerd runs the helper instead (StartHelper).
func Pipe(path string, max int64) (*os.File, <-chan struct{}, error) {
	lw, err := Open(path, max)
	if err != nil {
		return nil, nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		lw.Close()
		return nil, nil, fmt.Errorf("making the console pipe: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer lw.Close()
		defer r.Close()
		Drain(r, lw, nil)
	}()
	return w, done, nil
}
