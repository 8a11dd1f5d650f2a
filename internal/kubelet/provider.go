package kubelet

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"

	"banger/client"
)

// Provider is the pod side of the node: virtual-kubelet's
// PodLifecycleHandler (and PodNotifier) over bangerd. Each pod has a
// podRun, whose goroutine makes the VM, starts and watches the
// container's command, and reports its status.
type Provider struct {
	bc       *client.Client
	node     string
	nodeIP   string
	k8s      kubernetes.Interface
	pods     corev1listers.PodLister
	recorder record.EventRecorder
	log      *slog.Logger
	// stateDir keeps each pod's logs and restart count.
	stateDir string
	// direct are the cluster's pod networks: a pod's VM reaches them
	// with its own address.
	direct []string
	// maxLog bounds one run's log file.
	maxLog int64
	// backoff is the first wait before a command is started again or
	// an image pulled again (doubling to backoffMax).
	backoff, backoffMax time.Duration

	started time.Time
	// netReady is closed once the VM subnet is the node's podCIDR: no
	// pod's VM is made before (its address would be outside it).
	netReady chan struct{}

	mu     sync.Mutex
	runs   map[string]*podRun // by namespace/name
	notify func(*corev1.Pod)
}

func podKey(namespace, name string) string { return namespace + "/" + name }

// CreatePod starts making pod's VM and returns at once: the VM boots in
// the background and the status goes to Kubernetes through NotifyPods.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	if pr, ok := p.runs[key]; ok && pr.uid() == pod.UID {
		p.mu.Unlock()
		return nil
	}
	pr := p.newRun(pod.DeepCopy(), false)
	p.runs[key] = pr
	p.mu.Unlock()
	go p.run(pr)
	return nil
}

// UpdatePod takes the pod's new metadata; a pod's containers cannot
// change.
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	pr := p.lookup(pod.Namespace, pod.Name)
	if pr == nil {
		return errdefs.NotFoundf("pod %s/%s is not on node %s", pod.Namespace, pod.Name, p.node)
	}
	pr.mu.Lock()
	st := pr.pod.Status
	pr.pod = pod.DeepCopy()
	pr.pod.Status = st
	pr.mu.Unlock()
	return nil
}

// DeletePod stops the pod's command (SIGTERM, then SIGKILL after its
// grace period), removes its VM, and reports every container
// terminated. It returns once the VM is gone.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	pr := p.lookup(pod.Namespace, pod.Name)
	if pr == nil {
		return errdefs.NotFoundf("pod %s/%s is not on node %s", pod.Namespace, pod.Name, p.node)
	}
	grace := int64(30)
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	if err := p.stop(pr, time.Duration(grace)*time.Second); err != nil {
		return err
	}
	p.mu.Lock()
	if p.runs[key] == pr {
		delete(p.runs, key)
	}
	p.mu.Unlock()
	pr.forget(p.stateDir)
	p.notifyPod(pr)
	return nil
}

// GetPod is the pod as this node runs it, status included.
func (p *Provider) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	pr := p.lookup(namespace, name)
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on node %s", namespace, name, p.node)
	}
	return pr.snapshot(), nil
}

// GetPodStatus is the pod's status as this node sees it.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods lists the pods this node runs, adopted ones included.
func (p *Provider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(p.runs))
	for _, pr := range p.runs {
		out = append(out, pr.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
	return out, nil
}

// NotifyPods registers the callback status changes go to.
func (p *Provider) NotifyPods(ctx context.Context, cb func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = cb
	p.mu.Unlock()
}

func (p *Provider) lookup(namespace, name string) *podRun {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.runs[podKey(namespace, name)]
}

// notifyPod sends pr's status to Kubernetes.
func (p *Provider) notifyPod(pr *podRun) {
	p.mu.Lock()
	cb := p.notify
	p.mu.Unlock()
	if cb != nil {
		cb(pr.snapshot())
	}
}

// event records an event on pr's pod.
func (p *Provider) event(pr *podRun, typ, reason, format string, args ...any) {
	if p.recorder == nil {
		return
	}
	pr.mu.Lock()
	pod := pr.pod.DeepCopy()
	pr.mu.Unlock()
	p.recorder.Eventf(pod, typ, reason, format, args...)
}

// podsDir is where pods' logs and records are.
func (p *Provider) podsDir() string { return filepath.Join(p.stateDir, "pods") }

func (p *Provider) ensureDirs() error {
	return os.MkdirAll(p.podsDir(), 0o700)
}
