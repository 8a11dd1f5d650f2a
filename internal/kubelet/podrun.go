package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"banger/client"
	"banger/internal/api"
	"banger/internal/vsockagent"
)

// podRun is one pod on this node: its VM, the state of its one
// container, and the goroutine that drives them. Fields under mu.
type podRun struct {
	mu     sync.Mutex
	pod    *corev1.Pod
	vm     string
	nodeIP string
	adopt  bool // the VM exists already (a restart of banger-kubelet)

	phase            corev1.PodPhase
	reason, message  string
	waiting          *corev1.ContainerStateWaiting
	running          *corev1.ContainerStateRunning
	terminated, last *corev1.ContainerStateTerminated
	restarts         int32
	started          *metav1.Time
	ip               string
	image, imageID   string
	pid              int    // the command's pid in the guest, 0 when none runs
	user             string // the command's user ("" the image's)
	vmRunning        bool
	// runEnded is closed when the command's current run ends (what
	// `logs -f` waits for).
	runEnded chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine returns
}

func (p *Provider) newRun(pod *corev1.Pod, adopt bool) *podRun {
	ctx, cancel := context.WithCancel(context.Background())
	pr := &podRun{pod: pod, vm: VMName(pod.Namespace, pod.Name), nodeIP: p.nodeIP, adopt: adopt,
		phase: corev1.PodPending, runEnded: make(chan struct{}), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	if len(pod.Spec.Containers) > 0 {
		pr.image = pod.Spec.Containers[0].Image
	}
	now := metav1.Now()
	pr.started = &now
	pr.waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
	return pr
}

func (pr *podRun) uid() types.UID {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.pod.UID
}

func (pr *podRun) container() corev1.Container {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.pod.Spec.Containers[0]
}

func (pr *podRun) podCopy() *corev1.Pod {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.pod.DeepCopy()
}

// snapshot is the pod with the status this node reports.
func (pr *podRun) snapshot() *corev1.Pod {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pod := pr.pod.DeepCopy()
	st := corev1.PodStatus{Phase: pr.phase, Reason: pr.reason, Message: pr.message, StartTime: pr.started.DeepCopy(),
		QOSClass: pod.Status.QOSClass}
	if pr.nodeIP != "" {
		st.HostIP, st.HostIPs = pr.nodeIP, []corev1.HostIP{{IP: pr.nodeIP}}
	}
	if pr.ip != "" {
		st.PodIP, st.PodIPs = pr.ip, []corev1.PodIP{{IP: pr.ip}}
	}
	ready := pr.running != nil
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: *pr.started}
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, true),
		cond(corev1.PodReadyToStartContainers, pr.vmRunning),
		cond(corev1.PodInitialized, true),
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
	}
	for _, c := range pod.Spec.Containers {
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: pr.imageID, RestartCount: pr.restarts, Ready: ready,
			ContainerID: "banger://" + pr.vm}
		switch {
		case pr.running != nil:
			cs.State.Running = pr.running.DeepCopy()
		case pr.terminated != nil:
			cs.State.Terminated = pr.terminated.DeepCopy()
		case pr.waiting != nil:
			cs.State.Waiting = pr.waiting.DeepCopy()
		}
		if pr.last != nil {
			cs.LastTerminationState.Terminated = pr.last.DeepCopy()
		}
		started := pr.running != nil
		cs.Started = &started
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	pod.Status = st
	return pod
}

// set changes pr under its lock and tells Kubernetes.
func (p *Provider) set(pr *podRun, f func(pr *podRun)) {
	pr.mu.Lock()
	f(pr)
	pr.mu.Unlock()
	p.notifyPod(pr)
}

// fail ends pr in phase Failed with reason.
func (p *Provider) fail(pr *podRun, reason, msg string) {
	p.event(pr, corev1.EventTypeWarning, reason, "%s", msg)
	p.set(pr, func(pr *podRun) {
		pr.phase, pr.reason, pr.message = corev1.PodFailed, reason, msg
		pr.running = nil
		if pr.terminated == nil {
			pr.waiting = nil
			pr.terminated = &corev1.ContainerStateTerminated{ExitCode: 1, Reason: reason, Message: msg, FinishedAt: metav1.Now()}
		}
	})
}

func (p *Provider) waiting(pr *podRun, reason, msg string) {
	p.set(pr, func(pr *podRun) {
		pr.running, pr.terminated = nil, nil
		pr.waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: msg}
	})
}

// sleep waits d, or less if ctx ends (false then).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// run is pr's goroutine: the image, the VM, then the command for as
// long as the pod lives.
func (p *Provider) run(pr *podRun) {
	defer close(pr.done)
	ctx := pr.ctx
	pod := pr.podCopy()
	if why := Unsupported(pod); why != "" {
		p.fail(pr, "Unsupported", why)
		return
	}
	select {
	case <-p.netReady:
	case <-ctx.Done():
		return
	}
	if !pr.adopt {
		if !p.makeVM(ctx, pr) {
			return
		}
	}
	p.supervise(ctx, pr)
}

// makeVM pulls the image as the pod asks and makes the pod's VM (or
// forks it), retrying with back-off until it exists or the pod goes.
// No VM is left behind when the pod is deleted meanwhile.
func (p *Provider) makeVM(ctx context.Context, pr *podRun) bool {
	pod := pr.podCopy()
	if src := pod.Annotations[AnnotationForkOf]; src != "" {
		return p.forkVM(ctx, pr, src)
	}
	img, ok := p.pullImage(ctx, pr)
	if !ok {
		return false
	}
	backoff := p.backoff
	var env []string
	for {
		var err error
		if env, err = p.podEnv(ctx, pod, pod.Spec.Containers[0], ""); err == nil {
			break
		}
		if ctx.Err() != nil {
			return false
		}
		p.event(pr, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		p.waiting(pr, "CreateContainerConfigError", err.Error())
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, p.backoffMax)
	}
	req, err := CreateRequest(pod, p.node, img.Name, img.Config, p.direct, env)
	if err != nil {
		p.fail(pr, "CreateContainerConfigError", err.Error())
		return false
	}
	backoff = p.backoff
	for {
		p.event(pr, corev1.EventTypeNormal, "Creating", "Creating VM %s from image %s", req.Name, img.Name)
		// The create runs to its end even when the pod goes meanwhile:
		// its VM is then removed below, not left half made.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		v, err := p.bc.CreateVM(cctx, req, nil)
		cancel()
		if ctx.Err() != nil {
			p.removeVM(pr)
			return false
		}
		if err == nil {
			p.set(pr, func(pr *podRun) { pr.ip, pr.vmRunning = v.IP, true })
			p.event(pr, corev1.EventTypeNormal, "Created", "Created VM %s (%s, %d vCPUs, %d MiB)", v.Name, v.IP, v.VCPU, v.MemoryMiB)
			return true
		}
		if errors.Is(err, client.ErrExists) {
			if old, gerr := p.bc.VM(ctx, req.Name); gerr == nil {
				if old.Labels[LabelPodUID] == string(pod.UID) {
					// This pod's own VM, made before banger-kubelet
					// restarted while bangerd was away: adopt it.
					p.set(pr, func(pr *podRun) { pr.ip, pr.vmRunning = old.IP, old.State == "running" })
					p.log.Info("adopted a pod's VM", "vm", old.Name, "pod", podKey(pod.Namespace, pod.Name), "state", old.State)
					return true
				}
				// A VM of an earlier pod of the same name, deleted while
				// banger-kubelet was down: not this pod's.
				p.log.Info("removing a stale VM of an earlier pod of the same name", "vm", req.Name, "pod", podKey(pod.Namespace, pod.Name))
				p.bc.RemoveVM(ctx, req.Name, true)
				continue
			}
		}
		p.event(pr, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		p.waiting(pr, "CreateContainerError", err.Error())
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, p.backoffMax)
	}
}

// forkVM makes pr's VM a fork of the running pod src's (same
// namespace): it must be on this node.
func (p *Provider) forkVM(ctx context.Context, pr *podRun, src string) bool {
	pod := pr.podCopy()
	from := p.lookup(pod.Namespace, src)
	if from == nil {
		p.fail(pr, "ForkSourceElsewhere", fmt.Sprintf("pod %s/%s, which this pod forks (%s), does not run on node %s: a fork needs its source's node; set nodeName or a pod affinity to it", pod.Namespace, src, AnnotationForkOf, p.node))
		return false
	}
	from.mu.Lock()
	srcVM, running, img, user := from.vm, from.running != nil, from.image, from.user
	from.mu.Unlock()
	if !running {
		p.fail(pr, "ForkSourceNotRunning", fmt.Sprintf("pod %s/%s, which this pod forks, is not running: fork a running pod", pod.Namespace, src))
		return false
	}
	labels := map[string]string{LabelNode: p.node, LabelPodUID: string(pod.UID), LabelNamespace: pod.Namespace, LabelPod: pod.Name}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	vms, err := p.bc.ForkVM(cctx, api.ForkRequest{Source: srcVM, Name: pr.vm, Labels: labels})
	cancel()
	if ctx.Err() != nil {
		p.removeVM(pr)
		return false
	}
	if err != nil {
		p.fail(pr, "ForkFailed", fmt.Sprintf("forking pod %s/%s's VM: %v", pod.Namespace, src, err))
		return false
	}
	p.set(pr, func(pr *podRun) { pr.ip, pr.vmRunning, pr.image, pr.user = vms[0].IP, true, img, user })
	p.event(pr, corev1.EventTypeNormal, "Forked", "Forked VM %s from pod %s's (%s)", vms[0].Name, src, vms[0].IP)
	return true
}

// removeVM removes pr's VM, whatever its state (gone already is fine).
func (p *Provider) removeVM(pr *podRun) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := p.bc.RemoveVM(ctx, pr.vm, true); err != nil && !client.IsNotFound(err) {
		p.log.Warn("removing a pod's VM", "vm", pr.vm, "err", err)
	}
}

// restarts says whether policy starts the command again after it
// exited with code.
func restarts(policy corev1.RestartPolicy, code int32) bool {
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	return true
}

// supervise starts the command (or attaches to the one running: an
// adopted or forked VM), keeps its output, and acts on its end as the
// restart policy says, until the pod goes.
func (p *Provider) supervise(ctx context.Context, pr *podRun) {
	pod := pr.podCopy()
	c := pod.Spec.Containers[0]
	rec := p.loadRecord(pr)
	pr.mu.Lock()
	pr.restarts = rec.Restarts
	if pr.user == "" {
		pr.user = RunAsUser(pod, c)
	}
	pr.mu.Unlock()
	if pr.adopt && (pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed) {
		// It ended before the restart: keep what Kubernetes has.
		p.set(pr, func(pr *podRun) {
			pr.phase, pr.reason, pr.message = pod.Status.Phase, pod.Status.Reason, pod.Status.Message
			pr.ip = pod.Status.PodIP
			for _, cs := range pod.Status.ContainerStatuses {
				pr.waiting, pr.running, pr.terminated = nil, nil, cs.State.Terminated
				if pr.terminated == nil {
					pr.terminated = &corev1.ContainerStateTerminated{Reason: "Unknown", ExitCode: 255}
				}
			}
		})
		return
	}
	backoff := p.backoff
	for {
		if ctx.Err() != nil {
			return
		}
		v, err := p.vmUp(ctx, pr)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.log.Warn("pod's VM unavailable", "vm", pr.vm, "err", err)
			if client.IsNotFound(err) {
				p.fail(pr, "VMGone", fmt.Sprintf("VM %s was removed outside Kubernetes", pr.vm))
				return
			}
			p.waiting(pr, "VMUnavailable", err.Error())
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, p.backoffMax)
			continue
		}
		p.set(pr, func(pr *podRun) { pr.ip, pr.vmRunning = v.IP, true })
		ran := time.Now()
		exit, err := p.runCommand(ctx, pr, c)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The agent session broke before the exit was known: the VM
			// stopped (killed outside Kubernetes: the command died with
			// it, and the restart policy says what next), or bangerd
			// went away (the command runs on: attach again).
			p.log.Warn("lost the pod's command", "vm", pr.vm, "err", err)
			if !sleep(ctx, time.Second) {
				return
			}
			v, verr := p.bc.VM(ctx, pr.vm)
			if verr != nil || v.State == "running" {
				continue
			}
			exit = vsockagent.Exit{Code: 137, Signal: "SIGKILL", Error: fmt.Sprintf("VM %s stopped outside Kubernetes (it is %s)", pr.vm, v.State)}
			p.event(pr, corev1.EventTypeWarning, "VMStopped", "VM %s stopped outside Kubernetes (it is %s)", pr.vm, v.State)
			p.set(pr, func(pr *podRun) { pr.vmRunning = false })
		}
		code := int32(exit.Code)
		reason := "Completed"
		if code != 0 {
			reason = "Error"
		}
		msg := exit.Error
		if exit.Signal != "" && msg == "" {
			msg = "killed by " + exit.Signal
		}
		p.set(pr, func(pr *podRun) {
			var startedAt metav1.Time
			if pr.running != nil {
				startedAt = pr.running.StartedAt
			}
			pr.running, pr.waiting, pr.pid = nil, nil, 0
			pr.terminated = &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason, Message: msg, StartedAt: startedAt,
				FinishedAt: metav1.Now(), ContainerID: "banger://" + pr.vm}
			close(pr.runEnded)
			pr.runEnded = make(chan struct{})
		})
		pod = pr.podCopy()
		if !restarts(pod.Spec.RestartPolicy, code) {
			phase := corev1.PodSucceeded
			if code != 0 {
				phase = corev1.PodFailed
			}
			p.set(pr, func(pr *podRun) { pr.phase = phase })
			// Nothing runs in the VM any more: give its memory and CPUs
			// back, keep its disk until the pod goes.
			sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			if _, err := p.bc.VMAction(sctx, pr.vm, "stop", nil); err != nil && ctx.Err() == nil {
				p.log.Warn("stopping a finished pod's VM", "vm", pr.vm, "err", err)
			}
			cancel()
			p.set(pr, func(pr *podRun) { pr.vmRunning = false })
			return
		}
		if time.Since(ran) > 10*time.Minute {
			backoff = p.backoff
		}
		p.event(pr, corev1.EventTypeWarning, "BackOff", "Back-off %s restarting the command of VM %s (exit %d)", backoff, pr.vm, code)
		p.set(pr, func(pr *podRun) {
			pr.last, pr.terminated = pr.terminated, nil
			pr.waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting the command (exit %d)", backoff, code)}
		})
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, p.backoffMax)
		pr.mu.Lock()
		pr.restarts++
		rec.Restarts = pr.restarts
		pr.mu.Unlock()
		p.saveRecord(pr, rec)
	}
}

// vmUp is pr's VM, started when it is not running (a VM killed outside
// Kubernetes whose pod restarts).
func (p *Provider) vmUp(ctx context.Context, pr *podRun) (*api.VM, error) {
	v, err := p.bc.VM(ctx, pr.vm)
	if err != nil {
		return nil, err
	}
	if v.State == "running" {
		return v, nil
	}
	p.set(pr, func(pr *podRun) { pr.vmRunning = false })
	p.event(pr, corev1.EventTypeNormal, "Starting", "Starting VM %s (it was %s)", pr.vm, v.State)
	return p.bc.VMAction(ctx, pr.vm, "start", nil)
}

// runCommand runs the container's command once: it attaches to the
// one running in the VM (tagged MainTag) or starts it, writes its
// output to this run's log, and returns its exit. An error means the
// agent session broke (bangerd restarted, the VM died) before the exit
// was known.
func (p *Provider) runCommand(ctx context.Context, pr *podRun, c corev1.Container) (vsockagent.Exit, error) {
	s, err := p.bc.Agent(ctx, pr.vm)
	if err != nil {
		return vsockagent.Exit{}, err
	}
	defer s.Close()
	var st *vsockagent.Stream
	pid := 0
	procs, err := vsockagent.Procs(ctx, s)
	if err != nil {
		return vsockagent.Exit{}, err
	}
	for _, proc := range procs {
		if proc.Tag == MainTag {
			if st, err = vsockagent.Attach(ctx, s, proc.PID); err == nil {
				pid = proc.PID
			}
			break
		}
	}
	attached := st != nil
	if !attached {
		req, err := p.commandRequest(ctx, pr, c)
		if err != nil {
			return vsockagent.Exit{}, err
		}
		pid, st, err = vsockagent.StartDetached(ctx, s, req)
		if err != nil {
			var ae *vsockagent.AgentError
			if errors.As(err, &ae) {
				// A missing user or directory: the command cannot run.
				return vsockagent.Exit{Code: 128, Error: ae.Message}, nil
			}
			return vsockagent.Exit{}, err
		}
	}
	defer st.Close()
	pr.mu.Lock()
	restarts := pr.restarts
	pr.mu.Unlock()
	lw, err := openLog(p.logPath(pr, restarts), p.maxLog)
	if err != nil {
		return vsockagent.Exit{}, fmt.Errorf("opening the pod's log: %w", err)
	}
	defer lw.Close()
	if pid == 0 {
		// Not found or not executable: st carries 127 or 126.
		e, err := st.Wait(ctx)
		if e.Error != "" {
			lw.stream("stderr").Write([]byte(e.Error + "\n"))
		}
		return e, err
	}
	if !attached {
		p.event(pr, corev1.EventTypeNormal, "Started", "Started the command in VM %s (pid %d)", pr.vm, pid)
	}
	p.set(pr, func(pr *podRun) {
		pr.pid = pid
		started := metav1.Now()
		if attached && pr.pod.Status.ContainerStatuses != nil {
			for _, cs := range pr.pod.Status.ContainerStatuses {
				if cs.State.Running != nil {
					started = cs.State.Running.StartedAt
				}
			}
		}
		pr.waiting, pr.terminated = nil, nil
		pr.running = &corev1.ContainerStateRunning{StartedAt: started}
		pr.phase, pr.reason, pr.message = corev1.PodRunning, "", ""
	})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(lw.stream("stdout"), st) }()
	go func() { defer wg.Done(); io.Copy(lw.stream("stderr"), st.Stderr()) }()
	e, err := st.Wait(ctx)
	wg.Wait()
	return e, err
}

// commandRequest is the exec that starts the container's command: its
// argv by Kubernetes' rules over the image's, as its user, with the
// pod's addresses for the fields only known now.
func (p *Provider) commandRequest(ctx context.Context, pr *podRun, c corev1.Container) (vsockagent.Request, error) {
	v, err := p.bc.VM(ctx, pr.vm)
	if err != nil {
		return vsockagent.Request{}, err
	}
	var cfg api.ImageConfig
	if img, err := p.bc.Image(ctx, v.Image); err == nil {
		cfg = img.Config
	}
	env, err := p.podEnv(ctx, pr.podCopy(), c, v.IP)
	if err != nil {
		return vsockagent.Request{}, err
	}
	argv := expandAll(Argv(c, cfg), env)
	pr.mu.Lock()
	user := pr.user
	pr.mu.Unlock()
	if user == "" {
		user = cfg.User
	}
	stdin := c.Stdin
	return vsockagent.Request{Argv: argv, Env: env, User: user, TTY: c.TTY, Stdin: &stdin, Tag: MainTag}, nil
}

// stop ends pr: its goroutine first, then its command (SIGTERM, and
// SIGKILL with the VM after grace), then its VM.
func (p *Provider) stop(pr *podRun, grace time.Duration) error {
	pr.cancel()
	select {
	case <-pr.done:
	case <-time.After(15 * time.Minute):
		return fmt.Errorf("pod %s's VM is still being made after 15 minutes: try again", pr.vm)
	}
	pr.mu.Lock()
	pid := pr.pid
	pr.mu.Unlock()
	if pid != 0 && grace > 0 {
		p.event(pr, corev1.EventTypeNormal, "Killing", "Stopping the command in VM %s (grace %s)", pr.vm, grace)
		p.terminate(pr, pid, grace)
	}
	p.removeVM(pr)
	p.set(pr, func(pr *podRun) {
		pr.vmRunning, pr.pid = false, 0
		if pr.terminated == nil {
			var startedAt metav1.Time
			if pr.running != nil {
				startedAt = pr.running.StartedAt
			}
			pr.terminated = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "Killed", StartedAt: startedAt, FinishedAt: metav1.Now(),
				Message: "the pod was deleted"}
		}
		pr.running, pr.waiting = nil, nil
		if pr.phase == corev1.PodPending || pr.phase == corev1.PodRunning {
			pr.phase = corev1.PodFailed
			if pr.terminated.ExitCode == 0 {
				pr.phase = corev1.PodSucceeded
			}
		}
	})
	return nil
}

// terminate sends the command SIGTERM and waits up to grace for it to
// end, recording its exit.
func (p *Provider) terminate(pr *podRun, pid int, grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	s, err := p.bc.Agent(ctx, pr.vm)
	if err != nil {
		return
	}
	defer s.Close()
	st, err := vsockagent.Attach(ctx, s, pid)
	if err != nil {
		return
	}
	defer st.Close()
	go io.Copy(io.Discard, st)
	go io.Copy(io.Discard, st.Stderr())
	if err := vsockagent.SignalProcess(ctx, s, pid, 15); err != nil {
		return
	}
	e, err := st.Wait(ctx)
	if err != nil {
		return
	}
	p.set(pr, func(pr *podRun) {
		var startedAt metav1.Time
		if pr.running != nil {
			startedAt = pr.running.StartedAt
		}
		reason := "Completed"
		if e.Code != 0 {
			reason = "Error"
		}
		pr.terminated = &corev1.ContainerStateTerminated{ExitCode: int32(e.Code), Reason: reason, StartedAt: startedAt, FinishedAt: metav1.Now()}
		pr.running = nil
	})
}

// podRecord is what a pod keeps on the host between restarts of
// banger-kubelet: its restart count.
type podRecord struct {
	Restarts int32 `json:"restarts"`
}

func (p *Provider) recordPath(pr *podRun) string {
	return filepath.Join(p.podsDir(), string(pr.uid())+".json")
}

func (p *Provider) logPath(pr *podRun, run int32) string {
	return filepath.Join(p.podsDir(), fmt.Sprintf("%s.%d.log", pr.uid(), run))
}

func (p *Provider) loadRecord(pr *podRun) podRecord {
	var r podRecord
	if b, err := os.ReadFile(p.recordPath(pr)); err == nil {
		json.Unmarshal(b, &r)
	}
	return r
}

func (p *Provider) saveRecord(pr *podRun, r podRecord) {
	b, _ := json.Marshal(r)
	tmp := p.recordPath(pr) + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		os.Rename(tmp, p.recordPath(pr))
	}
}

// forget removes what the pod kept on the host (logs, record).
func (pr *podRun) forget(stateDir string) {
	files, _ := filepath.Glob(filepath.Join(stateDir, "pods", string(pr.uid())+".*"))
	for _, f := range files {
		os.Remove(f)
	}
}
