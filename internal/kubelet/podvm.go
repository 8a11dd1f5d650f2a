package kubelet

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"banger/internal/api"
)

// This file turns a pod into what bangerd makes of it: a VM name,
// labels, a VMCreateRequest. Pure functions: the tests hold them to
// Kubernetes' rules without a cluster.

// Labels a pod's VM carries: how a restarted banger-kubelet finds its
// VMs again, and which pod each is.
const (
	LabelNode      = "banger.dev/node"
	LabelPodUID    = "banger.dev/pod-uid"
	LabelNamespace = "banger.dev/pod-namespace"
	LabelPod       = "banger.dev/pod-name"
)

// Annotations a pod may carry for banger.
const (
	// AnnotationForkOf names a running pod (same namespace, same node)
	// whose VM this pod's is restored from: its memory, processes and
	// disk at the instant of the fork.
	AnnotationForkOf = "banger.dev/fork-of"
)

// MainTag tags the container's command among the agent's detached
// processes, so that a restarted banger-kubelet finds it.
const MainTag = "k8s-main"

var notLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// VMName is the VM of the pod namespace/name: a DNS label made of both
// (lower-cased, other characters as '-') and a hash of the two that
// keeps names unique when they are cut to fit 63 characters or when two
// pods map to the same text ("a-b/c" and "a/b-c").
func VMName(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	hash := hex.EncodeToString(sum[:])[:8]
	base := notLabel.ReplaceAllString(strings.ToLower(namespace+"-"+name), "-")
	base = strings.Trim(base, "-")
	if max := 63 - len(hash) - 1; len(base) > max {
		base = strings.TrimRight(base[:max], "-")
	}
	if base == "" {
		return "pod-" + hash
	}
	return base + "-" + hash
}

// Unsupported is why a pod cannot run on a banger node ("" when it can):
// a VM runs one container's command.
func Unsupported(pod *corev1.Pod) string {
	switch {
	case len(pod.Spec.Containers) != 1:
		return fmt.Sprintf("a banger node runs one container a pod (one VM); this pod has %d: split it into pods", len(pod.Spec.Containers))
	case len(pod.Spec.InitContainers) > 0:
		return "a banger node runs no init containers: run their work in the container's command"
	case len(pod.Spec.EphemeralContainers) > 0:
		return "a banger node runs no ephemeral containers: use kubectl exec"
	}
	return ""
}

// Argv is the command the container runs, by Kubernetes' rules over
// the image's: command replaces the entrypoint and drops the image's
// cmd; args replace the cmd.
func Argv(c corev1.Container, img api.ImageConfig) []string {
	entry, cmd := img.Entrypoint, img.Cmd
	if len(c.Command) > 0 {
		entry, cmd = c.Command, nil
	}
	if len(c.Args) > 0 {
		cmd = c.Args
	}
	return append(append([]string{}, entry...), cmd...)
}

// Shape is the VM's vCPUs and memory for the container's resources: the
// CPU limit (else the request) rounded up to whole vCPUs, the memory
// limit (else the request) in MiB, at least 128. Zero: bangerd's
// default.
func Shape(c corev1.Container) (vcpu, memMiB int) {
	pick := func(name corev1.ResourceName) (int64, bool) {
		if q, ok := c.Resources.Limits[name]; ok && !q.IsZero() {
			if name == corev1.ResourceCPU {
				return q.MilliValue(), true
			}
			return q.Value(), true
		}
		if q, ok := c.Resources.Requests[name]; ok && !q.IsZero() {
			if name == corev1.ResourceCPU {
				return q.MilliValue(), true
			}
			return q.Value(), true
		}
		return 0, false
	}
	if m, ok := pick(corev1.ResourceCPU); ok {
		vcpu = int((m + 999) / 1000)
	}
	if b, ok := pick(corev1.ResourceMemory); ok {
		memMiB = int((b + (1<<20 - 1)) >> 20)
		if memMiB < 128 {
			memMiB = 128
		}
	}
	return vcpu, memMiB
}

// Ports are the container's hostPorts as published ports
// (HOSTIP:HOST:GUEST/tcp); containerPorts need none: the pod IP is the
// VM's, reachable as it is.
func Ports(c corev1.Container) ([]string, error) {
	var out []string
	for _, p := range c.Ports {
		if p.HostPort == 0 {
			continue
		}
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			return nil, fmt.Errorf("hostPort %d/%s: banger publishes TCP ports only", p.HostPort, p.Protocol)
		}
		host := p.HostIP
		if host == "" {
			host = "0.0.0.0"
		}
		out = append(out, fmt.Sprintf("%s:%d:%d/tcp", host, p.HostPort, p.ContainerPort))
	}
	return out, nil
}

// CreateRequest is the VM of pod on node: image is the banger image,
// direct the cluster's pod networks (reached with the pod's own
// address), env the container's environment (podEnv). The command is
// supervised: banger-kubelet starts it through the agent, so that it
// has the exit code and restarts it.
func CreateRequest(pod *corev1.Pod, node, image string, img api.ImageConfig, direct, env []string) (api.VMCreateRequest, error) {
	c := pod.Spec.Containers[0]
	ports, err := Ports(c)
	if err != nil {
		return api.VMCreateRequest{}, err
	}
	vcpu, mem := Shape(c)
	argv := expandAll(Argv(c, img), env)
	if len(argv) == 0 {
		return api.VMCreateRequest{}, fmt.Errorf("container %q has no command: the image %s has none either; give it a command", c.Name, image)
	}
	run := &api.Run{Entrypoint: argv[:1], Cmd: argv[1:], Env: env, WorkingDir: c.WorkingDir, Supervised: true}
	if u := RunAsUser(pod, c); u != "" {
		run.User = u
	}
	return api.VMCreateRequest{
		Name: VMName(pod.Namespace, pod.Name), Image: image, VCPU: vcpu, MemoryMiB: mem,
		Network: "shared", Ports: ports, Direct: direct,
		Labels: map[string]string{LabelNode: node, LabelPodUID: string(pod.UID), LabelNamespace: pod.Namespace, LabelPod: pod.Name},
		Run:    run,
	}, nil
}

// RunAsUser is the securityContext's runAsUser (and runAsGroup) as the
// agent takes a user ("" for the image's).
func RunAsUser(pod *corev1.Pod, c corev1.Container) string {
	var uid, gid *int64
	if sc := pod.Spec.SecurityContext; sc != nil {
		uid, gid = sc.RunAsUser, sc.RunAsGroup
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
	}
	if uid == nil {
		return ""
	}
	if gid != nil {
		return fmt.Sprintf("%d:%d", *uid, *gid)
	}
	return fmt.Sprint(*uid)
}
