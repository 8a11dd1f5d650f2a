package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/vsockagent"
)

// ErrAgent means a VM's agent could not be reached.
var ErrAgent = errors.New("guest agent unavailable")

// agentRuntime holds one agent session per running VM; every CLI
// request to that VM becomes a stream on it.
type agentRuntime struct {
	mu       sync.Mutex
	sessions map[string]*vsockagent.Session // by VM id
	// dialing holds a VM's connection attempt: a lock a waiter can give
	// up on when its context ends.
	dialing map[string]chan struct{}
}

// agentSession returns the VM's agent session, connecting when there is
// none (or the last one ended).
func (s *Service) agentSession(ctx context.Context, v api.VM) (*vsockagent.Session, error) {
	if !State(v.State).Live() {
		return nil, fmt.Errorf("%w: VM %q is %s: start it with `banger vm start %s`", api.ErrConflict, v.Name, v.State, v.Name)
	}
	if State(v.State) == Paused {
		return nil, fmt.Errorf("%w: VM %q is paused: resume it with `banger vm resume %s`", api.ErrConflict, v.Name, v.Name)
	}
	s.agents.mu.Lock()
	if s.agents.sessions == nil {
		s.agents.sessions = map[string]*vsockagent.Session{}
	}
	if s.agents.dialing == nil {
		// closeAgents may have made sessions alone.
		s.agents.dialing = map[string]chan struct{}{}
	}
	dl := s.agents.dialing[v.ID]
	if dl == nil {
		dl = make(chan struct{}, 1)
		s.agents.dialing[v.ID] = dl
	}
	s.agents.mu.Unlock()
	select { // one connection attempt per VM at a time
	case dl <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: VM %q: waiting for another connection to its agent: %w", ErrAgent, v.Name, context.Cause(ctx))
	}
	defer func() { <-dl }()
	s.agents.mu.Lock()
	sess := s.agents.sessions[v.ID]
	s.agents.mu.Unlock()
	if sess != nil {
		select {
		case <-sess.Done():
		default:
			return sess, nil
		}
	}
	sess, err := s.connectAgent(ctx, v)
	if err != nil {
		return nil, err
	}
	s.agents.mu.Lock()
	s.agents.sessions[v.ID] = sess
	s.agents.mu.Unlock()
	return sess, nil
}

// dropAgent forgets (and closes) a VM's session when the VM stops.
func (s *Service) dropAgent(id string) {
	s.agents.mu.Lock()
	sess := s.agents.sessions[id]
	delete(s.agents.sessions, id)
	s.agents.mu.Unlock()
	if sess != nil {
		sess.Close()
	}
}

// closeAgents closes every agent session (the VMs run on): at shutdown,
// so nothing waits on a guest.
func (s *Service) closeAgents() {
	s.agents.mu.Lock()
	sessions := s.agents.sessions
	s.agents.sessions = map[string]*vsockagent.Session{}
	s.agents.mu.Unlock()
	for _, sess := range sessions {
		sess.Close()
	}
}

// agentPaused lifts the stall bound of the VM's agent session while the
// daemon keeps the guest frozen (a pause, a snapshot), and puts it back
// after: a frozen guest reads nothing, and must find its streams intact
// when it runs again.
func (s *Service) agentPaused(id string, paused bool) {
	s.agents.mu.Lock()
	sess := s.agents.sessions[id]
	s.agents.mu.Unlock()
	if sess == nil {
		return
	}
	if paused {
		sess.SetStallTimeout(0)
	} else {
		sess.SetStallTimeout(vsockagent.StallTimeout)
	}
}

// connectAgent dials the VM's agent channel and greets the agent. The
// channel is the VMM's handle when the daemon started the VM, else the
// socket in the VM's directory (after a daemon restart).
func (s *Service) connectAgent(ctx context.Context, v api.VM) (*vsockagent.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var conn net.Conn
	var err error
	for {
		if m := s.machine(v.ID); m != nil {
			conn, err = m.DialAgent(ctx, vsockagent.VsockPort)
		} else if _, b, berr := s.backends.Pick(v.VMM); berr != nil {
			return nil, fmt.Errorf("%w: VM %q: %v", ErrAgent, v.Name, berr)
		} else {
			conn, err = b.DialAgent(ctx, v.Dir)
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond) // the guest is not listening yet
	}
	if err != nil {
		return nil, fmt.Errorf("%w: VM %q: connecting: %v", ErrAgent, v.Name, err)
	}
	type result struct {
		s   *vsockagent.Session
		err error
	}
	res := make(chan result, 1)
	go func() {
		s, err := vsockagent.Client(vsockagent.NewChannel(conn), vsockagent.Hello{}, conn)
		res <- result{s, err}
	}()
	select {
	case r := <-res:
		if r.err != nil {
			conn.Close()
			return nil, fmt.Errorf("%w: VM %q: %v", ErrAgent, v.Name, r.err)
		}
		s.log.Debug("agent session", "vm", v.Name, "agent", r.s.Peer().Agent)
		return r.s, nil
	case <-ctx.Done():
		conn.Close()
		return nil, fmt.Errorf("%w: VM %q's agent does not answer (an image pulled by an older banger has an older agent: pull it again); `banger vm logs %s` shows the console", ErrAgent, v.Name, v.Name)
	}
}

// Agent is the agent session of the running VM name: every request to
// the VM is a stream on it. It connects when there is none (or the last
// one ended).
func (s *Service) Agent(ctx context.Context, c Caller, name string) (*vsockagent.Session, error) {
	v, err := s.lookup(ctx, c, name)
	if err != nil {
		return nil, err
	}
	return s.agentSession(ctx, v)
}

// ServeRelay serves an agent connection from a client (the CLI's
// upgraded connection: ch, closed by closer) by relaying each stream it
// opens to a stream of the VM's session back, until either ends.
func ServeRelay(ch *vsockagent.Channel, back *vsockagent.Session, closer io.Closer) {
	// No stall bound towards the client: its process may be suspended
	// (Ctrl-Z) for as long as its user likes. A client that stops
	// reading holds back only its own streams, at most MaxStreams of
	// them: the session's read loop never waits on a write.
	ch.SetStallTimeout(0)
	// The relays' streams to the VM end with this connection.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	front, err := vsockagent.Server(ch, back.Peer(), func(st *vsockagent.Stream) { relay(ctx, st, back) }, closer)
	if err != nil {
		return
	}
	select {
	case <-front.Done():
	case <-back.Done():
		front.Close()
	}
}

// relay carries one CLI stream to a new stream on the VM's session:
// input one way, output and stderr the other, terminal sizes and
// signals along, and the exit status back. Flow control holds end to
// end: each side reads only as fast as the other writes.
func relay(ctx context.Context, front *vsockagent.Stream, s *vsockagent.Session) {
	req := front.Req
	req.VM = ""
	back, err := s.Open(ctx, req)
	if err != nil {
		front.Fail(err)
		return
	}
	if req.WantsStarted() {
		// The pid before any output, as the agent sent it; an EXIT
		// first (a detached command that does not exist) has none.
		sctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-front.Done():
				cancel()
			case <-sctx.Done():
			}
		}()
		pid, err := back.Started(sctx)
		cancel()
		if err == nil && pid > 0 {
			front.SendStarted(pid)
		}
	}
	go func() {
		vsockagent.Copy(back, front)
		back.CloseWrite()
	}()
	var outputs sync.WaitGroup
	outputs.Add(2)
	go func() { defer outputs.Done(); vsockagent.Copy(front, back); front.CloseWrite() }()
	go func() { defer outputs.Done(); io.Copy(front.StderrWriter(), back.Stderr()); front.CloseStderr() }()
	go func() {
		for {
			select {
			case w := <-front.Resizes():
				back.Resize(w)
			case sig := <-front.Signals():
				back.Signal(sig)
			case <-front.Done():
				back.Close()
				return
			case <-back.Done():
				return
			}
		}
	}()
	e, err := back.Wait(context.Background())
	outputs.Wait()
	if err != nil {
		front.Fail(err)
		return
	}
	front.SendExit(e)
}

// agentPowerOff asks the guest to sync and power off through its agent.
func (s *Service) agentPowerOff(ctx context.Context, v api.VM) error {
	return s.agentOp(ctx, v, "poweroff")
}

// agentOp runs an operation without input or output (poweroff,
// release) on the VM's agent and waits for its status, at most 3 s.
func (s *Service) agentOp(ctx context.Context, v api.VM, op string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return s.agentCall(ctx, v, op, nil)
}

// agentCall runs op on the VM's agent with body, when not nil, sent as
// JSON on the stream, and waits for its status until ctx ends.
func (s *Service) agentCall(ctx context.Context, v api.VM, op string, body any) error {
	sess, err := s.agentSession(ctx, v)
	if err != nil {
		return err
	}
	st, err := sess.Open(ctx, vsockagent.Request{Op: op})
	if err != nil {
		return err
	}
	if body != nil {
		if err := json.NewEncoder(st).Encode(body); err != nil {
			st.Close()
			return fmt.Errorf("sending the %s request: %w", op, err)
		}
	}
	st.CloseWrite()
	e, err := st.Wait(ctx)
	if err == nil && e.Code != 0 {
		err = errors.New(e.Error)
	}
	return err
}
