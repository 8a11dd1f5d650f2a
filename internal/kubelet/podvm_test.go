package kubelet

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"banger/internal/api"
	"banger/internal/vm"
)

func TestVMName(t *testing.T) {
	long := strings.Repeat("x", 70)
	for _, c := range [][2]string{{"default", "web-7d9f"}, {"Kube-System", "Dns_1"}, {long, long}, {"a-b", "c"}, {"a", "b-c"}, {"-", "."}} {
		n := VMName(c[0], c[1])
		if err := vm.ValidateName(n); err != nil {
			t.Errorf("VMName(%q, %q) = %q: %v", c[0], c[1], n, err)
		}
	}
	if VMName("a-b", "c") == VMName("a", "b-c") {
		t.Error("two pods, one VM name")
	}
	if got := VMName("default", "web"); !strings.HasPrefix(got, "default-web-") || len(got) != len("default-web-")+8 {
		t.Errorf("VMName = %q", got)
	}
}

func TestArgv(t *testing.T) {
	img := api.ImageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"serve"}}
	for _, c := range []struct {
		cmd, args, want []string
	}{
		{nil, nil, []string{"/entry", "serve"}},
		{[]string{"/bin/sh"}, nil, []string{"/bin/sh"}}, // command drops the image's cmd
		{nil, []string{"debug"}, []string{"/entry", "debug"}},
		{[]string{"/bin/sh", "-c"}, []string{"echo"}, []string{"/bin/sh", "-c", "echo"}},
	} {
		if got := Argv(corev1.Container{Command: c.cmd, Args: c.args}, img); !reflect.DeepEqual(got, c.want) {
			t.Errorf("command %v args %v: %v, want %v", c.cmd, c.args, got, c.want)
		}
	}
}

func TestShape(t *testing.T) {
	q := resource.MustParse
	for _, c := range []struct {
		res       corev1.ResourceRequirements
		vcpu, mem int
	}{
		{corev1.ResourceRequirements{}, 0, 0},
		{corev1.ResourceRequirements{Limits: corev1.ResourceList{"cpu": q("1500m"), "memory": q("512Mi")}}, 2, 512},
		{corev1.ResourceRequirements{Requests: corev1.ResourceList{"cpu": q("250m"), "memory": q("64Mi")}}, 1, 128},
		{corev1.ResourceRequirements{Requests: corev1.ResourceList{"cpu": q("4")}, Limits: corev1.ResourceList{"cpu": q("2")}}, 2, 0},
		{corev1.ResourceRequirements{Limits: corev1.ResourceList{"memory": q("1G")}}, 0, 954},
	} {
		v, m := Shape(corev1.Container{Resources: c.res})
		if v != c.vcpu || m != c.mem {
			t.Errorf("%+v: %d vCPUs %d MiB, want %d %d", c.res, v, m, c.vcpu, c.mem)
		}
	}
}

func TestCreateRequest(t *testing.T) {
	uid := int64(1000)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u-1"},
		Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: &uid}, Containers: []corev1.Container{{
			Name: "c", Args: []string{"-v"}, WorkingDir: "/w",
			Ports: []corev1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 443, HostPort: 8443}},
		}}}}
	pod.Spec.Containers[0].Args = []string{"-v", "$(A)"}
	req, err := CreateRequest(pod, "n1", "img", api.ImageConfig{Entrypoint: []string{"/srv"}}, []string{"10.244.0.0/16"}, []string{"A=1", "B=2"})
	if err != nil {
		t.Fatal(err)
	}
	want := api.VMCreateRequest{Name: VMName("ns", "p"), Image: "img", Network: "shared", Ports: []string{"0.0.0.0:8443:443/tcp"},
		Direct: []string{"10.244.0.0/16"},
		Labels: map[string]string{LabelNode: "n1", LabelPodUID: "u-1", LabelNamespace: "ns", LabelPod: "p"},
		Run:    &api.Run{Entrypoint: []string{"/srv"}, Cmd: []string{"-v", "1"}, Env: []string{"A=1", "B=2"}, WorkingDir: "/w", User: "1000", Supervised: true}}
	if !reflect.DeepEqual(req, want) {
		t.Errorf("request\n%+v\nwant\n%+v", req, want)
	}
	pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: 53, HostPort: 53, Protocol: corev1.ProtocolUDP})
	if _, err := CreateRequest(pod, "n1", "img", api.ImageConfig{Entrypoint: []string{"/srv"}}, nil, nil); err == nil || !strings.Contains(err.Error(), "TCP ports only") {
		t.Errorf("a UDP hostPort: %v", err)
	}
	pod.Spec.Containers[0].Ports = nil
	pod.Spec.Containers[0].Args = nil
	if _, err := CreateRequest(pod, "n1", "img", api.ImageConfig{}, nil, nil); err == nil || !strings.Contains(err.Error(), "no command") {
		t.Errorf("no command anywhere: %v", err)
	}
}

func TestUnsupported(t *testing.T) {
	one := corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}
	if why := Unsupported(&corev1.Pod{Spec: one}); why != "" {
		t.Errorf("one container: %s", why)
	}
	two := corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}, {Name: "b"}}}
	if why := Unsupported(&corev1.Pod{Spec: two}); !strings.Contains(why, "one container") {
		t.Errorf("two containers: %q", why)
	}
	initc := corev1.PodSpec{Containers: one.Containers, InitContainers: []corev1.Container{{Name: "i"}}}
	if why := Unsupported(&corev1.Pod{Spec: initc}); !strings.Contains(why, "init containers") {
		t.Errorf("init containers: %q", why)
	}
}

func TestRestarts(t *testing.T) {
	for _, c := range []struct {
		p    corev1.RestartPolicy
		code int32
		want bool
	}{{corev1.RestartPolicyAlways, 0, true}, {corev1.RestartPolicyAlways, 1, true}, {corev1.RestartPolicyOnFailure, 0, false},
		{corev1.RestartPolicyOnFailure, 2, true}, {corev1.RestartPolicyNever, 1, false}} {
		if got := restarts(c.p, c.code); got != c.want {
			t.Errorf("%s exit %d: %v", c.p, c.code, got)
		}
	}
}

func TestCapacity(t *testing.T) {
	host := Capacity{CPUs: 8, MemoryBytes: 32 << 30}
	cfg := &api.Config{Settings: []api.Setting{{Key: "limits.vcpus", Value: "4"}, {Key: "limits.memory", Value: "16G"}, {Key: "limits.vms", Value: "0"}}}
	if c := capacityOf(host, cfg, "10.244.1.0/24", 110, false); c != (Capacity{CPUs: 4, MemoryBytes: 16 << 30, Pods: 110}) {
		t.Errorf("limits: %+v", c)
	}
	if c := capacityOf(host, cfg, "10.244.1.0/28", 110, true); c != (Capacity{CPUs: 8, MemoryBytes: 32 << 30, Pods: 13}) {
		t.Errorf("root, a /28: %+v", c)
	}
}

func TestDockerAuth(t *testing.T) {
	sec := &corev1.Secret{Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(
		`{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYXNz"},"index.docker.io":{"username":"d","password":"p"}}}`)}}
	if a := dockerAuth(sec, "reg.example:5000"); a == nil || a.Username != "user" || a.Password != "pass" {
		t.Errorf("reg.example: %+v", a)
	}
	if a := dockerAuth(sec, "index.docker.io"); a == nil || a.Username != "d" {
		t.Errorf("docker hub: %+v", a)
	}
	if a := dockerAuth(sec, "other.example"); a != nil {
		t.Errorf("another registry: %+v", a)
	}
}

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "1", "NAME": "web"}
	for in, want := range map[string]string{
		"plain": "plain", "$(A)": "1", "x-$(NAME)-y": "x-web-y", "$$(A)": "$(A)", "$(NOPE)": "$(NOPE)", "$(A": "$(A", "$": "$", "a$b": "a$b",
	} {
		if got := expand(in, env); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFieldValue(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "n1"}}
	for path, want := range map[string]string{"metadata.name": "p", "metadata.namespace": "ns", "metadata.uid": "u",
		"metadata.labels['app']": "web", "spec.nodeName": "n1", "status.podIP": "10.244.0.2", "status.hostIP": "192.0.2.1"} {
		if got, err := fieldValue(pod, path, "10.244.0.2", "192.0.2.1"); err != nil || got != want {
			t.Errorf("%s: %q %v", path, got, err)
		}
	}
	if _, err := fieldValue(pod, "status.phase", "", ""); err == nil {
		t.Error("an unknown field resolved")
	}
}
