package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/vm"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
	"banger/internal/vsockagent"
)

// errAgent means a VM's agent could not be reached.
var errAgent = errors.New("guest agent unavailable")

// agentRuntime holds one agent session per running VM; every CLI
// request to that VM becomes a stream on it.
type agentRuntime struct {
	mu       sync.Mutex
	sessions map[string]*vsockagent.Session // by VM id
	// dialing holds a VM's connection attempt: a lock a waiter can give
	// up on when its context ends.
	dialing map[string]chan struct{}
}

// AgentUpgrade is the Upgrade token of the CLI's agent connections.
const AgentUpgrade = "banger-agent/1"

// agentSession returns the VM's agent session, connecting when there is
// none (or the last one ended).
func (d *Daemon) agentSession(ctx context.Context, v api.VM) (*vsockagent.Session, error) {
	if !vm.State(v.State).Live() {
		return nil, fmt.Errorf("%w: VM %q is %s: start it with `banger vm start %s`", errConflict, v.Name, v.State, v.Name)
	}
	if vm.State(v.State) == vm.Paused {
		return nil, fmt.Errorf("%w: VM %q is paused: resume it with `banger vm resume %s`", errConflict, v.Name, v.Name)
	}
	d.agents.mu.Lock()
	if d.agents.sessions == nil {
		d.agents.sessions, d.agents.dialing = map[string]*vsockagent.Session{}, map[string]chan struct{}{}
	}
	dl := d.agents.dialing[v.ID]
	if dl == nil {
		dl = make(chan struct{}, 1)
		d.agents.dialing[v.ID] = dl
	}
	d.agents.mu.Unlock()
	select { // one connection attempt per VM at a time
	case dl <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: VM %q: waiting for another connection to its agent: %w", errAgent, v.Name, context.Cause(ctx))
	}
	defer func() { <-dl }()
	d.agents.mu.Lock()
	s := d.agents.sessions[v.ID]
	d.agents.mu.Unlock()
	if s != nil {
		select {
		case <-s.Done():
		default:
			return s, nil
		}
	}
	s, err := d.connectAgent(ctx, v)
	if err != nil {
		return nil, err
	}
	d.agents.mu.Lock()
	d.agents.sessions[v.ID] = s
	d.agents.mu.Unlock()
	return s, nil
}

// dropAgent forgets (and closes) a VM's session when the VM stops.
func (d *Daemon) dropAgent(id string) {
	d.agents.mu.Lock()
	s := d.agents.sessions[id]
	delete(d.agents.sessions, id)
	d.agents.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

// closeAgents closes every agent session (the VMs run on): at shutdown,
// so nothing waits on a guest.
func (d *Daemon) closeAgents() {
	d.agents.mu.Lock()
	sessions := d.agents.sessions
	d.agents.sessions = map[string]*vsockagent.Session{}
	d.agents.mu.Unlock()
	for _, s := range sessions {
		s.Close()
	}
}

// agentPaused lifts the stall bound of the VM's agent session while the
// daemon keeps the guest frozen (a pause, a snapshot), and puts it back
// after: a frozen guest reads nothing, and must find its streams intact
// when it runs again.
func (d *Daemon) agentPaused(id string, paused bool) {
	d.agents.mu.Lock()
	s := d.agents.sessions[id]
	d.agents.mu.Unlock()
	if s == nil {
		return
	}
	if paused {
		s.SetStallTimeout(0)
	} else {
		s.SetStallTimeout(vsockagent.StallTimeout)
	}
}

// connectAgent dials the VM's agent channel and greets the agent. The
// channel is the VMM's handle when the daemon started the VM, else the
// socket in the VM's directory (after a daemon restart).
func (d *Daemon) connectAgent(ctx context.Context, v api.VM) (*vsockagent.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var conn net.Conn
	var err error
	for {
		if m := d.machine(v.ID); m != nil {
			conn, err = m.DialAgent(ctx, vsockagent.VsockPort)
		} else if v.VMM == "firecracker" {
			conn, err = firecracker.DialVsock(ctx, filepath.Join(v.Dir, firecracker.VsockSocket), vsockagent.VsockPort)
		} else {
			var dl net.Dialer
			conn, err = dl.DialContext(ctx, "unix", filepath.Join(v.Dir, qemu.AgentSocket))
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond) // the guest is not listening yet
	}
	if err != nil {
		return nil, fmt.Errorf("%w: VM %q: connecting: %v", errAgent, v.Name, err)
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
			return nil, fmt.Errorf("%w: VM %q: %v", errAgent, v.Name, r.err)
		}
		d.log.Debug("agent session", "vm", v.Name, "agent", r.s.Peer().Agent)
		return r.s, nil
	case <-ctx.Done():
		conn.Close()
		return nil, fmt.Errorf("%w: VM %q's agent does not answer (an image pulled by an older banger has an older agent: pull it again); `banger vm logs %s` shows the console", errAgent, v.Name, v.Name)
	}
}

// handleAgent upgrades the connection to the agent protocol: the CLI
// opens streams (exec, cp, ports, forwarded connections) and each is
// relayed to a stream of the VM's own agent session.
func (d *Daemon) handleAgent(w http.ResponseWriter, r *http.Request) error {
	if r.Header.Get("Upgrade") != AgentUpgrade {
		return fmt.Errorf("%w: this endpoint speaks %s (Connection: Upgrade)", errInvalid, AgentUpgrade)
	}
	v, err := d.store.VM(r.Context(), r.PathValue("name"))
	if err != nil {
		return vmHint(err)
	}
	back, err := d.agentSession(r.Context(), v)
	if err != nil {
		return err
	}
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", AgentUpgrade)
	if err := buf.Flush(); err != nil {
		return nil
	}
	ch := vsockagent.NewChannelReader(buf.Reader, conn)
	// No stall bound towards the CLI: its process may be suspended
	// (Ctrl-Z) for as long as its user likes. A CLI that stops reading
	// holds back only its own streams, at most MaxStreams of them: the
	// session's read loop never waits on a write.
	ch.SetStallTimeout(0)
	// The relays' streams to the VM end with this connection.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	front, err := vsockagent.Server(ch, back.Peer(), func(st *vsockagent.Stream) { relay(ctx, st, back) }, conn)
	if err != nil {
		return nil
	}
	select {
	case <-front.Done():
	case <-back.Done():
		front.Close()
	}
	return nil
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
func (d *Daemon) agentPowerOff(ctx context.Context, v api.VM) error {
	return d.agentOp(ctx, v, "poweroff")
}

// agentOp runs an operation without input or output (poweroff,
// release) on the VM's agent and waits for its status, at most 3 s.
func (d *Daemon) agentOp(ctx context.Context, v api.VM, op string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return d.agentCall(ctx, v, op, nil)
}

// agentCall runs op on the VM's agent with body, when not nil, sent as
// JSON on the stream, and waits for its status until ctx ends.
func (d *Daemon) agentCall(ctx context.Context, v api.VM, op string, body any) error {
	s, err := d.agentSession(ctx, v)
	if err != nil {
		return err
	}
	st, err := s.Open(ctx, vsockagent.Request{Op: op})
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
