package e2b

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"banger/internal/e2b/envd/process"
	"banger/internal/vsockagent"
)

// processService is envd's process.Process over the agent's detached
// processes: a process belongs to the agent, outlives the request that
// started it, and is named by its guest pid afterwards.
type processService struct{ s *Service }

// keepalive is the interval of keepalive events on a silent stream:
// the Keepalive-Ping-Interval header's seconds (the SDK sends 50), else
// envd's 90 s.
func keepalive(h http.Header) time.Duration {
	if n, err := strconv.Atoi(h.Get("Keepalive-Ping-Interval")); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 90 * time.Second
}

// sandboxEnv is what every command of the sandbox gets in its
// environment, as envd sets it (the sandbox's envVars are the VM's own
// environment, set at create).
func sandboxEnv(sb *sandbox, user string) []string {
	return []string{"E2B_SANDBOX=true", "E2B_SANDBOX_ID=" + sb.ID, "E2B_TEMPLATE_ID=" + sb.TemplateID, "LOGNAME=" + user}
}

// sendEvent is one event to the client.
type sendEvent func(*process.ProcessEvent) error

// pump relays a process's output, keepalives and exit as envd's events
// until the process ends (then nil), ctx ends or the client goes.
func pump(ctx context.Context, st *vsockagent.Stream, tty bool, every time.Duration, send sendEvent) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan *process.ProcessEvent, 8)
	read := func(r io.Reader, wrap func([]byte) *process.ProcessEvent_DataEvent, done chan<- struct{}) {
		defer close(done)
		for {
			buf := make([]byte, 32<<10)
			n, err := r.Read(buf)
			if n > 0 {
				ev := &process.ProcessEvent{Event: &process.ProcessEvent_Data{Data: wrap(buf[:n])}}
				select {
				case events <- ev:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	outDone, errDone := make(chan struct{}), make(chan struct{})
	if tty {
		go read(st, func(b []byte) *process.ProcessEvent_DataEvent {
			return &process.ProcessEvent_DataEvent{Output: &process.ProcessEvent_DataEvent_Pty{Pty: b}}
		}, outDone)
		close(errDone)
	} else {
		go read(st, func(b []byte) *process.ProcessEvent_DataEvent {
			return &process.ProcessEvent_DataEvent{Output: &process.ProcessEvent_DataEvent_Stdout{Stdout: b}}
		}, outDone)
		go read(st.Stderr(), func(b []byte) *process.ProcessEvent_DataEvent {
			return &process.ProcessEvent_DataEvent{Output: &process.ProcessEvent_DataEvent_Stderr{Stderr: b}}
		}, errDone)
	}
	outputs := make(chan struct{})
	go func() { <-outDone; <-errDone; close(outputs) }()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for open := true; open; {
		select {
		case ev := <-events:
			if err := send(ev); err != nil {
				return err
			}
			tick.Reset(every)
		case <-outputs:
			// Both readers are done: what they queued comes first.
			for drained := false; !drained; {
				select {
				case ev := <-events:
					if err := send(ev); err != nil {
						return err
					}
				default:
					drained = true
				}
			}
			open = false
		case <-tick.C:
			if err := send(&process.ProcessEvent{Event: &process.ProcessEvent_Keepalive{Keepalive: &process.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e, err := st.Wait(ctx)
	if err != nil {
		return err
	}
	return send(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: endEvent(e)}})
}

// endEvent is an agent's exit as envd reports a process's end: Go's
// ProcessState wording ("exit status 3", "signal: killed"), an error
// only for a failure, exit code -1 for a signal.
func endEvent(e vsockagent.Exit) *process.ProcessEvent_EndEvent {
	if e.Signal != "" {
		status := "signal: " + syscall.Signal(unix.SignalNum(e.Signal)).String()
		return &process.ProcessEvent_EndEvent{ExitCode: -1, Exited: false, Status: status, Error: &status}
	}
	status := "exit status " + strconv.Itoa(e.Code)
	end := &process.ProcessEvent_EndEvent{ExitCode: int32(e.Code), Exited: true, Status: status}
	if e.Code != 0 {
		end.Error = &status
	}
	return end
}

// timeoutOfHeader is the Connect-Timeout-Ms the client sent: envd kills
// a started process when it passes (0: never).
func timeoutOfHeader(h http.Header) int64 {
	n, _ := strconv.ParseInt(h.Get("Connect-Timeout-Ms"), 10, 64)
	if n < 0 {
		return 0
	}
	return n
}

func (p *processService) Start(ctx context.Context, req *connect.Request[process.StartRequest], stream *connect.ServerStream[process.StartResponse]) error {
	s, e := p.s, envdOf(ctx)
	user := userOf(req.Header())
	cfg := req.Msg.GetProcess()
	if cfg == nil || cfg.GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	env := sandboxEnv(e.sb, user)
	keys := make([]string, 0, len(cfg.GetEnvs()))
	for k := range cfg.GetEnvs() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+cfg.GetEnvs()[k])
	}
	areq := vsockagent.Request{Argv: append([]string{cfg.GetCmd()}, cfg.GetArgs()...), Env: env, Dir: cfg.GetCwd(), User: user,
		Tag: req.Msg.GetTag(), TimeoutMs: timeoutOfHeader(req.Header())}
	if pty := req.Msg.GetPty(); pty != nil {
		areq.TTY = true
		areq.Rows, areq.Cols = uint16(pty.GetSize().GetRows()), uint16(pty.GetSize().GetCols())
	} else if req.Msg.Stdin != nil && !req.Msg.GetStdin() {
		no := false
		areq.Stdin = &no
	}
	rt := s.runtime(e.sb.ID)
	var pid int
	var st *vsockagent.Stream
	err := s.asUser(ctx, user, func(sess *vsockagent.Session) error {
		for {
			rt.mu.Lock()
			shell := rt.shell
			rt.mu.Unlock()
			r := areq
			if r.Argv[0] == "/bin/bash" && shell == "/bin/sh" {
				r.Argv = append([]string{"/bin/sh"}, r.Argv[1:]...)
			}
			var err error
			pid, st, err = vsockagent.StartDetached(ctx, sess, r)
			if err != nil || pid != 0 {
				if err == nil && r.Argv[0] == "/bin/bash" && shell == "" {
					rt.mu.Lock()
					rt.shell = "/bin/bash"
					rt.mu.Unlock()
				}
				return err
			}
			// The program is missing (or may not run): its exit says so.
			ex, werr := st.Wait(ctx)
			st.Close()
			if werr != nil {
				return werr
			}
			if ex.Code != 127 && ex.Code != 126 {
				return connect.NewError(connect.CodeInternal, fmt.Errorf("the agent reported no pid for the process (exit %d %s)", ex.Code, ex.Error))
			}
			if r.Argv[0] == "/bin/bash" && shell == "" && ex.Code == 127 {
				// An image without bash (busybox, alpine): E2B's
				// commands run with its sh instead, as `sh -l -c`.
				rt.mu.Lock()
				rt.shell = "/bin/sh"
				rt.mu.Unlock()
				continue
			}
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("error starting process: %s", ex.Error))
		}
	})
	if err != nil {
		return rpcErr(err, user)
	}
	defer st.Close() // detaches; the process runs on
	if err := stream.Send(&process.StartResponse{Event: &process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: uint32(pid)}}}}); err != nil {
		return err
	}
	return p.streamErr(e.sb.ID, pump(ctx, st, areq.TTY, keepalive(req.Header()), func(ev *process.ProcessEvent) error {
		return stream.Send(&process.StartResponse{Event: ev})
	}), user)
}

// streamErr is how a process's stream ended early, as envd's error: a
// sandbox removed meanwhile (its timeout, a kill) says so.
func (p *processService) streamErr(id string, err error, user string) error {
	if err == nil {
		return nil
	}
	if _, ok := p.s.get(id); !ok {
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("sandbox %s was removed (its timeout passed, or it was killed) while the command ran", id))
	}
	return rpcErr(err, user)
}

// target is the sandbox's agent and the process a selector names: a
// pid, or a tag among the live processes.
func (p *processService) target(ctx context.Context, sel *process.ProcessSelector) (*vsockagent.Session, int, error) {
	sess, err := p.s.agent(ctx)
	if err != nil {
		return nil, 0, err
	}
	pid, err := pidOf(ctx, sess, sel)
	return sess, pid, err
}

// pidOf resolves a selector: a pid, or a tag among the live processes.
func pidOf(ctx context.Context, sess *vsockagent.Session, sel *process.ProcessSelector) (int, error) {
	if sel == nil {
		return 0, connect.NewError(connect.CodeInvalidArgument, errors.New("process selector is required"))
	}
	if tag, ok := sel.GetSelector().(*process.ProcessSelector_Tag); ok {
		procs, err := vsockagent.Procs(ctx, sess)
		if err != nil {
			return 0, rpcErr(err, "")
		}
		for _, pr := range procs {
			if pr.Tag == tag.Tag {
				return pr.PID, nil
			}
		}
		return 0, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with tag %s not found", tag.Tag))
	}
	return int(sel.GetPid()), nil
}

func (p *processService) Connect(ctx context.Context, req *connect.Request[process.ConnectRequest], stream *connect.ServerStream[process.ConnectResponse]) error {
	sess, pid, err := p.target(ctx, req.Msg.GetProcess())
	if err != nil {
		return err
	}
	st, err := vsockagent.Attach(ctx, sess, pid)
	if vsockagent.IsCode(err, vsockagent.CodeNoProcess) {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", pid))
	}
	if err != nil {
		return rpcErr(err, "")
	}
	defer st.Close()
	tty := false
	if procs, err := vsockagent.Procs(ctx, sess); err == nil {
		for _, pr := range procs {
			if pr.PID == pid {
				tty = pr.TTY
			}
		}
	}
	if err := stream.Send(&process.ConnectResponse{Event: &process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: uint32(pid)}}}}); err != nil {
		return err
	}
	return p.streamErr(envdOf(ctx).sb.ID, pump(ctx, st, tty, keepalive(req.Header()), func(ev *process.ProcessEvent) error {
		return stream.Send(&process.ConnectResponse{Event: ev})
	}), "")
}

func (p *processService) List(ctx context.Context, req *connect.Request[process.ListRequest]) (*connect.Response[process.ListResponse], error) {
	sess, err := p.s.agent(ctx)
	if err != nil {
		return nil, err
	}
	procs, err := vsockagent.Procs(ctx, sess)
	if err != nil {
		return nil, rpcErr(err, "")
	}
	out := &process.ListResponse{}
	for _, pr := range procs {
		cfg := &process.ProcessConfig{Envs: map[string]string{}}
		if len(pr.Argv) > 0 {
			cfg.Cmd, cfg.Args = pr.Argv[0], pr.Argv[1:]
		}
		for _, kv := range pr.Env {
			if k, v, ok := cutEnv(kv); ok {
				cfg.Envs[k] = v
			}
		}
		if pr.Dir != "" {
			dir := pr.Dir
			cfg.Cwd = &dir
		}
		info := &process.ProcessInfo{Config: cfg, Pid: uint32(pr.PID)}
		if pr.Tag != "" {
			tag := pr.Tag
			info.Tag = &tag
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], i > 0
		}
	}
	return "", "", false
}

// input writes b to pid's stdin (or terminal); closeAfter closes stdin.
func (p *processService) input(ctx context.Context, sel *process.ProcessSelector, b []byte, closeAfter bool) error {
	sess, pid, err := p.target(ctx, sel)
	if err != nil {
		return err
	}
	return rpcErr(vsockagent.SendStdin(ctx, sess, pid, bytes.NewReader(b), closeAfter), "")
}

func inputBytes(in *process.ProcessInput) []byte {
	if in == nil {
		return nil
	}
	if b := in.GetStdin(); b != nil {
		return b
	}
	return in.GetPty()
}

func (p *processService) SendInput(ctx context.Context, req *connect.Request[process.SendInputRequest]) (*connect.Response[process.SendInputResponse], error) {
	if err := p.input(ctx, req.Msg.GetProcess(), inputBytes(req.Msg.GetInput()), false); err != nil {
		return nil, err
	}
	return connect.NewResponse(&process.SendInputResponse{}), nil
}

func (p *processService) CloseStdin(ctx context.Context, req *connect.Request[process.CloseStdinRequest]) (*connect.Response[process.CloseStdinResponse], error) {
	if err := p.input(ctx, req.Msg.GetProcess(), nil, true); err != nil {
		return nil, err
	}
	return connect.NewResponse(&process.CloseStdinResponse{}), nil
}

// StreamInput takes a process (its first message) and then its input,
// in order, until the client ends the stream.
func (p *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[process.StreamInputRequest]) (*connect.Response[process.StreamInputResponse], error) {
	var sel *process.ProcessSelector
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *process.StreamInputRequest_Start:
			sel = ev.Start.GetProcess()
		case *process.StreamInputRequest_Data:
			if sel == nil {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("the input stream must start with a start event naming the process"))
			}
			if err := p.input(ctx, sel, inputBytes(ev.Data.GetInput()), false); err != nil {
				return nil, err
			}
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&process.StreamInputResponse{}), nil
}

func (p *processService) SendSignal(ctx context.Context, req *connect.Request[process.SendSignalRequest]) (*connect.Response[process.SendSignalResponse], error) {
	sig := int(req.Msg.GetSignal())
	if sig != int(syscall.SIGKILL) && sig != int(syscall.SIGTERM) {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid signal: %s", req.Msg.GetSignal()))
	}
	sess, pid, err := p.target(ctx, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := vsockagent.SignalProcess(ctx, sess, pid, sig); err != nil {
		if vsockagent.IsCode(err, vsockagent.CodeNoProcess) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", pid))
		}
		return nil, rpcErr(err, "")
	}
	return connect.NewResponse(&process.SendSignalResponse{}), nil
}

func (p *processService) Update(ctx context.Context, req *connect.Request[process.UpdateRequest]) (*connect.Response[process.UpdateResponse], error) {
	size := req.Msg.GetPty().GetSize()
	if size == nil {
		return connect.NewResponse(&process.UpdateResponse{}), nil
	}
	sess, pid, err := p.target(ctx, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := vsockagent.ResizeProcess(ctx, sess, pid, vsockagent.Winsize{Rows: uint16(size.GetRows()), Cols: uint16(size.GetCols())}); err != nil {
		return nil, rpcErr(err, "")
	}
	return connect.NewResponse(&process.UpdateResponse{}), nil
}
