package kubelet

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// adopt takes over the VMs this node made before banger-kubelet
// restarted (by their labels): each becomes its pod's run again, and
// its command is attached to, not started anew. A VM whose pod is gone
// from Kubernetes (deleted while this was down) is removed: nothing
// owns it any more.
func (p *Provider) adopt(ctx context.Context) error {
	vms, err := p.bc.VMs(ctx)
	if err != nil {
		// bangerd down: the node says so (NotReady); its VMs are
		// adopted at the next start.
		p.log.Warn("cannot list VMs to adopt: bangerd does not answer", "err", err)
		return nil
	}
	for _, v := range vms {
		if v.Labels[LabelNode] != p.node {
			continue
		}
		ns, name, uid := v.Labels[LabelNamespace], v.Labels[LabelPod], v.Labels[LabelPodUID]
		pod, err := p.k8s.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || string(pod.UID) != uid || pod.Spec.NodeName != p.node {
			why := "its pod is gone"
			if err == nil {
				why = fmt.Sprintf("pod %s/%s is another pod now (uid %s, node %s)", ns, name, pod.UID, pod.Spec.NodeName)
			}
			p.log.Info("removing the VM of a pod that is gone", "vm", v.Name, "pod", ns+"/"+name, "why", why)
			if _, err := p.bc.RemoveVM(ctx, v.Name, true); err != nil {
				p.log.Warn("removing an orphan pod VM", "vm", v.Name, "err", err)
			}
			if uid != "" {
				gone := &podRun{pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid)}}}
				gone.forget(p.stateDir)
			}
			continue
		}
		pr := p.newRun(pod, true)
		pr.ip, pr.vmRunning = v.IP, v.State == "running"
		if pod.Status.Phase != "" {
			pr.phase = pod.Status.Phase
		}
		for _, cs := range pod.Status.ContainerStatuses {
			pr.restarts = cs.RestartCount
			if cs.State.Running != nil {
				pr.waiting, pr.running = nil, cs.State.Running.DeepCopy()
			}
			if cs.LastTerminationState.Terminated != nil {
				pr.last = cs.LastTerminationState.Terminated.DeepCopy()
			}
		}
		if pod.Status.StartTime != nil {
			pr.started = pod.Status.StartTime.DeepCopy()
		}
		p.mu.Lock()
		p.runs[podKey(ns, name)] = pr
		p.mu.Unlock()
		p.log.Info("adopted a pod's VM", "vm", v.Name, "pod", ns+"/"+name, "state", v.State)
		go p.run(pr)
	}
	return nil
}
