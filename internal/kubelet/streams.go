package kubelet

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	utilexec "k8s.io/utils/exec"

	"banger/internal/vsockagent"
)

// The kubelet port's streams: kubectl exec, attach, logs and
// port-forward reach a pod's VM through its agent (bangerd relays the
// session), never over the VM's network.

// runningVM is the VM of the pod whose command may be reached now, or
// agent is a session with pr's VM's agent; the caller closes it.
func (p *Provider) agent(ctx context.Context, pr *podRun) (*vsockagent.Session, error) {
	s, err := p.bc.Agent(ctx, pr.vm)
	if err != nil {
		return nil, fmt.Errorf("reaching VM %s's agent: %w", pr.vm, err)
	}
	return s, nil
}

// an error kubectl shows as it is.
func (p *Provider) runningVM(namespace, name, container string) (*podRun, error) {
	pr := p.lookup(namespace, name)
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on node %s", namespace, name, p.node)
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if c := pr.pod.Spec.Containers[0].Name; container != "" && container != c {
		return nil, errdefs.NotFoundf("pod %s/%s has no container %q (its one container is %q)", namespace, name, container, c)
	}
	if !pr.vmRunning || pr.phase != corev1.PodRunning && pr.phase != corev1.PodPending {
		return nil, errdefs.InvalidInputf("pod %s/%s is not running (phase %s): its VM %s cannot run commands", namespace, name, pr.phase, pr.vm)
	}
	return pr, nil
}

// RunInContainer runs cmd in the pod's VM as its command's user, with
// its environment and directory (kubectl exec).
func (p *Provider) RunInContainer(ctx context.Context, namespace, name, container string, cmd []string, attach vkapi.AttachIO) error {
	pr, err := p.runningVM(namespace, name, container)
	if err != nil {
		return err
	}
	s, err := p.agent(ctx, pr)
	if err != nil {
		return err
	}
	defer s.Close()
	pr.mu.Lock()
	user := pr.user
	pr.mu.Unlock()
	in := attach.Stdin() != nil
	req := vsockagent.Request{Op: "exec", Argv: cmd, User: user, TTY: attach.TTY(), Stdin: &in}
	st, err := s.Open(ctx, req)
	if err != nil {
		return err
	}
	defer st.Close()
	return p.pipe(ctx, st, attach, true)
}

// pipe carries attach's streams over st until st's exit, which it
// returns as kubectl expects (a non-zero code as a CodeExitError).
func (p *Provider) pipe(ctx context.Context, st *vsockagent.Stream, attach vkapi.AttachIO, closeStdin bool) error {
	if r := attach.Resize(); r != nil {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-st.Done():
					return
				case sz, ok := <-r:
					if !ok {
						return
					}
					st.Resize(vsockagent.Winsize{Rows: sz.Height, Cols: sz.Width})
				}
			}
		}()
	}
	if in := attach.Stdin(); in != nil {
		go func() {
			vsockagent.Copy(st, in)
			if closeStdin {
				st.CloseWrite()
			}
		}()
	} else {
		st.CloseWrite()
	}
	var wg sync.WaitGroup
	if out := attach.Stdout(); out != nil {
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(out, st) }()
	} else {
		go io.Copy(io.Discard, st)
	}
	if errw := attach.Stderr(); errw != nil {
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(errw, st.Stderr()) }()
	} else {
		go io.Copy(io.Discard, st.Stderr())
	}
	e, err := st.Wait(ctx)
	wg.Wait()
	if err != nil {
		return err
	}
	if e.Code != 0 {
		msg := fmt.Sprintf("command terminated with exit code %d", e.Code)
		if e.Error != "" {
			msg += ": " + e.Error
		}
		return utilexec.CodeExitError{Err: fmt.Errorf("%s", msg), Code: e.Code}
	}
	return nil
}

// AttachToContainer attaches to the pod's running command: its output
// from now on, and its stdin when the container has one (kubectl
// attach).
func (p *Provider) AttachToContainer(ctx context.Context, namespace, name, container string, attach vkapi.AttachIO) error {
	pr, err := p.runningVM(namespace, name, container)
	if err != nil {
		return err
	}
	pr.mu.Lock()
	pid := pr.pid
	pr.mu.Unlock()
	if pid == 0 {
		return errdefs.InvalidInputf("pod %s/%s's command is not running now", namespace, name)
	}
	s, err := p.agent(ctx, pr)
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := vsockagent.Attach(ctx, s, pid)
	if err != nil {
		return err
	}
	defer st.Close()
	if in := attach.Stdin(); in != nil {
		go func() {
			vsockagent.SendStdin(ctx, s, pid, in, false)
		}()
	}
	noStdin := &attachIO{AttachIO: attach}
	return p.pipe(ctx, st, noStdin, false)
}

// attachIO hides stdin (an attach sends it with the stdin op).
type attachIO struct{ vkapi.AttachIO }

func (a *attachIO) Stdin() io.Reader { return nil }

// PortForward carries stream to port on the VM's loopback, as a pod's
// port-forward reaches localhost in the pod.
func (p *Provider) PortForward(ctx context.Context, namespace, name string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	pr, err := p.runningVM(namespace, name, "")
	if err != nil {
		return err
	}
	s, err := p.agent(ctx, pr)
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := s.Open(ctx, vsockagent.Request{Op: "dial", Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))})
	if err != nil {
		return err
	}
	defer st.Close()
	done := make(chan struct{}, 2)
	go func() { vsockagent.Copy(st, stream); st.CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(stream, st); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	e, err := st.Wait(ctx)
	if err == nil && e.Code != 0 && e.Error != "" {
		return fmt.Errorf("port %d of pod %s/%s: %s", port, namespace, name, e.Error)
	}
	return nil
}

// GetContainerLogs reads the command's output as the node kept it.
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, name, container string, opts vkapi.ContainerLogOpts) (io.ReadCloser, error) {
	pr := p.lookup(namespace, name)
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on node %s", namespace, name, p.node)
	}
	pr.mu.Lock()
	run, ended, c := pr.restarts, pr.runEnded, pr.pod.Spec.Containers[0].Name
	if pr.running == nil && pr.waiting == nil {
		// Finished: nothing more will come.
		ended = closed
	}
	pr.mu.Unlock()
	if container != "" && container != c {
		return nil, errdefs.NotFoundf("pod %s/%s has no container %q (its one container is %q)", namespace, name, container, c)
	}
	if opts.Previous {
		if run == 0 {
			return nil, errdefs.InvalidInputf("pod %s/%s's command has not been restarted: there is no previous run", namespace, name)
		}
		run--
		ended = closed
	}
	o := LogOptions{Tail: opts.Tail, Timestamps: opts.Timestamps, LimitBytes: opts.LimitBytes, Follow: opts.Follow, Since: opts.SinceTime}
	if opts.SinceSeconds > 0 {
		o.Since = time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
	}
	path := p.logPath(pr, run)
	r, w := io.Pipe()
	go func() {
		w.CloseWithError(readLog(ctx, path, o, ended, w))
	}()
	return r, nil
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// GetStatsSummary is the node's and pods' resource use, as far as this
// node measures it (the node's start time only).
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: p.node, StartTime: metav1.NewTime(p.started)}}, nil
}

// GetMetricsResource is not measured on this node.
func (p *Provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}
