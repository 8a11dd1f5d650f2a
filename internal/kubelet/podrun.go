package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"banger/client"
	"banger/internal/api"
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
	var fresh *madeVM
	if !pr.adopt {
		var ok bool
		if fresh, ok = p.makeVM(ctx, pr); !ok {
			return
		}
	}
	p.supervise(ctx, pr, fresh)
}

// madeVM is a VM makeVM has just made, and its image's config: the
// command's first start takes them as they are instead of asking
// bangerd again (a pod's start is timed against `vm run -d`).
type madeVM struct {
	vm  *api.VM
	cfg api.ImageConfig
}

// makeVM pulls the image as the pod asks and makes the pod's VM (or
// forks it), retrying with back-off until it exists or the pod goes.
// No VM is left behind when the pod is deleted meanwhile. The VM is
// returned when it was made just now (not adopted or forked), with no
// command started in it yet.
func (p *Provider) makeVM(ctx context.Context, pr *podRun) (*madeVM, bool) {
	pod := pr.podCopy()
	if src := pod.Annotations[AnnotationForkOf]; src != "" {
		return nil, p.forkVM(ctx, pr, src)
	}
	img, ok := p.pullImage(ctx, pr)
	if !ok {
		return nil, false
	}
	backoff := p.backoff
	var env []string
	for {
		var err error
		if env, err = p.podEnv(ctx, pod, pod.Spec.Containers[0], ""); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, false
		}
		p.event(pr, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		p.waiting(pr, "CreateContainerConfigError", err.Error())
		if !sleep(ctx, backoff) {
			return nil, false
		}
		backoff = min(2*backoff, p.backoffMax)
	}
	req, err := CreateRequest(pod, p.node, img.Name, img.Config, p.direct, env)
	if err != nil {
		p.fail(pr, "CreateContainerConfigError", err.Error())
		return nil, false
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
			return nil, false
		}
		if err == nil {
			p.set(pr, func(pr *podRun) { pr.ip, pr.vmRunning = v.IP, true })
			p.event(pr, corev1.EventTypeNormal, "Created", "Created VM %s (%s, %d vCPUs, %d MiB)", v.Name, v.IP, v.VCPU, v.MemoryMiB)
			return &madeVM{vm: v, cfg: img.Config}, true
		}
		if errors.Is(err, client.ErrExists) {
			if old, gerr := p.bc.VM(ctx, req.Name); gerr == nil {
				if old.Labels[LabelPodUID] == string(pod.UID) {
					// This pod's own VM, made before banger-kubelet
					// restarted while bangerd was away: adopt it.
					p.set(pr, func(pr *podRun) { pr.ip, pr.vmRunning = old.IP, old.State == "running" })
					p.log.Info("adopted a pod's VM", "vm", old.Name, "pod", podKey(pod.Namespace, pod.Name), "state", old.State)
					return nil, true
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
			return nil, false
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
