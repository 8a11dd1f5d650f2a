package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/testenv"
)

// The Kubernetes tests run a real control plane (etcd, kube-apiserver,
// kube-scheduler, kube-controller-manager from
// scripts/kube-control-plane.sh, built once into a cache) and banger
// hosts as nodes: each a bangerd with its VM network in a namespace of
// the test's own, and banger-kubelet as a user of group banger, serving
// the kubelet port on a loopback address of its own.

// kubeBins is where the control plane's binaries are cached.
func kubeBins(t testing.TB) string {
	return cachedBuild(t, "BANGER_KUBE_BIN", "/var/cache/banger-test/kube-v1.37.2",
		"Kubernetes binaries", "scripts/kube-control-plane.sh", " (about 13 minutes once; .ci/run does it)")
}

// cachedBuild is the directory $env names (else def) that a build
// script filled and stamped; without its stamp the test needs it built.
func cachedBuild(t testing.TB, env, def, what, script, hint string) string {
	t.Helper()
	dir := os.Getenv(env)
	if dir == "" {
		dir = def
	}
	_, err := os.Stat(filepath.Join(dir, "stamp"))
	testenv.Require(t, err == nil, "no "+what+" in "+dir+": build with `"+script+" "+dir+"`"+hint)
	return dir
}

var (
	kubeletOnce sync.Once
	kubeletErr  error
)

// kubeletBin builds banger-kubelet into binDir once per run (only the
// Kubernetes tests need it: its build is the largest).
func kubeletBin(t testing.TB) string {
	t.Helper()
	kubeletOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/banger-kubelet")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			kubeletErr = fmt.Errorf("building banger-kubelet: %v\n%s", err, out)
		}
	})
	if kubeletErr != nil {
		t.Fatal(kubeletErr)
	}
	return filepath.Join(binDir, "banger-kubelet")
}

// kubeCluster is one control plane.
type kubeCluster struct {
	t     testing.TB
	bins  string
	state string
	env   map[string]string
}

func startKube(t testing.TB) *kubeCluster {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "etcd", "apt-get install etcd-server")
	testenv.RequireBinary(t, "openssl", "apt-get install openssl")
	k := &kubeCluster{t: t, bins: kubeBins(t), env: map[string]string{}}
	state, err := os.MkdirTemp("", "kube")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(state, 0o755)
	k.state = state
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "kube-control-plane.sh")
	t.Cleanup(func() {
		exec.Command(script, k.bins, "down", state).Run()
		os.RemoveAll(state)
	})
	cmd := exec.Command(script, k.bins, "up", state)
	// A killed kubelet's node turns NotReady after this (default 50 s).
	cmd.Env = append(os.Environ(), "KUBE_NODE_MONITOR_GRACE=20s")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("control plane: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(state, "cluster.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k2, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(k2, "#") {
			k.env[k2] = v
		}
	}
	return k
}

// kubectl runs kubectl as the cluster's admin.
func (k *kubeCluster) kubectl(args ...string) (string, error) {
	return k.kubectlIn(nil, args...)
}

func (k *kubeCluster) kubectlIn(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(k.bins, "kubectl"), append([]string{"--kubeconfig", k.env["KUBECONFIG"]}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s%s", strings.Join(args, " "), err, errb.String(), out.String())
	}
	return out.String(), nil
}

func (k *kubeCluster) ok(args ...string) string {
	k.t.Helper()
	out, err := k.kubectl(args...)
	if err != nil {
		k.t.Fatal(err)
	}
	return out
}

func (k *kubeCluster) apply(yaml string) {
	k.t.Helper()
	if _, err := k.kubectlIn([]byte(yaml), "apply", "-f", "-"); err != nil {
		k.t.Fatal(err)
	}
}

func (k *kubeCluster) jsonOut(v any, args ...string) {
	k.t.Helper()
	out := k.ok(append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		k.t.Fatalf("kubectl %v: %v\n%s", args, err, out)
	}
}

// waitFor polls cond every half second until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		ok, s := cond()
		if ok {
			return
		}
		last = s
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("after %s: %s; last: %s", d, what, last)
}

// podJSON is what the tests read of a pod.
type podJSON struct {
	Metadata struct {
		Name, UID   string
		Annotations map[string]string
	}
	Spec struct {
		NodeName string
	}
	Status struct {
		Phase, PodIP, Reason, Message string
		ContainerStatuses             []struct {
			RestartCount int
			State        map[string]struct {
				Reason   string
				Message  string
				ExitCode int
			}
		}
	}
}

func (p podJSON) state() string {
	if len(p.Status.ContainerStatuses) == 0 {
		return p.Status.Phase
	}
	for k, v := range p.Status.ContainerStatuses[0].State {
		return p.Status.Phase + "/" + k + "/" + v.Reason
	}
	return p.Status.Phase
}

func (k *kubeCluster) pod(name string) podJSON {
	k.t.Helper()
	var p podJSON
	k.jsonOut(&p, "get", "pod", name)
	return p
}

// waitPod waits until the pod's phase is phase.
func (k *kubeCluster) waitPod(name, phase string, d time.Duration) podJSON {
	k.t.Helper()
	var p podJSON
	waitFor(k.t, d, "pod "+name+" "+phase, func() (bool, string) {
		out, err := k.kubectl("get", "pod", name, "-o", "json")
		if err != nil {
			return false, err.Error()
		}
		p = podJSON{}
		json.Unmarshal([]byte(out), &p)
		return p.Status.Phase == phase, p.state()
	})
	return p
}

// kubeNode is one banger host as a Kubernetes node.
type kubeNode struct {
	k        *kubeCluster
	name, ip string
	port     int
	in       *instance
	user     hostUser
	dir      string // kubeconfig, certificates, root dir, log
	extra    []string
	mu       sync.Mutex
	cmd      *exec.Cmd
	logFile  *os.File
}

// bangerNodeRBAC is what a banger node needs besides the Node
// authorizer's grants: virtual-kubelet watches Secrets, ConfigMaps and
// Services of every namespace (to resolve pods' environments), and the
// kubelet port asks the apiserver who a client is and whether it may
// (TokenReview, SubjectAccessReview: system:auth-delegator).
const bangerNodeRBAC = `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: banger-kubelet
rules:
- apiGroups: [""]
  resources: [secrets, configmaps, services]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: banger-kubelet
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: banger-kubelet}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:nodes}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: banger-kubelet-auth-delegator
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:nodes}
`

// writeBangerConfig gives the instance the config a node's bangerd has:
// the test's kernel, QEMU, small VMs, and user as the one that may set
// the VM subnet (banger-kubelet's user).
func writeBangerConfig(t testing.TB, in *instance, user string) {
	t.Helper()
	cfg := fmt.Sprintf("default_kernel = \"k\"\nvmm = \"qemu\"\nvcpu = 1\nmemory = \"256M\"\ndisk_size = \"256M\"\n[net]\nsubnet_users = [%q]\n", user)
	if err := os.WriteFile(in.path("config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// addNode makes in (whose bangerd runs, shared with group banger) the
// node name, its kubelet port on ip, run by u.
func (k *kubeCluster) addNode(name, ip string, in *instance, u hostUser, extra ...string) *kubeNode {
	t := k.t
	t.Helper()
	bin := kubeletBin(t)
	n := &kubeNode{k: k, name: name, ip: ip, in: in, user: u, extra: extra, port: freePort(t, ip)}
	dir, err := os.MkdirTemp("", "kn")
	if err != nil {
		t.Fatal(err)
	}
	n.dir = dir
	t.Cleanup(func() { os.RemoveAll(dir) })
	ca, caKey := k.loadCA()
	clientCert, clientKey := signCert(t, ca, caKey, pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
		x509.ExtKeyUsageClientAuth, nil)
	serveCert, serveKey := signCert(t, ca, caKey, pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
		x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP(ip)})
	files := map[string][]byte{"client.crt": clientCert, "client.key": clientKey, "serve.crt": serveCert, "serve.key": serveKey}
	caPEM, _ := os.ReadFile(k.env["CA_CERT"])
	files["ca.crt"] = caPEM
	files["kubeconfig"] = []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: %s, certificate-authority: %s}
users:
- name: u
  user: {client-certificate: %s, client-key: %s}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
`, k.env["APISERVER_URL"], filepath.Join(dir, "ca.crt"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")))
	for f, b := range files {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "root"), 0o700)
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chown(p, u.uid, u.gid) })
	k.apply(bangerNodeRBAC)
	n.start(bin)
	return n
}

func (n *kubeNode) args() []string {
	return append([]string{"--kubeconfig", filepath.Join(n.dir, "kubeconfig"), "--node-name", n.name, "--node-ip", n.ip,
		"--port", strconv.Itoa(n.port), "--client-ca-file", filepath.Join(n.dir, "ca.crt"),
		"--tls-cert-file", filepath.Join(n.dir, "serve.crt"), "--tls-private-key-file", filepath.Join(n.dir, "serve.key"),
		"--host", n.in.path("run", "bangerd.sock"), "--root-dir", filepath.Join(n.dir, "root"), "--restart-backoff", "2s"}, n.extra...)
}

// start runs banger-kubelet as the node's user.
func (n *kubeNode) start(bin string) {
	t := n.k.t
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.logFile == nil {
		f, err := os.Create(filepath.Join(t.TempDir(), n.name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		n.logFile = f
		t.Cleanup(func() {
			n.kill()
			if t.Failed() {
				b, _ := os.ReadFile(f.Name())
				if len(b) > 30000 {
					b = b[len(b)-30000:]
				}
				t.Logf("banger-kubelet %s's log (end):\n%s", n.name, b)
			}
			f.Close()
		})
	}
	cmd := exec.Command(bin, n.args()...)
	cmd.Env = []string{"HOME=" + n.user.home, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Dir = n.user.home
	cmd.Stdout, cmd.Stderr = n.logFile, n.logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(n.user.uid), Gid: uint32(n.user.gid), Groups: n.user.groups}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.cmd = cmd
}

// kill ends banger-kubelet as a crash would (SIGKILL).
func (n *kubeNode) kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.cmd.Process.Kill()
		n.cmd.Wait()
		n.cmd = nil
	}
}

// ready waits until the Node is Ready and returns its podCIDR.
func (n *kubeNode) ready(d time.Duration) string {
	n.k.t.Helper()
	cidr := ""
	waitFor(n.k.t, d, "node "+n.name+" Ready", func() (bool, string) {
		var node struct {
			Spec   struct{ PodCIDR string }
			Status struct {
				Conditions []struct{ Type, Status, Reason, Message string }
			}
		}
		out, err := n.k.kubectl("get", "node", n.name, "-o", "json")
		if err != nil {
			return false, err.Error()
		}
		json.Unmarshal([]byte(out), &node)
		cidr = node.Spec.PodCIDR
		for _, c := range node.Status.Conditions {
			if c.Type == "Ready" {
				return c.Status == "True", c.Reason + ": " + c.Message
			}
		}
		return false, "no Ready condition"
	})
	return cidr
}

// nodeReady is the node's Ready condition: status, reason, message.
func (k *kubeCluster) nodeReady(name string) (string, string, string) {
	var node struct {
		Status struct {
			Conditions []struct{ Type, Status, Reason, Message string }
		}
	}
	out, err := k.kubectl("get", "node", name, "-o", "json")
	if err != nil {
		return "", "", err.Error()
	}
	json.Unmarshal([]byte(out), &node)
	for _, c := range node.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status, c.Reason, c.Message
		}
	}
	return "", "", ""
}

func (k *kubeCluster) loadCA() (*x509.Certificate, any) {
	k.t.Helper()
	cb, err := os.ReadFile(k.env["CA_CERT"])
	if err != nil {
		k.t.Fatal(err)
	}
	blk, _ := pem.Decode(cb)
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		k.t.Fatal(err)
	}
	kb, err := os.ReadFile(k.env["CA_KEY"])
	if err != nil {
		k.t.Fatal(err)
	}
	blk, _ = pem.Decode(kb)
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		k.t.Fatal(err)
	}
	return ca, key
}

// signCert makes a key and a certificate for subject signed by ca.
func signCert(t testing.TB, ca *x509.Certificate, caKey any, subject pkix.Name, use x509.ExtKeyUsage, ips []net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tpl := &x509.Certificate{SerialNumber: serial, Subject: subject, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{use}, IPAddresses: ips}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

// freePort is a TCP port free on ip now.
func freePort(t testing.TB, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// linkNamespaces joins the VM networks of two nodes with a veth pair
// (10.99.0.1 and .2) and routes each one's pod CIDR via the other.
func linkNamespaces(t testing.TB, ns1, cidr1, ns2, cidr2 string) {
	t.Helper()
	run := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	run("link", "add", "kv1", "netns", ns1, "type", "veth", "peer", "kv2", "netns", ns2)
	run("-n", ns1, "addr", "add", "10.99.0.1/24", "dev", "kv1")
	run("-n", ns2, "addr", "add", "10.99.0.2/24", "dev", "kv2")
	run("-n", ns1, "link", "set", "kv1", "up")
	run("-n", ns2, "link", "set", "kv2", "up")
	run("-n", ns1, "route", "add", cidr2, "via", "10.99.0.2")
	run("-n", ns2, "route", "add", cidr1, "via", "10.99.0.1")
}

// linesOf reads lines from r into a channel until it ends.
func linesOf(r *bufio.Reader) <-chan string {
	ch := make(chan string, 64)
	go func() {
		defer close(ch)
		for {
			l, err := r.ReadString('\n')
			if l != "" {
				ch <- strings.TrimRight(l, "\n")
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}
