package kubelet

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"banger/client"
	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/version"
)

// The node side: the Node object (honest capacity, banger's taint and
// labels, the kubelet port), its Ready condition kept true only while
// bangerd answers and the VM subnet is the node's podCIDR.

// Taint keeps pods off banger nodes unless they tolerate it: a pod here
// is a VM, which not every workload expects.
var Taint = corev1.Taint{Key: "virtual-kubelet.io/provider", Value: "banger", Effect: corev1.TaintEffectNoSchedule}

// nodeSpec is the Node this kubelet registers.
func nodeSpec(name, ip string, port int32, vmm string) corev1.Node {
	host, _ := os.Hostname()
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	n := corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"type":                   "virtual-kubelet",
			"kubernetes.io/os":       "linux",
			"kubernetes.io/arch":     runtime.GOARCH,
			"kubernetes.io/hostname": name,
			"banger.dev/vmm":         vmm,
		}},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{Taint}},
		Status: corev1.NodeStatus{
			Phase:           corev1.NodePending,
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: port}},
			NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: runtime.GOARCH, KernelVersion: kernel,
				OSImage: "banger " + version.Version, KubeletVersion: "v1.37.2-banger", ContainerRuntimeVersion: "banger://" + version.Version},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: host}},
		},
	}
	now := metav1.Now()
	for _, t := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure, corev1.NodeNetworkUnavailable} {
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: t, Status: corev1.ConditionFalse,
			Reason: "KubeletHasSufficient" + string(t), LastHeartbeatTime: now, LastTransitionTime: now})
	}
	n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionFalse,
		Reason: "KubeletNotReady", Message: "banger-kubelet is starting", LastHeartbeatTime: now, LastTransitionTime: now})
	return n
}

// Capacity is what this node can give pods: the host's CPUs and memory,
// less what the config's [limits] leave the node's user, and as many
// pods as the smaller of the VM subnet's addresses, [limits] vms and
// maxPods. The scheduler places by it, so it must not promise more:
// a pod that asks for more memory than any node has stays Pending.
type Capacity struct {
	CPUs, MemoryBytes, Pods int64
}

// hostCapacity reads the host's CPUs and memory.
func hostCapacity() (Capacity, error) {
	c := Capacity{CPUs: int64(runtime.NumCPU())}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return c, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if kb, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(kb), " kB"), 10, 64)
			if err != nil {
				return c, fmt.Errorf("/proc/meminfo: MemTotal %q", kb)
			}
			c.MemoryBytes = n << 10
		}
	}
	return c, sc.Err()
}

// capacityOf is the host's capacity bounded by the daemon's limits for
// a user other than root and by the subnet's size.
func capacityOf(host Capacity, cfg *api.Config, subnet string, maxPods int64, root bool) Capacity {
	c := host
	c.Pods = maxPods
	if p, err := netip.ParsePrefix(subnet); err == nil {
		c.Pods = min(c.Pods, int64(1)<<(32-p.Bits())-3)
	}
	if cfg == nil || root {
		return c
	}
	for _, s := range cfg.Settings {
		switch s.Key {
		case "limits.vcpus":
			if n, _ := strconv.ParseInt(s.Value, 10, 64); n > 0 {
				c.CPUs = min(c.CPUs, n)
			}
		case "limits.memory":
			if n, err := config.ParseSize(s.Value); err == nil && n > 0 {
				c.MemoryBytes = min(c.MemoryBytes, n)
			}
		case "limits.vms":
			if n, _ := strconv.ParseInt(s.Value, 10, 64); n > 0 {
				c.Pods = min(c.Pods, n)
			}
		}
	}
	return c
}

func (c Capacity) resources() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(c.CPUs, resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(c.MemoryBytes, resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(c.Pods, resource.DecimalSI),
	}
}

// nodeHealth is virtual-kubelet's NodeProvider: it checks bangerd every
// interval and says NotReady, with the reason, while it does not
// answer or the VM subnet is not the node's podCIDR yet.
type nodeHealth struct {
	bc       *client.Client
	socket   string
	name     string
	host     Capacity
	maxPods  int64
	root     bool
	interval time.Duration
	// subnet makes the VM subnet the node's podCIDR; "" while there is
	// none yet, or the reason it cannot.
	subnet func(ctx context.Context) (string, error)

	mu   sync.Mutex
	node corev1.Node
	cb   func(*corev1.Node)
}

// Ping says banger-kubelet is alive; whether bangerd is is the Ready
// condition's business.
func (h *nodeHealth) Ping(ctx context.Context) error { return ctx.Err() }

// NotifyNodeStatus registers cb and starts the checks.
func (h *nodeHealth) NotifyNodeStatus(ctx context.Context, cb func(*corev1.Node)) {
	h.mu.Lock()
	h.cb = cb
	h.mu.Unlock()
	go h.loop(ctx)
}

func (h *nodeHealth) loop(ctx context.Context) {
	for {
		h.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(h.interval):
		}
	}
}

// check updates the node's status and, when anything changed, tells
// Kubernetes.
func (h *nodeHealth) check(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ready, reason, msg := true, "KubeletReady", "banger-kubelet is posting ready status; bangerd answers at "+h.socket
	var cfg *api.Config
	subnet := ""
	if _, err := h.bc.Status(cctx); err != nil {
		ready, reason, msg = false, "BangerdUnreachable", fmt.Sprintf("bangerd does not answer: %v", err)
	} else {
		cfg, _ = h.bc.Config(cctx)
		s, err := h.subnet(cctx)
		switch {
		case err != nil:
			ready, reason, msg = false, "SubnetMismatch", err.Error()
		case s == "":
			ready, reason, msg = false, "NoPodCIDR", "waiting for the cluster to give this node a podCIDR (kube-controller-manager --allocate-node-cidrs), or start banger-kubelet with --pod-cidr"
		default:
			subnet = s
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.node.DeepCopy()
	changed := false
	if ready || cfg != nil {
		c := capacityOf(h.host, cfg, subnet, h.maxPods, h.root).resources()
		if !equalResources(n.Status.Capacity, c) {
			n.Status.Capacity, n.Status.Allocatable = c, c.DeepCopy()
			changed = true
		}
	}
	now := metav1.Now()
	for i := range n.Status.Conditions {
		cd := &n.Status.Conditions[i]
		if cd.Type != corev1.NodeReady {
			continue
		}
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		if cd.Status != status || cd.Reason != reason || cd.Message != msg {
			if cd.Status != status {
				cd.LastTransitionTime = now
			}
			cd.Status, cd.Reason, cd.Message = status, reason, msg
			changed = true
		}
		cd.LastHeartbeatTime = now
	}
	phase := corev1.NodePending
	if ready {
		phase = corev1.NodeRunning
	}
	if n.Status.Phase != phase {
		n.Status.Phase, changed = phase, true
	}
	h.node = *n
	if changed && h.cb != nil {
		h.cb(n.DeepCopy())
	}
}

func equalResources(a, b corev1.ResourceList) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || v.Cmp(w) != 0 {
			return false
		}
	}
	return true
}
