package kubelet

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"time"
)

// A container's output is kept on the host, one file per run of its
// command (the Nth restart's is NAME.N.log), in the CRI's log format:
// each line "TIME STREAM TAG TEXT" where TIME is RFC 3339 with
// nanoseconds, STREAM stdout or stderr, and TAG F for a full line or P
// for part of one (output that did not end in a newline yet). That is
// what the kubelet keeps under /var/log/pods, and it lets `kubectl logs`
// tail, filter by time and add timestamps. The output is written as it
// comes, so `logs -f` sees it at once, and it outlives the VM.

// logWriter appends a container run's output to its file. Safe for
// concurrent use (stdout and stderr write at once).
type logWriter struct {
	mu  sync.Mutex
	f   *os.File
	max int64 // past it, the file is cut to its second half
	n   int64
	now func() time.Time
}

func openLog(path string, max int64) (*logWriter, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	st, _ := f.Stat()
	return &logWriter{f: f, max: max, n: st.Size(), now: time.Now}, nil
}

func (w *logWriter) Close() error { return w.f.Close() }

// stream returns the writer of one stream ("stdout" or "stderr").
func (w *logWriter) stream(name string) io.Writer {
	return writerFunc(func(p []byte) (int, error) { return len(p), w.write(name, p) })
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func (w *logWriter) write(stream string, p []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	ts := w.now().UTC().Format(time.RFC3339Nano)
	var b bytes.Buffer
	for len(p) > 0 {
		line, rest, full := bytes.Cut(p, []byte{'\n'})
		tag := " P "
		if full {
			tag = " F "
		}
		b.WriteString(ts + " " + stream + tag)
		b.Write(line)
		b.WriteByte('\n')
		p = rest
	}
	n, err := w.f.Write(b.Bytes())
	w.n += int64(n)
	if err == nil && w.max > 0 && w.n > w.max {
		err = w.cutLocked()
	}
	return err
}

// cutLocked keeps the file's second half (from a line start): a
// command that writes without end must not fill the host's disk.
func (w *logWriter) cutLocked() error {
	b, err := os.ReadFile(w.f.Name())
	if err != nil {
		return err
	}
	keep := b[len(b)/2:]
	if i := bytes.IndexByte(keep, '\n'); i >= 0 {
		keep = keep[i+1:]
	}
	tmp := w.f.Name() + ".cut"
	if err := os.WriteFile(tmp, keep, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, w.f.Name()); err != nil {
		return err
	}
	f, err := os.OpenFile(w.f.Name(), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	w.f.Close()
	w.f, w.n = f, int64(len(keep))
	return nil
}

// LogOptions say what of a log to read (kubectl logs' flags).
type LogOptions struct {
	Tail       int       // the last lines only (0: all; -1 also all)
	Since      time.Time // lines from then on (zero: all)
	Timestamps bool      // each line with its time first
	LimitBytes int       // at most this many bytes (0: no limit)
	// Follow: keep reading what is added until ctx ends or done is
	// closed and the file was read to its end.
	Follow bool
}

// logRecord is one line of the file.
type logRecord struct {
	ts    time.Time
	tsRaw []byte
	text  []byte
	full  bool
}

func parseRecord(line []byte) (logRecord, bool) {
	// TIME STREAM TAG TEXT
	ts, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return logRecord{}, false
	}
	_, rest, ok = bytes.Cut(rest, []byte{' '})
	if !ok {
		return logRecord{}, false
	}
	tag, text, ok := bytes.Cut(rest, []byte{' '})
	if !ok {
		return logRecord{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return logRecord{}, false
	}
	return logRecord{ts: t, tsRaw: ts, text: text, full: string(tag) == "F"}, true
}

// readLog writes the log at path to w as kubectl shows it.
func readLog(ctx context.Context, path string, o LogOptions, done <-chan struct{}, w io.Writer) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if !o.Follow {
			return nil
		}
		// The container has not written yet: wait for its file.
		for err != nil && errors.Is(err, os.ErrNotExist) {
			select {
			case <-ctx.Done():
				return nil
			case <-done:
				return nil
			case <-time.After(200 * time.Millisecond):
			}
			f, err = os.Open(path)
		}
	}
	if err != nil {
		return err
	}
	defer f.Close()
	lw := &limitWriter{w: w, left: o.LimitBytes}
	emit := func(r logRecord) error {
		if !o.Since.IsZero() && r.ts.Before(o.Since) {
			return nil
		}
		var b []byte
		if o.Timestamps {
			b = append(append(b, r.tsRaw...), ' ')
		}
		b = append(b, r.text...)
		if r.full {
			b = append(b, '\n')
		}
		_, err := lw.Write(b)
		return err
	}
	br := bufio.NewReaderSize(f, 64<<10)
	var recs []logRecord
	var pending []byte
	readAvailable := func(keep bool) error {
		for {
			line, err := br.ReadBytes('\n')
			if len(line) > 0 && line[len(line)-1] == '\n' {
				line = append(pending, line[:len(line)-1]...)
				pending = nil
				r, ok := parseRecord(line)
				if ok {
					if keep {
						recs = append(recs, r)
					} else if err := emit(r); err != nil {
						return err
					}
				}
			} else if len(line) > 0 {
				pending = append(pending, line...)
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	// First what is there, tailed.
	if err := readAvailable(true); err != nil {
		return err
	}
	if o.Tail > 0 {
		full := 0
		start := len(recs)
		for start > 0 {
			if recs[start-1].full {
				if full == o.Tail {
					break
				}
				full++
			}
			start--
		}
		recs = recs[start:]
	}
	for _, r := range recs {
		if err := emit(r); err != nil {
			return ignoreLimit(err)
		}
	}
	if !o.Follow {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-done:
			// Read what the last run wrote before it ended, then stop.
			return ignoreLimit(readAvailable(false))
		case <-time.After(100 * time.Millisecond):
		}
		if err := readAvailable(false); err != nil {
			return ignoreLimit(err)
		}
		if f, ok := w.(interface{ Flush() }); ok {
			f.Flush()
		}
	}
}

var errLimit = errors.New("log byte limit reached")

func ignoreLimit(err error) error {
	if errors.Is(err, errLimit) {
		return nil
	}
	return err
}

type limitWriter struct {
	w    io.Writer
	left int // 0: no limit
	used bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.left == 0 && !l.used {
		return l.w.Write(p)
	}
	l.used = true
	if l.left <= 0 {
		return 0, errLimit
	}
	if len(p) > l.left {
		p = p[:l.left]
	}
	n, err := l.w.Write(p)
	l.left -= n
	if err == nil && l.left == 0 {
		err = errLimit
	}
	return n, err
}
