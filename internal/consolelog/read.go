package consolelog

import (
	"errors"
	"io"
	"os"
)

// Tail returns the last n bytes of the log at path: the end of its
// rotated half, then the current file. A log that does not exist is
// empty.
func Tail(path string, n int64) ([]byte, error) {
	// The current file first: should it rotate between the two opens,
	// the rotated file is the one already open, and is read once.
	cur, err := openIfExists(path)
	if err != nil {
		return nil, err
	}
	if cur != nil {
		defer cur.Close()
	}
	prev, err := openIfExists(path + Rotated)
	if err != nil {
		return nil, err
	}
	if prev != nil {
		defer prev.Close()
		if cur != nil && same(prev, cur) {
			prev = nil
		}
	}
	tail, err := lastBytes(cur, n)
	if err != nil {
		return nil, err
	}
	head, err := lastBytes(prev, n-int64(len(tail)))
	if err != nil {
		return nil, err
	}
	return append(head, tail...), nil
}

// lastBytes reads the last n bytes of f (nil: none).
func lastBytes(f *os.File, n int64) ([]byte, error) {
	if f == nil || n <= 0 {
		return nil, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	n = min(n, fi.Size())
	b := make([]byte, n)
	m, err := f.ReadAt(b, fi.Size()-n)
	if err == io.EOF {
		err = nil // it shrank meanwhile: what there was
	}
	return b[:m], err
}

func openIfExists(p string) (*os.File, error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return f, err
}

// same reports whether two open files are one file.
func same(a, b *os.File) bool {
	ai, err1 := a.Stat()
	bi, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(ai, bi)
}

// Follower reads a log from a position on, across its rotations, like
// `tail -F`: every byte once, in order, as long as it reads no more
// than half the cap behind the writer (older output is gone by then). Read
// returns io.EOF when it has caught up; later calls return what was
// written since. Not safe for concurrent use; Close it when done.
type Follower struct {
	path string
	f    *os.File // the file being read; nil until one exists
	off  int64    // f's read offset
	// old is the rotated file that was already there when a Follower
	// from the end of a log that did not exist yet was made: not news.
	old os.FileInfo
}

// atEOF, set by tests, runs between a read that met the end of a file
// and the look at which file is current: where a writer may append to
// the file and rotate it.
var atEOF func()

// Follow returns a Follower of the log at path, from the oldest byte it
// holds (fromStart) or from its current end.
func Follow(path string, fromStart bool) *Follower {
	fl := &Follower{path: path}
	if fromStart {
		return fl
	}
	if f, err := os.Open(path); err == nil {
		if off, err := f.Seek(0, io.SeekEnd); err == nil {
			fl.f, fl.off = f, off
			return fl
		}
		f.Close()
	}
	fl.old, _ = os.Stat(path + Rotated)
	return fl
}

// Read implements io.Reader; see Follower.
func (fl *Follower) Read(p []byte) (int, error) {
	for {
		if fl.f == nil {
			if fl.f = fl.first(); fl.f == nil {
				return 0, io.EOF
			}
			fl.off = 0
		}
		n, err := fl.f.Read(p)
		fl.off += int64(n)
		if n > 0 {
			return n, nil
		}
		if err != nil && err != io.EOF {
			return 0, err
		}
		// At the end of f: caught up, or f was truncated or rotated.
		if atEOF != nil {
			atEOF()
		}
		mine, err := fl.f.Stat()
		if err != nil {
			return 0, err
		}
		if cur, err := os.Stat(fl.path); err == nil && os.SameFile(cur, mine) {
			if mine.Size() >= fl.off {
				return 0, io.EOF
			}
			// Truncated (an oversized log trimmed): from the top.
			if _, err := fl.f.Seek(0, io.SeekStart); err != nil {
				return 0, err
			}
			fl.off = 0
			continue
		}
		// f is not the current file any more. It was renamed after its
		// last write and before that Stat, so one more read finds
		// whatever is left in it.
		if n, _ := fl.f.Read(p); n > 0 {
			fl.off += int64(n)
			return n, nil
		}
		next := fl.successor()
		if next == nil {
			return 0, io.EOF // mid-rotation: the new file is not there yet
		}
		fl.f.Close()
		fl.f, fl.off = next, 0
	}
}

// pair opens the rotated and the current file (nil for one missing), the
// rotated one checked again afterwards so the two are a consistent
// pair: no rotation came between the opens.
func (fl *Follower) pair() (prev, cur *os.File) {
	for range 10 {
		prev, _ = openIfExists(fl.path + Rotated)
		cur, _ = openIfExists(fl.path)
		again, err := os.Stat(fl.path + Rotated)
		switch {
		case prev == nil && err != nil:
			return prev, cur
		case prev != nil && err == nil:
			if mine, err := prev.Stat(); err == nil && os.SameFile(mine, again) {
				return prev, cur
			}
		}
		closeAll(prev, cur)
	}
	return nil, nil // rotating faster than it can be looked at: later
}

// first is the file to start with: the rotated one when it is news,
// else the current one.
func (fl *Follower) first() *os.File {
	prev, cur := fl.pair()
	if prev != nil {
		if mine, err := prev.Stat(); err == nil && (fl.old == nil || !os.SameFile(mine, fl.old)) {
			closeAll(cur)
			return prev
		}
		prev.Close()
	}
	return cur
}

// successor is the file that came after f, which is no longer current:
// the current one when f is the rotated file (or that is gone), else
// the rotated one (f was rotated twice: the one after it is rotated
// now).
func (fl *Follower) successor() *os.File {
	prev, cur := fl.pair()
	if prev != nil && !same(prev, fl.f) {
		closeAll(cur)
		return prev
	}
	closeAll(prev)
	return cur
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

// Close releases the file being read.
func (fl *Follower) Close() error {
	if fl.f == nil {
		return nil
	}
	err := fl.f.Close()
	fl.f = nil
	return err
}
