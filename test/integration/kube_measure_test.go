package integration

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// BenchmarkKube measures banger on Kubernetes in one run, on the
// same hosts: a pod from create to Running against `banger vm run -d`
// of the same image and shape by the same user (both restore the warm
// template the first pod made), ten pods spread over two nodes, and
// banger-kubelet's idle CPU and memory. A measurement, not a check:
// bench/kube.sh.
func BenchmarkKube(b *testing.B) {
	report(b, measureKube(b))
}

func measureKube(t testing.TB) map[string]float64 {
	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	kn := newKubeCluster(t, 2)
	k := kn.k
	rest, err := clientcmd.BuildConfigFromFlags("", k.env["KUBECONFIG"])
	if err != nil {
		t.Fatal(err)
	}
	// Its own requests unthrottled: client-go's default 5 a second
	// would hold a re-watch or Get back by up to 200 ms.
	rest.QPS, rest.Burst = 1000, 1000
	cs := kubernetes.NewForConfigOrDie(rest)
	ctx := context.Background()
	pin := "  nodeName: bn1\n"
	// runPod creates a pod on bn1 and returns how long until it ran.
	runPod := func(name string) time.Duration {
		t.Helper()
		var pod corev1.Pod
		spec := kn.podYAML(name, "Always", "exec sleep 100000", pin) + "    resources: {limits: {cpu: \"1\", memory: 256Mi}}\n"
		if err := k8syaml.NewYAMLOrJSONDecoder(strings.NewReader(spec), 4096).Decode(&pod); err != nil {
			t.Fatal(err)
		}
		// From the API's create (as `vm run -d` is timed from its
		// request), not kubectl's start and discovery.
		t0 := time.Now()
		made, err := cs.CoreV1().Pods("default").Create(ctx, &pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Watched from the create's version (no change is missed),
		// not polled: a Get every few milliseconds is load on the
		// apiserver the pod's start competes with for these 2 cores.
		// A watch the apiserver closes is opened again from the last
		// version seen (or a Get's, when that one is gone).
		rv := made.ResourceVersion
		for deadline := t0.Add(3 * time.Minute); time.Now().Before(deadline); {
			if w, err := cs.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: rv}); err == nil {
				for ev := range w.ResultChan() {
					p, ok := ev.Object.(*corev1.Pod)
					if !ok {
						break // an error status: the watch ends
					}
					rv = p.ResourceVersion
					if p.Status.Phase == corev1.PodRunning {
						w.Stop()
						return time.Since(t0)
					}
				}
				w.Stop()
			}
			p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
			if err == nil && p.Status.Phase == corev1.PodRunning {
				return time.Since(t0)
			}
			if err == nil {
				rv = p.ResourceVersion
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("pod %s not Running after 3 minutes: %+v", name, k.pod(name).Status)
		return 0
	}
	image := "" // the banger image the pods got
	runVM := func(name string) time.Duration {
		t.Helper()
		t0 := time.Now()
		r := kn.in1.runAs(kn.alice, "vm", "run", "-d", "--name", name, "--image", image, "--network", "shared", "--vcpu", "1", "--memory", "256M", "--", "sleep", "100000")
		d := time.Since(t0)
		if r.code != 0 {
			t.Fatalf("vm run -d: %+v", r)
		}
		return d
	}
	// Warm-up: the first pod pulls the image and boots cold, making the
	// warm template of the shape both sides use.
	t.Logf("first pod (pull, cold boot, template): %s", runPod("warmup").Round(time.Millisecond))
	var vms0 []struct{ Image string }
	kn.in1.jsonOut(&vms0, "vm", "ls", "--json")
	if len(vms0) != 1 {
		t.Fatalf("VMs after the first pod: %+v", vms0)
	}
	image = vms0[0].Image
	k.ok("delete", "pod", "warmup", "--wait=true")
	var pods, vms []time.Duration
	for i := 0; i < rounds; i++ {
		pods = append(pods, runPod(fmt.Sprintf("m%d", i)))
		vms = append(vms, runVM(fmt.Sprintf("v%d", i)))
		k.ok("delete", "pod", fmt.Sprintf("m%d", i), "--wait=true")
		kn.in1.runAs(kn.alice, "vm", "rm", "-f", fmt.Sprintf("v%d", i))
	}
	med := func(ds []time.Duration) time.Duration {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	list := func(ds []time.Duration) string {
		var out []string
		for _, d := range ds {
			out = append(out, d.Round(time.Millisecond).String())
		}
		return strings.Join(out, " ")
	}
	t.Logf("pod create -> Running: median %s (%s)", med(pods).Round(time.Millisecond), list(pods))
	t.Logf("banger vm run -d:      median %s (%s)", med(vms).Round(time.Millisecond), list(vms))
	t.Logf("overhead ratio: %.2fx (goal: at most 1.3x)", float64(med(pods))/float64(med(vms)))

	// Ten pods over two nodes, from one apply to all Running.
	dep := strings.Replace(kn.webDeployment(10), "      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - labelSelector: {matchLabels: {app: web}}\n            topologyKey: kubernetes.io/hostname\n", "", 1)
	// Scheduled by a small request (each node offers the host's two
	// CPUs), each still a VM of 1 vCPU and 256 MiB.
	dep = strings.Replace(dep, "          limits: {cpu: \"1\", memory: 256Mi}\n", "          requests: {cpu: 100m, memory: 64Mi}\n          limits: {cpu: \"1\", memory: 256Mi}\n", 1)
	k.ok("create", "configmap", "greet", "--from-literal=greeting=hello")
	t0 := time.Now()
	k.apply(dep)
	pods10 := kn.webPods(t, 10)
	wall := time.Since(t0)
	per := map[string]int{}
	for _, p := range pods10 {
		per[p.Spec.NodeName]++
	}
	t.Logf("ten pods Running in %s (per node: %v)", wall.Round(time.Millisecond), per)
	k.ok("delete", "deployment", "web", "--wait=true")
	waitFor(t, 3*time.Minute, "pods gone", func() (bool, string) {
		out, _ := k.kubectl("get", "pods", "--no-headers")
		return strings.TrimSpace(out) == "", out
	})

	// banger-kubelet idle: CPU over 30 s and resident memory.
	pid := kn.n1.cmd.Process.Pid
	cpu := func() int64 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		return u + s
	}
	c0 := cpu()
	time.Sleep(30 * time.Second)
	ticks := cpu() - c0
	rss := ""
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmRSS:") {
				rss = strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:"))
			}
		}
	}
	t.Logf("banger-kubelet idle: %.2f%% of a CPU over 30 s (%d ticks), RSS %s", float64(ticks)/100/30*100, ticks, rss)
	rssKiB, _ := strconv.ParseFloat(strings.TrimSuffix(rss, " kB"), 64)
	return map[string]float64{
		"pod-vm-ratio": float64(med(pods)) / float64(med(vms)),
		"pod-ms":       ms(med(pods)),
		"vm-run-d-ms":  ms(med(vms)),
		"ten-pods-s":   wall.Seconds(),
		"idle-cpu-pct": float64(ticks) / 100 / 30 * 100,
		"idle-rss-MiB": rssKiB / 1024,
	}
}
