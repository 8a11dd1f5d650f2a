package vsockagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"syscall"

	"golang.org/x/sys/unix"
)

// The ops on detached processes, each naming one by its pid. A pid the
// agent did not start detached (or whose exit has been forgotten) is
// ERROR no_process: the agent acts only on its own processes.

// process finds Req.PID's process, or fails st with no_process.
func (a *Agent) process(st *Stream) *proc {
	p := a.procs.get(st.Req.PID)
	if p == nil {
		st.Fail(agentErr(CodeNoProcess, "no process %d started by the agent", st.Req.PID))
	}
	return p
}

// live is process for ops that need the process running: an exited one
// (its status retained) is no_process too.
func (a *Agent) live(st *Stream) *proc {
	p := a.process(st)
	if p == nil {
		return nil
	}
	p.mu.Lock()
	exited := p.exit != nil
	p.mu.Unlock()
	if exited {
		st.Fail(agentErr(CodeNoProcess, "process %d has exited", st.Req.PID))
		return nil
	}
	return p
}

// attachOp: STARTED, then the live output and the exit; a retained exit
// is STARTED and EXIT at once.
func (a *Agent) attachOp(st *Stream) {
	p := a.process(st)
	if p == nil {
		return
	}
	at := newAttacher(st, p.info.PID)
	if e, ok := p.attach(at); !ok {
		st.SendStarted(p.info.PID)
		st.CloseWrite()
		st.CloseStderr()
		st.SendExit(e)
		return
	}
	at.serve(p)
}

// procsOp lists the live detached processes.
func (a *Agent) procsOp(st *Stream) {
	err := json.NewEncoder(st).Encode(a.procs.live())
	if err == nil {
		err = st.CloseWrite()
	}
	st.SendExit(exitFor(err))
}

// signalOp sends Req.Sig to the process (its group: see proc.signal).
func (a *Agent) signalOp(st *Stream) {
	if st.Req.Sig <= 0 || st.Req.Sig > 64 {
		st.Fail(agentErr(CodeInvalid, "signal %d is not a signal number", st.Req.Sig))
		return
	}
	p := a.live(st)
	if p == nil {
		return
	}
	if err := p.signal(syscall.Signal(st.Req.Sig)); err != nil {
		if errors.Is(err, unix.ESRCH) {
			st.Fail(agentErr(CodeNoProcess, "process %d has exited", st.Req.PID))
			return
		}
		st.Fail(fmt.Errorf("signalling process %d: %w", st.Req.PID, err))
		return
	}
	st.SendExit(Exit{})
}

// stdinOp writes the stream's input to the process's stdin (or its
// terminal) and, at the host's EOF with Req.Close, closes its stdin.
// A terminal's input cannot be closed (the terminal is also its
// output): send ^D instead; that request is ERROR invalid.
func (a *Agent) stdinOp(st *Stream) {
	p := a.live(st)
	if p == nil {
		return
	}
	var w io.Writer
	if p.ptm != nil {
		if st.Req.Close {
			st.Fail(agentErr(CodeInvalid, "process %d reads a terminal, whose input cannot be closed: send ^D (0x04)", st.Req.PID))
			return
		}
		w = p.ptm
	} else {
		p.mu.Lock()
		in := p.stdin
		p.mu.Unlock()
		if in == nil {
			st.Fail(agentErr(CodeNoStdin, "process %d has no stdin (started without one, or closed)", st.Req.PID))
			return
		}
		w = in
	}
	// A process that does not read holds back only this stream.
	_, err := Copy(w, st)
	if err == nil && st.Req.Close {
		p.mu.Lock()
		if p.stdin != nil {
			err = p.stdin.Close()
			p.stdin = nil
		}
		p.mu.Unlock()
	}
	if errors.Is(err, syscall.EPIPE) {
		err = fmt.Errorf("process %d closed its stdin", st.Req.PID)
	}
	st.SendExit(exitFor(err))
}

// resizeOp sets the size of the process's terminal.
func (a *Agent) resizeOp(st *Stream) {
	p := a.live(st)
	if p == nil {
		return
	}
	if p.ptm == nil {
		st.Fail(agentErr(CodeNotTTY, "process %d has no terminal", st.Req.PID))
		return
	}
	if st.Req.Rows == 0 || st.Req.Cols == 0 {
		st.Fail(agentErr(CodeInvalid, "a terminal needs rows and cols"))
		return
	}
	err := unix.IoctlSetWinsize(int(p.ptm.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: st.Req.Rows, Col: st.Req.Cols})
	st.SendExit(exitFor(err))
}
