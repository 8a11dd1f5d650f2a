package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"banger/client"
	"banger/internal/imagepull/imagetest"
	"banger/internal/kubelet"
	"banger/internal/testenv"
)

// kubeBoxLayer is a busybox image with the applets the pods use: a
// shell, an HTTP server and client, and tty.
func kubeBoxLayer(t testing.TB) []byte {
	t.Helper()
	bbDeb := testenv.Fixture(t, testenv.BusyboxDeb, "the busybox-static .deb (scripts/vm-fixtures.sh)")
	x := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", bbDeb, x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v %s", err, out)
	}
	bb, _ := os.ReadFile(filepath.Join(x, "bin", "busybox"))
	ents := []imagetest.Entry{{Name: "bin/busybox", Body: string(bb), Mode: 0o755}, {Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\n"},
		{Name: "tmp/", Type: '5', Mode: 0o1777}}
	for _, a := range []string{"sh", "ls", "cat", "sleep", "echo", "sync", "true", "false", "mkdir", "httpd", "wget", "hostname", "tty", "env", "id", "kill", "seq"} {
		ents = append(ents, imagetest.Entry{Name: "bin/" + a, Type: '2', Link: "busybox"})
	}
	return imagetest.Layer(t, ents...)
}

// kubeNodes is a cluster with two banger nodes, ready.
type kubeNodes struct {
	k          *kubeCluster
	n1, n2     *kubeNode
	in1, in2   *instance
	alice, bob hostUser
	image      string
}

func newKubeNodes(t *testing.T) *kubeNodes { return newKubeCluster(t, 2) }

// newKubeCluster is a control plane with n (1 or 2) banger nodes,
// ready; with two, their VM networks are joined.
func newKubeCluster(t testing.TB, n int) *kubeNodes {
	t.Helper()
	k := startKube(t)
	kubeletBin(t)
	alice, bob := testUser(t, "banger-alice"), testUser(t, "banger-bob")
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "test/kbox:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{kubeBoxLayer(t)}}))
	deb := testenv.KernelPackage(t)
	testenv.RequireBinary(t, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	mk := func(u hostUser) *instance {
		in := newInstance(t)
		writeBangerConfig(t, in, u.name)
		in.ok("kernel", "import", "k", "--from", deb)
		in.shareWithGroup()
		return in
	}
	kn := &kubeNodes{k: k, alice: alice, bob: bob, image: ref}
	kn.in1 = mk(alice)
	kn.n1 = k.addNode("bn1", "127.0.0.2", kn.in1, alice)
	if n > 1 {
		kn.in2 = mk(bob)
		kn.n2 = k.addNode("bn2", "127.0.0.3", kn.in2, bob)
	}
	cidr1 := kn.n1.ready(2 * time.Minute)
	checkSubnet(t, kn.in1, cidr1)
	if n > 1 {
		cidr2 := kn.n2.ready(2 * time.Minute)
		if cidr1 == "" || cidr2 == "" || cidr1 == cidr2 {
			t.Fatalf("pod CIDRs %q and %q", cidr1, cidr2)
		}
		checkSubnet(t, kn.in2, cidr2)
		linkNamespaces(t, kn.in1.netns, cidr1, kn.in2.netns, cidr2)
	}
	return kn
}

// checkSubnet holds that bangerd's VM subnet is the node's podCIDR,
// set by the node's user.
func checkSubnet(t testing.TB, in *instance, cidr string) {
	t.Helper()
	n, err := client.New(in.path("run", "bangerd.sock")).Network(context.Background())
	if err != nil || cidr == "" || n.Subnet != cidr || !strings.Contains(n.Source, "set by banger-") {
		t.Fatalf("bangerd's network %+v (%v), want subnet %s set by the node's user", n, err, cidr)
	}
}

// podYAML is a pod for a banger node running cmd in the test image.
func (kn *kubeNodes) podYAML(name, policy string, cmd string, extra string) string {
	return kn.podYAMLMeta(name, "", policy, cmd, extra)
}

// podYAMLMeta is podYAML with more metadata (meta: indented lines).
func (kn *kubeNodes) podYAMLMeta(name, meta, policy string, cmd string, extra string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
%sspec:
  restartPolicy: %s
  terminationGracePeriodSeconds: 5
  tolerations:
  - {key: virtual-kubelet.io/provider, operator: Equal, value: banger, effect: NoSchedule}
%s  containers:
  - name: main
    image: %s
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", %q]
`, name, meta, policy, extra, kn.image, cmd)
}

// webCmd serves its pod's name and address over HTTP on port 80 and
// logs each request with its URL (busybox httpd -vv) to stderr.
const webCmd = `mkdir -p /www && echo "$POD_NAME $POD_IP" > /www/index.html && exec httpd -f -vv -p 80 -h /www`

func (kn *kubeNodes) webDeployment(replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: %d
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 5
      tolerations:
      - {key: virtual-kubelet.io/provider, operator: Equal, value: banger, effect: NoSchedule}
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: web}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: %s
        imagePullPolicy: IfNotPresent
        command: ["/bin/sh", "-c", %q]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        - name: GREETING
          valueFrom: {configMapKeyRef: {name: greet, key: greeting}}
        resources:
          limits: {cpu: "1", memory: 256Mi}
`, replicas, kn.image, webCmd)
}

type podList struct {
	Items []podJSON
}

// webPods waits until the Deployment's n pods run and returns them.
func (kn *kubeNodes) webPods(t testing.TB, n int) []podJSON {
	t.Helper()
	var pods podList
	waitFor(t, 4*time.Minute, fmt.Sprintf("%d web pods Running", n), func() (bool, string) {
		out, err := kn.k.kubectl("get", "pods", "-l", "app=web", "-o", "json")
		if err != nil {
			return false, err.Error()
		}
		pods = podList{}
		json.Unmarshal([]byte(out), &pods)
		running := 0
		var states []string
		for _, p := range pods.Items {
			states = append(states, p.Metadata.Name+"="+p.state())
			if p.Status.Phase == "Running" && p.Status.PodIP != "" {
				running++
			}
		}
		return running == n && len(pods.Items) == n, strings.Join(states, " ")
	})
	return pods.Items
}

// nodeOf is the banger instance running pod p.
func (kn *kubeNodes) nodeOf(p podJSON) *instance {
	if p.Spec.NodeName == "bn1" {
		return kn.in1
	}
	return kn.in2
}

// podVMs lists the pod VMs of an instance (as root: every owner).
func podVMs(t *testing.T, in *instance) []vmJSONLabels {
	t.Helper()
	var vms []vmJSONLabels
	in.jsonOut(&vms, "vm", "ls", "--json")
	var out []vmJSONLabels
	for _, v := range vms {
		if v.Labels[kubelet.LabelPodUID] != "" {
			out = append(out, v)
		}
	}
	return out
}

type vmJSONLabels struct {
	Name, State, IP string
	Origin          string
	Owner           int
	OwnerName       string `json:"owner_name"`
	Labels          map[string]string
}

func TestKubeNodes(t *testing.T) {
	kn := newKubeNodes(t)
	k := kn.k
	k.ok("create", "configmap", "greet", "--from-literal=greeting=hello")
	k.apply(kn.webDeployment(2))
	pods := kn.webPods(t, 2)
	a, b := pods[0], pods[1]
	if a.Spec.NodeName == b.Spec.NodeName {
		t.Fatalf("anti-affinity: both web pods on %s", a.Spec.NodeName)
	}

	t.Run("node: honest capacity, lease, labels, taint", func(t *testing.T) {
		var node struct {
			Metadata struct{ Labels map[string]string }
			Spec     struct {
				Taints []struct{ Key, Value, Effect string }
			}
			Status struct{ Capacity map[string]string }
		}
		k.jsonOut(&node, "get", "node", "bn1")
		mem := ""
		if b, err := os.ReadFile("/proc/meminfo"); err == nil {
			f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
			mem = f[1] + "Ki"
		}
		if c := node.Status.Capacity; c["cpu"] != fmt.Sprint(runtime.NumCPU()) || c["memory"] != mem || c["pods"] != "110" {
			t.Errorf("capacity %v, want the host's %d CPUs and %s", c, runtime.NumCPU(), mem)
		}
		l := node.Metadata.Labels
		if l["type"] != "virtual-kubelet" || l["kubernetes.io/os"] != "linux" || l["banger.dev/vmm"] != "qemu" {
			t.Errorf("labels %v", l)
		}
		if len(node.Spec.Taints) == 0 || node.Spec.Taints[0].Key != "virtual-kubelet.io/provider" || node.Spec.Taints[0].Value != "banger" {
			t.Errorf("taints %+v", node.Spec.Taints)
		}
		var lease struct {
			Spec struct{ RenewTime string }
		}
		k.jsonOut(&lease, "get", "lease", "-n", "kube-node-lease", "bn1")
		if rt, err := time.Parse(time.RFC3339Nano, lease.Spec.RenewTime); err != nil || time.Since(rt) > 30*time.Second {
			t.Errorf("lease renewed at %q", lease.Spec.RenewTime)
		}
	})

	t.Run("pod IP across nodes, no NAT", func(t *testing.T) {
		out, err := k.kubectl("exec", a.Metadata.Name, "--", "wget", "-qO-", "http://"+b.Status.PodIP+"/")
		if err != nil || strings.TrimSpace(out) != b.Metadata.Name+" "+b.Status.PodIP {
			t.Fatalf("pod %s fetching pod %s at %s: %q %v", a.Metadata.Name, b.Metadata.Name, b.Status.PodIP, out, err)
		}
		// B's server saw A's own pod address (httpd -v logs the peer).
		waitFor(t, 10*time.Second, "B's log names A's pod IP", func() (bool, string) {
			logs, _ := k.kubectl("logs", b.Metadata.Name)
			return strings.Contains(logs, a.Status.PodIP), logs
		})
		env, err := k.kubectl("exec", a.Metadata.Name, "--", "env")
		if err != nil || !strings.Contains(env, "GREETING=hello") || !strings.Contains(env, "POD_NAME="+a.Metadata.Name) {
			t.Errorf("pod environment (configMapKeyRef, fieldRef): %v\n%s", err, env)
		}
	})

	t.Run("kubectl exec, -i, -it, logs -f, port-forward", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(k.bins, "kubectl"), "--kubeconfig", k.env["KUBECONFIG"], "exec", a.Metadata.Name, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
		var so, se strings.Builder
		cmd.Stdout, cmd.Stderr = &so, &se
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || so.String() != "out\n" || !strings.Contains(se.String(), "err") {
			t.Errorf("exec exit status and streams: %v stdout %q stderr %q", err, so.String(), se.String())
		}
		out, err := k.kubectlIn([]byte("piped in\n"), "exec", "-i", a.Metadata.Name, "--", "cat")
		if err != nil || out != "piped in\n" {
			t.Errorf("exec -i: %q %v", out, err)
		}
		// -it through a real terminal (script gives kubectl one).
		sc := exec.Command("script", "-qec", fmt.Sprintf("%s --kubeconfig %s exec -it %s -- sh -c 'tty; echo TTY-OK'",
			filepath.Join(k.bins, "kubectl"), k.env["KUBECONFIG"], a.Metadata.Name), "/dev/null")
		tout, err := sc.CombinedOutput()
		if err != nil || !strings.Contains(string(tout), "/dev/pts/") || !strings.Contains(string(tout), "TTY-OK") {
			t.Errorf("exec -it: %v\n%s", err, tout)
		}

		lf := exec.Command(filepath.Join(k.bins, "kubectl"), "--kubeconfig", k.env["KUBECONFIG"], "logs", "-f", b.Metadata.Name)
		pipe, _ := lf.StdoutPipe()
		if err := lf.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { lf.Process.Kill(); lf.Wait() }()
		lines := linesOf(bufio.NewReader(pipe))
		time.Sleep(time.Second)
		marker := fmt.Sprintf("/follow-%d", time.Now().UnixNano())
		k.kubectl("exec", a.Metadata.Name, "--", "wget", "-qO-", "http://"+b.Status.PodIP+marker)
		deadline := time.After(20 * time.Second)
	follow:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("logs -f ended")
				}
				if strings.Contains(l, marker) {
					break follow
				}
			case <-deadline:
				t.Fatalf("logs -f did not show the request for %s", marker)
			}
		}

		pf := exec.Command(filepath.Join(k.bins, "kubectl"), "--kubeconfig", k.env["KUBECONFIG"], "port-forward", "pod/"+a.Metadata.Name, ":80")
		pfOut, _ := pf.StdoutPipe()
		if err := pf.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { pf.Process.Kill(); pf.Wait() }()
		re := regexp.MustCompile(`127\.0\.0\.1:(\d+) -> 80`)
		port := ""
		for l := range linesOf(bufio.NewReader(pfOut)) {
			if m := re.FindStringSubmatch(l); m != nil {
				port = m[1]
				break
			}
		}
		resp, err := http.Get("http://127.0.0.1:" + port + "/")
		if err != nil {
			t.Fatalf("port-forward: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(body)) != a.Metadata.Name+" "+a.Status.PodIP {
			t.Errorf("port-forward answered %q", body)
		}
	})

	t.Run("kubelet port: no anonymous client, other nodes refused", func(t *testing.T) {
		n := kn.n1
		pod := a
		if a.Spec.NodeName != "bn1" {
			pod = b
		}
		url := fmt.Sprintf("https://%s:%d/containerLogs/default/%s/web", n.ip, n.port, pod.Metadata.Name)
		get := func(cert, key string) (int, error) {
			caPEM, _ := os.ReadFile(k.env["CA_CERT"])
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(caPEM)
			cfg := &tls.Config{RootCAs: pool}
			if cert != "" {
				c, err := tls.LoadX509KeyPair(cert, key)
				if err != nil {
					t.Fatal(err)
				}
				cfg.Certificates = []tls.Certificate{c}
			}
			cl := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
			resp, err := cl.Get(url)
			if err != nil {
				return 0, err
			}
			resp.Body.Close()
			return resp.StatusCode, nil
		}
		if code, err := get("", ""); err == nil {
			t.Errorf("no client certificate: HTTP %d, want the handshake refused", code)
		}
		if code, err := get(filepath.Join(kn.n2.dir, "client.crt"), filepath.Join(kn.n2.dir, "client.key")); err != nil || code != http.StatusForbidden {
			t.Errorf("another node's certificate: %d %v, want 403", code, err)
		}
		st := filepath.Dir(k.env["CA_CERT"])
		if code, err := get(filepath.Join(st, "apiserver-kubelet-client.crt"), filepath.Join(st, "apiserver-kubelet-client.key")); err != nil || code != http.StatusOK {
			t.Errorf("the apiserver's kubelet client: %d %v, want 200", code, err)
		}
	})

	t.Run("other users do not see the node's VMs", func(t *testing.T) {
		in := kn.nodeOf(a)
		vms := podVMs(t, in)
		if len(vms) != 1 || vms[0].OwnerName != kn.userOf(a).name || vms[0].Labels[kubelet.LabelPod] != a.Metadata.Name || vms[0].Labels[kubelet.LabelPodUID] != a.Metadata.UID {
			t.Fatalf("pod VMs of %s as root: %+v", a.Spec.NodeName, vms)
		}
		other := kn.bob
		if kn.userOf(a).name == kn.bob.name {
			other = kn.alice
		}
		r := in.runAs(other, "vm", "ls", "--json")
		if r.code != 0 || strings.Contains(r.stdout, vms[0].Name) {
			t.Errorf("%s's vm ls shows the node's VM: %+v", other.name, r)
		}
		in.failsAs(other, "no VM", "vm", "exec", vms[0].Name, "--", "true")
	})

	t.Run("fork", func(t *testing.T) {
		k.ok("exec", a.Metadata.Name, "--", "sh", "-c", "echo state-of-a > /tmp/mark")
		ann := fmt.Sprintf("  annotations: {%s: %s}\n", kubelet.AnnotationForkOf, a.Metadata.Name)
		k.apply(kn.podYAMLMeta("forked", ann, "Always", webCmd, fmt.Sprintf("  nodeName: %s\n", a.Spec.NodeName)))
		f := k.waitPod("forked", "Running", 2*time.Minute)
		out, err := k.kubectl("exec", "forked", "--", "cat", "/tmp/mark")
		if err != nil || strings.TrimSpace(out) != "state-of-a" || f.Status.PodIP == a.Status.PodIP || f.Status.PodIP == "" {
			t.Errorf("fork: mark %q (%v), IP %s (source %s)", out, err, f.Status.PodIP, a.Status.PodIP)
		}
		other := "bn1"
		if a.Spec.NodeName == "bn1" {
			other = "bn2"
		}
		k.apply(kn.podYAMLMeta("forked-far", ann, "Always", webCmd, fmt.Sprintf("  nodeName: %s\n", other)))
		ff := k.waitPod("forked-far", "Failed", time.Minute)
		if ff.Status.Reason != "ForkSourceElsewhere" || !strings.Contains(ff.Status.Message, "nodeName") {
			t.Errorf("a fork placed on another node: %+v", ff.Status)
		}
		k.ok("delete", "pod", "forked", "forked-far", "--wait=true")
	})

	t.Run("commands end: exit codes, restart policies, exec into a finished pod", func(t *testing.T) {
		k.apply(kn.podYAML("done", "Never", "echo finished", ""))
		k.apply(kn.podYAML("fails", "Never", "exit 7", ""))
		k.apply(kn.podYAML("retries", "OnFailure", "echo try; exit 1", ""))
		d := k.waitPod("done", "Succeeded", 3*time.Minute)
		f := k.waitPod("fails", "Failed", 3*time.Minute)
		if code := f.Status.ContainerStatuses[0].State["terminated"].ExitCode; code != 7 {
			t.Errorf("exit code %d, want 7", code)
		}
		if logs, _ := k.kubectl("logs", "done"); logs != "finished\n" || d.Status.ContainerStatuses[0].State["terminated"].ExitCode != 0 {
			t.Errorf("done: logs %q, %+v", logs, d.Status)
		}
		if _, err := k.kubectl("exec", "done", "--", "true"); err == nil || !strings.Contains(err.Error(), "completed pod") {
			t.Errorf("exec into a finished pod: %v", err)
		}
		waitFor(t, 2*time.Minute, "retries restarted twice", func() (bool, string) {
			p := k.pod("retries")
			if len(p.Status.ContainerStatuses) == 0 {
				return false, p.state()
			}
			return p.Status.ContainerStatuses[0].RestartCount >= 2, p.state()
		})
		if logs, err := k.kubectl("logs", "retries", "--previous"); err != nil || logs != "try\n" {
			t.Errorf("logs --previous: %q %v", logs, err)
		}
		// The web pods' VMs made each node's warm template of this
		// shape: these pods' VMs restored it instead of booting.
		warm := 0
		for _, in := range []*instance{kn.in1, kn.in2} {
			for _, v := range podVMs(t, in) {
				if strings.HasPrefix(v.Origin, "template ") {
					warm++
				}
			}
		}
		if warm < 3 {
			t.Errorf("%d of the pods' VMs restored a warm template, want the 3 made after the web pods", warm)
		}
		k.ok("delete", "pod", "done", "fails", "retries", "--wait=true")
	})

	t.Run("bad input", func(t *testing.T) {
		k.apply(strings.Replace(kn.podYAML("noimage", "Always", "true", ""), kn.image, "127.0.0.1:1/nope:1", 1))
		waitFor(t, time.Minute, "ErrImagePull, then ImagePullBackOff", func() (bool, string) {
			p := k.pod("noimage")
			st := p.state()
			return strings.Contains(st, "ImagePullBackOff"), st
		})
		ev := k.ok("get", "events", "--field-selector", "involvedObject.name=noimage")
		if !strings.Contains(ev, "Failed to pull image") {
			t.Errorf("no pull failure event:\n%s", ev)
		}
		// kubectl refuses finished pods itself; a pending one reaches
		// the node, which says why not.
		if _, err := k.kubectl("exec", "noimage", "--", "true"); err == nil || !strings.Contains(err.Error(), "is not running (phase Pending)") {
			t.Errorf("exec into a pending pod: %v", err)
		}
		k.apply(kn.podYAML("huge", "Always", "true", "") + "    resources: {requests: {memory: 100Ti}}\n")
		time.Sleep(3 * time.Second)
		if p := k.pod("huge"); p.Status.Phase != "Pending" || p.Spec.NodeName != "" {
			t.Errorf("a pod asking for 100Ti: %+v", p)
		}
		if ev := k.ok("get", "events", "--field-selector", "involvedObject.name=huge"); !strings.Contains(ev, "Insufficient memory") {
			t.Errorf("no Insufficient memory event:\n%s", ev)
		}
		two := kn.podYAML("two", "Always", "true", "") + fmt.Sprintf("  - name: second\n    image: %s\n", kn.image)
		k.apply(two)
		p := k.waitPod("two", "Failed", time.Minute)
		if p.Status.Reason != "Unsupported" || !strings.Contains(p.Status.Message, "one container") {
			t.Errorf("two containers: %+v", p.Status)
		}
		k.ok("delete", "pod", "noimage", "huge", "two", "--wait=true")
	})

	t.Run("a VM killed outside Kubernetes restarts with its pod", func(t *testing.T) {
		in := kn.nodeOf(b)
		vm := kubelet.VMName("default", b.Metadata.Name)
		in.ok("vm", "kill", vm)
		waitFor(t, 3*time.Minute, "pod B running again, restarted", func() (bool, string) {
			p := k.pod(b.Metadata.Name)
			if len(p.Status.ContainerStatuses) == 0 {
				return false, p.state()
			}
			_, running := p.Status.ContainerStatuses[0].State["running"]
			return p.Status.Phase == "Running" && running && p.Status.ContainerStatuses[0].RestartCount >= 1, p.state()
		})
	})

	t.Run("banger-kubelet killed and restarted: NotReady, then adopted", func(t *testing.T) {
		n := kn.n1
		in := kn.in1
		before := podVMs(t, in)
		var onNode []podJSON
		for _, p := range []podJSON{a, b} {
			if p.Spec.NodeName == "bn1" {
				onNode = append(onNode, k.pod(p.Metadata.Name))
			}
		}
		n.kill()
		waitFor(t, 90*time.Second, "bn1 not Ready", func() (bool, string) {
			s, r, m := k.nodeReady("bn1")
			return s != "True", s + " " + r + " " + m
		})
		for _, v := range podVMs(t, in) {
			if v.State != "running" {
				t.Errorf("VM %s is %s while its kubelet is down", v.Name, v.State)
			}
		}
		n.start(kubeletBin(t))
		n.ready(time.Minute)
		time.Sleep(3 * time.Second)
		after := podVMs(t, in)
		if len(after) != len(before) {
			t.Errorf("VMs before %+v, after %+v", before, after)
		}
		for _, p := range onNode {
			now := k.pod(p.Metadata.Name)
			if now.Metadata.UID != p.Metadata.UID || now.Status.Phase != "Running" || now.Status.PodIP != p.Status.PodIP ||
				now.Status.ContainerStatuses[0].RestartCount != p.Status.ContainerStatuses[0].RestartCount {
				t.Errorf("pod %s before %+v after %+v", p.Metadata.Name, p.Status, now.Status)
			}
			if out, err := k.kubectl("exec", p.Metadata.Name, "--", "echo", "adopted"); err != nil || out != "adopted\n" {
				t.Errorf("exec after adoption: %q %v", out, err)
			}
		}
	})

	t.Run("bangerd stopped: NotReady with the reason, nothing deleted", func(t *testing.T) {
		in := kn.in2
		vms := podVMs(t, in)
		in.stopDaemon()
		waitFor(t, time.Minute, "bn2 NotReady, bangerd unreachable", func() (bool, string) {
			s, r, m := k.nodeReady("bn2")
			return s == "False" && r == "BangerdUnreachable", s + " " + r + " " + m
		})
		pods := k.ok("get", "pods", "-o", "wide")
		for _, v := range vms {
			if !strings.Contains(pods, v.Labels[kubelet.LabelPod]) {
				t.Errorf("pod %s went while bangerd was down:\n%s", v.Labels[kubelet.LabelPod], pods)
			}
		}
		in.ok("daemon", "status")
		kn.n2.ready(time.Minute)
		if after := podVMs(t, in); len(after) != len(vms) {
			t.Errorf("VMs before %d, after %d", len(vms), len(after))
		}
	})

	t.Run("clean delete", func(t *testing.T) {
		k.apply(kn.podYAML("booting", "Always", "sleep 1000", ""))
		waitFor(t, time.Minute, "booting's VM exists", func() (bool, string) {
			for _, in := range []*instance{kn.in1, kn.in2} {
				for _, v := range podVMs(t, in) {
					if v.Labels[kubelet.LabelPod] == "booting" {
						return true, v.State
					}
				}
			}
			return false, ""
		})
		k.ok("delete", "pod", "booting", "--wait=false")
		k.ok("delete", "deployment", "web")
		waitFor(t, 3*time.Minute, "every pod gone", func() (bool, string) {
			out, _ := k.kubectl("get", "pods", "--no-headers")
			return strings.TrimSpace(out) == "", out
		})
		for _, in := range []*instance{kn.in1, kn.in2} {
			if vms := podVMs(t, in); len(vms) != 0 {
				t.Errorf("VMs left: %+v", vms)
			}
			if out, _ := exec.Command("ip", "-n", in.netns, "-o", "link").CombinedOutput(); strings.Contains(string(out), "bg-") {
				t.Errorf("TAPs left in %s:\n%s", in.netns, out)
			}
			if out, _ := exec.Command("ip", "netns", "exec", in.netns, "nft", "list", "tables").CombinedOutput(); strings.Contains(string(out), "banger") {
				t.Errorf("nftables left in %s:\n%s", in.netns, out)
			}
			if out, _ := exec.Command("pgrep", "-f", "qemu-system.*"+in.home).CombinedOutput(); strings.TrimSpace(string(out)) != "" {
				t.Errorf("QEMU processes left: %s", out)
			}
		}
	})
}

// userOf is the user running the node of pod p.
func (kn *kubeNodes) userOf(p podJSON) hostUser {
	if p.Spec.NodeName == "bn1" {
		return kn.alice
	}
	return kn.bob
}
