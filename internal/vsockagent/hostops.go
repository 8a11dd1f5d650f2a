package vsockagent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// The host's typed API over the agent's process and file system ops
// (what E2B's envd API is translated into). Every call takes a session
// and a context; the context bounds the call, and for the calls that
// return a stream (StartDetached, Attach, ReadFile, WatchDir) it bounds
// the stream too, which ends when the context does. Failures the agent
// reports are *AgentErrors: match their codes with IsCode or errors.As.

// ErrAgentTooOld means the VM's agent does not serve the op: it was
// built before the op existed (its Hello lacks the feature).
var ErrAgentTooOld = errors.New("the VM's agent is older than this banger: recreate the VM's image")

// maxReply bounds a JSON answer read into memory (an ls of a huge
// tree is the largest).
const maxReply = 64 << 20

func need(s *Session, feature string) error {
	if !s.Supports(feature) {
		return fmt.Errorf("%w (it lacks %q)", ErrAgentTooOld, feature)
	}
	return nil
}

// call runs req with in (nil: none) as its input and returns its output
// once it exited with status 0.
func call(ctx context.Context, s *Session, feature string, req Request, in io.Reader) ([]byte, error) {
	if err := need(s, feature); err != nil {
		return nil, err
	}
	st, err := s.Open(ctx, req)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if in != nil {
		if _, err := Copy(st, in); err != nil {
			// The agent's ERROR (is_dir, no_space) ends the stream:
			// Wait has it.
			if _, werr := st.Wait(ctx); werr != nil {
				return nil, werr
			}
			return nil, fmt.Errorf("%s: sending input: %w", req.Op, err)
		}
	}
	st.CloseWrite()
	out, rerr := io.ReadAll(io.LimitReader(st, maxReply))
	e, err := st.Wait(ctx)
	if err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, rerr
	}
	if e.Code != 0 {
		return nil, fmt.Errorf("%s: %s", req.Op, e.Error)
	}
	return out, nil
}

func callJSON(ctx context.Context, s *Session, feature string, req Request, in io.Reader, v any) error {
	out, err := call(ctx, s, feature, req, in)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("%s: decoding the agent's answer: %w", req.Op, err)
	}
	return nil
}

// StartDetached runs req (an exec; Detach is set for it) as a process
// the agent owns, and returns its pid and the stream attached to it:
// the stream's output is the process's live output, and Wait its exit.
// Closing the stream (or ending ctx) only detaches. A command that does
// not exist gives pid 0 and a stream whose Wait says 127 (126: not
// executable), as a shell does.
func StartDetached(ctx context.Context, s *Session, req Request) (int, *Stream, error) {
	if err := need(s, FeatureProcs); err != nil {
		return 0, nil, err
	}
	req.Op, req.Detach = "exec", true
	return openStarted(ctx, s, req)
}

// Attach attaches to the detached process pid: its output from now on
// (none is replayed) and its exit; a process that exited within the
// retention (30 s) gives its exit at once. An unknown pid is an
// *AgentError no_process.
func Attach(ctx context.Context, s *Session, pid int) (*Stream, error) {
	if err := need(s, FeatureProcs); err != nil {
		return nil, err
	}
	_, st, err := openStarted(ctx, s, Request{Op: "attach", PID: pid})
	return st, err
}

func openStarted(ctx context.Context, s *Session, req Request) (int, *Stream, error) {
	st, err := s.Open(ctx, req)
	if err != nil {
		return 0, nil, err
	}
	st.CloseWrite()
	pid, err := st.Started(ctx)
	if err != nil {
		st.Close()
		return 0, nil, err
	}
	return pid, st, nil
}

// Procs lists the live detached processes.
func Procs(ctx context.Context, s *Session) ([]ProcInfo, error) {
	var out []ProcInfo
	err := callJSON(ctx, s, FeatureProcs, Request{Op: "procs"}, nil, &out)
	return out, err
}

// SignalProcess sends sig (a Linux signal number) to the detached
// process pid and its process group.
func SignalProcess(ctx context.Context, s *Session, pid, sig int) error {
	_, err := call(ctx, s, FeatureProcs, Request{Op: "signal", PID: pid, Sig: sig}, nil)
	return err
}

// SendStdin writes r to the detached process's stdin (or terminal) and,
// with closeAfter, closes its stdin after (not for a terminal). Pass an
// empty reader and closeAfter to only close it.
func SendStdin(ctx context.Context, s *Session, pid int, r io.Reader, closeAfter bool) error {
	_, err := call(ctx, s, FeatureProcs, Request{Op: "stdin", PID: pid, Close: closeAfter}, r)
	return err
}

// ResizeProcess sets the size of the detached process's terminal.
func ResizeProcess(ctx context.Context, s *Session, pid int, w Winsize) error {
	_, err := call(ctx, s, FeatureProcs, Request{Op: "resize", PID: pid, Rows: w.Rows, Cols: w.Cols}, nil)
	return err
}

// Stat describes path ("~" and relative paths are user's home's).
func Stat(ctx context.Context, s *Session, path, user string) (Entry, error) {
	var e Entry
	err := callJSON(ctx, s, FeatureFS, Request{Op: "stat", Path: path, User: user}, nil, &e)
	return e, err
}

// ListDir lists the directory path to depth levels (0 or 1: its
// entries).
func ListDir(ctx context.Context, s *Session, path, user string, depth int) ([]Entry, error) {
	var out []Entry
	err := callJSON(ctx, s, FeatureFS, Request{Op: "ls", Path: path, User: user, Depth: depth}, nil, &out)
	return out, err
}

// MakeDir makes path and its parents, the user's; a directory that is
// there already is an *AgentError exists.
func MakeDir(ctx context.Context, s *Session, path, user string) (Entry, error) {
	var e Entry
	err := callJSON(ctx, s, FeatureFS, Request{Op: "mkdir", Path: path, User: user}, nil, &e)
	return e, err
}

// Move renames from to to, making to's parents (the user's).
func Move(ctx context.Context, s *Session, from, to, user string) (Entry, error) {
	var e Entry
	err := callJSON(ctx, s, FeatureFS, Request{Op: "mv", Path: from, To: to, User: user}, nil, &e)
	return e, err
}

// Remove removes path and everything under it; a missing path is fine.
func Remove(ctx context.Context, s *Session, path, user string) error {
	_, err := call(ctx, s, FeatureFS, Request{Op: "rm", Path: path, User: user}, nil)
	return err
}

// WriteFile replaces path's content with r's, making the file and its
// missing parents the user's.
func WriteFile(ctx context.Context, s *Session, path, user string, r io.Reader) (Entry, error) {
	var e Entry
	err := callJSON(ctx, s, FeatureFS, Request{Op: "write", Path: path, User: user}, r, &e)
	return e, err
}

// ReadFile opens path for reading. A missing path or a directory is an
// error here, before any content; a failure later is the reader's
// error. Close the reader (or end ctx) when done.
func ReadFile(ctx context.Context, s *Session, path, user string) (io.ReadCloser, error) {
	if err := need(s, FeatureFS); err != nil {
		return nil, err
	}
	st, err := s.Open(ctx, Request{Op: "read", Path: path, User: user})
	if err != nil {
		return nil, err
	}
	st.CloseWrite()
	br := bufio.NewReaderSize(st, maxChunk)
	if _, err := br.Peek(1); err != nil && err != io.EOF {
		st.Close()
		return nil, err
	}
	return fileReader{br, st}, nil
}

type fileReader struct {
	*bufio.Reader
	st *Stream
}

func (f fileReader) Close() error { return f.st.Close() }

// Watch is a running watch of a directory (WatchDir).
type Watch struct {
	st  *Stream
	dec *json.Decoder
}

// WatchDir watches the directory path (its whole tree when recursive)
// and returns once the watch is armed: every change after it is
// reported by Next. It runs until Close or ctx ends.
func WatchDir(ctx context.Context, s *Session, path, user string, recursive bool) (*Watch, error) {
	if err := need(s, FeatureFS); err != nil {
		return nil, err
	}
	st, err := s.Open(ctx, Request{Op: "watch", Path: path, User: user, Recursive: recursive})
	if err != nil {
		return nil, err
	}
	st.CloseWrite()
	w := &Watch{st: st, dec: json.NewDecoder(st)}
	ev, err := w.Next()
	if err == nil && ev.Op != "start" {
		err = fmt.Errorf("watch: the agent sent %q before the watch started", ev.Op)
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	return w, nil
}

// Next returns the next change: Op is create, write, remove, rename,
// chmod, or overflow (the kernel dropped events).
func (w *Watch) Next() (WatchEvent, error) {
	var ev WatchEvent
	if err := w.dec.Decode(&ev); err != nil {
		if err == io.EOF {
			if _, werr := w.st.Wait(context.Background()); werr != nil {
				err = werr
			}
		}
		return WatchEvent{}, err
	}
	return ev, nil
}

// Close ends the watch.
func (w *Watch) Close() error { return w.st.Close() }

// GetMetrics reads the guest's resource use (it takes about 100 ms: the
// CPU use is measured over that time).
func GetMetrics(ctx context.Context, s *Session) (Metrics, error) {
	var m Metrics
	err := callJSON(ctx, s, FeatureFS, Request{Op: "metrics"}, nil, &m)
	return m, err
}

// EnsureUser makes sure the account user exists, with its home (home,
// "" for /home/USER), and describes it.
func EnsureUser(ctx context.Context, s *Session, user, home string) (UserInfo, error) {
	var u UserInfo
	err := callJSON(ctx, s, FeatureFS, Request{Op: "ensure_user", User: user, Home: home}, nil, &u)
	return u, err
}
