package integration

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"banger/internal/e2b/envd/filesystem"
	"banger/internal/e2b/envd/filesystem/filesystemconnect"
	"banger/internal/e2b/envd/process"
	"banger/internal/e2b/envd/process/processconnect"
	"banger/internal/testenv"
)

// e2bDir is the Node package of the E2B SDK tests (test/e2b).
func e2bDir(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "e2b")
	testenv.RequireBinary(t, "node", "apt-get install nodejs npm")
	testenv.Require(t, fileExists(filepath.Join(dir, "node_modules", "e2b", "package.json")),
		"the e2b SDK is not installed: (cd test/e2b && npm ci)")
	return dir
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// e2bInstance is a banger instance with the E2B endpoint on, the busybox
// and Debian images (template "base" is Debian) and a key of root's.
type e2bInstance struct {
	*instance
	url, key string
	busybox  string // a static busybox on the host, to upload into sandboxes
}

func newE2BInstance(t testing.TB, extra string) *e2bInstance {
	in := newInstance(t)
	port := freePort(t, "127.0.0.1")
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	conf := fmt.Sprintf("default_kernel = \"k\"\nvmm = \"qemu\"\nvcpu = 1\nmemory = \"512M\"\ndisk_size = \"512M\"\n%s\n[e2b]\nlisten = \"127.0.0.1:%d\"\ndomain = \"e2b.test\"\naliases = [\"base=deb\"]\n", extra, port)
	os.WriteFile(in.path("config.toml"), []byte(conf), 0o644)
	return &e2bInstance{instance: in, url: url}
}

// setup pulls the images and makes root's key.
func (e *e2bInstance) setup(t testing.TB) {
	vmFixtures(t, e.instance)
	debianImage(t, e.instance)
	var k struct {
		Key    string `json:"key"`
		APIURL string `json:"api_url"`
	}
	e.jsonOut(&k, "e2b", "key", "create", "--name", "root-key", "--json")
	if !strings.HasPrefix(k.Key, "e2b_") || len(k.Key) != 44 || k.APIURL != e.url {
		t.Fatalf("key create: %+v, want an e2b_ key and the endpoint %s", k, e.url)
	}
	e.key = k.Key
	x := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", testenv.Fixture(t, testenv.BusyboxDeb, "the busybox-static .deb"), x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v %s", err, out)
	}
	e.busybox = filepath.Join(x, "bin", "busybox")
}

// node runs test/e2b's FILE with node's test runner against the
// endpoint, its output in the test's log, and returns what the script
// wrote to $E2B_TEST_OUT (JSON) when it passed.
func (e *e2bInstance) node(t *testing.T, file string, env ...string) map[string]any {
	t.Helper()
	dir := e2bDir(t)
	out := filepath.Join(t.TempDir(), "out.json")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	args := []string{"--test", "--test-concurrency=1", "--test-reporter=spec"}
	if p := os.Getenv("E2B_TEST_NAME"); p != "" {
		args = append(args, "--test-name-pattern="+p) // one test, when debugging
	}
	cmd := exec.CommandContext(ctx, "node", append(args, file)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "E2B_API_KEY="+e.key, "E2B_API_URL="+e.url, "E2B_SANDBOX_URL="+e.url, "E2B_DOMAIN=e2b.test",
		"E2B_TEST_OUT="+out, "BUSYBOX="+e.busybox, "NO_COLOR=1")
	cmd.Env = append(cmd.Env, env...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		t.Log(sc.Text())
	}
	io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		if b, err := os.ReadFile(e.path("state", "bangerd.log")); err == nil {
			lines := strings.Split(string(b), "\n")
			for _, l := range lines[max(0, len(lines)-60):] {
				t.Log("bangerd:", l)
			}
		}
		t.Fatalf("node --test %s: %v (its output is above)", file, err)
	}
	res := map[string]any{}
	if b, err := os.ReadFile(out); err == nil {
		json.Unmarshal(b, &res)
	}
	return res
}

// TestE2BSDK drives the endpoint with the real e2b SDK (npm e2b 2.51.0,
// test/e2b/sdk.test.mjs) against real VMs: sandboxes of the Debian and
// busybox images, commands, terminals, files, watches, the port relay,
// lists, timeouts, pause and connect, snapshots and forks, egress rules
// in a network of the test's own, and a second user's key that cannot
// reach the first one's sandboxes.
func TestE2BSDK(t *testing.T) {
	testenv.RequireBinary(t, "nft", "apt-get install nftables")
	e2bDir(t)
	e := newE2BInstance(t, "")
	w := e.egressWorld()
	e.env = append(e.env, "BANGER_DNS_UPSTREAM="+w.upstream)
	e.setup(t)
	alice := testUser(t, "banger-alice")
	e.shareWithGroup()
	r := e.runAs(alice, "e2b", "key", "create", "--name", "alice")
	if r.code != 0 {
		t.Fatalf("alice's key create: %d %s", r.code, r.stderr)
	}
	aliceKey := strings.TrimSpace(r.stdout)
	if !strings.Contains(r.stderr, "E2B_API_URL="+e.url) {
		t.Errorf("key create's hint: %q", r.stderr)
	}
	// Root sees both keys, with their owners; alice only hers.
	var keys []struct{ Name, OwnerName string }
	e.jsonOut(&keys, "e2b", "key", "ls", "--json")
	if len(keys) != 2 {
		t.Errorf("root's key ls: %+v", keys)
	}
	if r := e.runAs(alice, "e2b", "key", "ls", "-q"); r.code != 0 || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("alice's key ls: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := e.runAs(alice, "e2b", "key", "rm", "root-key"); r.code == 0 || !strings.Contains(r.stderr, "no E2B key") {
		t.Errorf("alice removed root's key: %d %q", r.code, r.stderr)
	}

	if f := os.Getenv("E2B_TEST_FILE"); f != "" {
		e.node(t, f) // a file of one's own, when debugging
		return
	}
	res := e.node(t, "sdk.test.mjs", "OTHER_KEY="+aliceKey, "EGRESS_ALLOWED=198.51.100.2:7000", "EGRESS_OTHER=198.51.100.3:7000")

	// What alice's key made is alice's VM; root's key never saw it.
	id, _ := res["aliceSandbox"].(string)
	if id == "" {
		t.Fatalf("the SDK tests recorded no sandbox of alice's: %v", res)
	}
	var v struct {
		Owner int               `json:"owner"`
		State string            `json:"state"`
		Label map[string]string `json:"labels"`
	}
	e.jsonOut(&v, "vm", "show", id, "--json")
	if v.Owner != alice.uid || v.Label["who"] != "alice" {
		t.Errorf("alice's sandbox %s: owner %d (alice is %d), labels %v", id, v.Owner, alice.uid, v.Label)
	}
	// Nothing the tests made outlives them but alice's sandbox (its
	// timeout is long) and the warm templates.
	var vms []vmJSON
	e.jsonOut(&vms, "vm", "ls", "--json")
	for _, x := range vms {
		if x.Name != id {
			t.Errorf("VM %s (%s) outlived the SDK tests", x.Name, x.State)
		}
	}
	// What the JavaScript SDK does not call: polled watchers and an
	// input stream, through the generated Go clients of envd's protocol.
	token, _ := res["aliceToken"].(string)
	e.envdExtras(t, id, token)
	// bangerd restarts; the sandbox, its record and its envd stay.
	e.ok("daemon", "stop")
	e.ok("daemon", "status")
	req, _ := http.NewRequest("GET", e.url+"/files?path=/home/user/polled.txt", nil)
	req.Header.Set("E2b-Sandbox-Id", id)
	req.Header.Set("X-Access-Token", token)
	if r, err := http.DefaultClient.Do(req); err != nil || r.StatusCode != 200 {
		t.Errorf("envd after a daemon restart: %v %v", r, err)
	} else if b, _ := io.ReadAll(r.Body); string(b) != "polled" {
		t.Errorf("a file read after a daemon restart: %q", b)
	}
	// A removed key no longer reaches anything.
	if r := e.runAs(alice, "e2b", "key", "rm", "alice"); r.code != 0 {
		t.Errorf("alice's key rm: %d %q", r.code, r.stderr)
	}
	e.node(t, "revoked.test.mjs", "OTHER_KEY="+aliceKey, "ALICE_SANDBOX="+id)
}

// TestE2BDomainTLS: the SDK with E2B_DOMAIN alone (no E2B_SANDBOX_URL),
// as against E2B itself: envd at https://49983-ID.DOMAIN and getHost's
// host names, served by bangerd over TLS with a certificate for
// *.DOMAIN, the names resolved to the host as a wildcard DNS record
// would (test/e2b/hosts.mjs).
func TestE2BDomainTLS(t *testing.T) {
	e2bDir(t)
	dir := t.TempDir()
	ca := writeTLS(t, dir, "e2b.test")
	// No domain in the config: the SDK takes E2B_DOMAIN, which carries
	// the test's port (the real thing listens on 443).
	e := newE2BInstance(t, "")
	conf, _ := os.ReadFile(e.path("config.toml"))
	conf = []byte(strings.Replace(string(conf), "domain = \"e2b.test\"\n", fmt.Sprintf("tls_cert = %q\ntls_key = %q\n", filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")), 1))
	os.WriteFile(e.path("config.toml"), conf, 0o644)
	e.url = strings.Replace(e.url, "http:", "https:", 1)
	vmFixtures(t, e.instance)
	var k struct {
		Key    string `json:"key"`
		APIURL string `json:"api_url"`
	}
	e.jsonOut(&k, "e2b", "key", "create", "--json")
	if k.APIURL != e.url {
		t.Fatalf("key create: API URL %q, want %q", k.APIURL, e.url)
	}
	e.key = k.Key
	port := e.url[strings.LastIndexByte(e.url, ':')+1:]
	e.node(t, "domain.test.mjs", "NODE_EXTRA_CA_CERTS="+ca, "NODE_OPTIONS=--import=./hosts.mjs", "E2B_SANDBOX_URL=", "E2B_DOMAIN=e2b.test:"+port)
}

// writeTLS writes a CA (ca.pem, returned) and a certificate it signed
// for *.domain and 127.0.0.1 (cert.pem, key.pem) into dir.
func writeTLS(t *testing.T, dir, domain string) string {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "banger test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTpl, caTpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "*." + domain}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), DNSNames: []string{"*." + domain, domain}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	caCert, _ := x509.ParseCertificate(caDER)
	der, err := x509.CreateCertificate(rand.Reader, tpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	write("cert.pem", "CERTIFICATE", der)
	write("key.pem", "EC PRIVATE KEY", kb)
	return filepath.Join(dir, "ca.pem")
}

// headers adds fixed headers to every request.
type headers struct {
	h  http.Header
	rt http.RoundTripper
}

func (h headers) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range h.h {
		r.Header[k] = v
	}
	return h.rt.RoundTrip(r)
}

// envdExtras checks envd's CreateWatcher, GetWatcherEvents,
// RemoveWatcher and StreamInput on sandbox id (a busybox one).
func (e *e2bInstance) envdExtras(t *testing.T, id, token string) {
	t.Helper()
	hc := &http.Client{Transport: headers{http.Header{"E2b-Sandbox-Id": {id}, "X-Access-Token": {token}}, http.DefaultTransport}}
	fs := filesystemconnect.NewFilesystemClient(hc, e.url, connect.WithProtoJSON())
	proc := processconnect.NewProcessClient(hc, e.url, connect.WithProtoJSON())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	w, err := fs.CreateWatcher(ctx, connect.NewRequest(&filesystem.CreateWatcherRequest{Path: "/home/user"}))
	if err != nil {
		t.Fatalf("CreateWatcher: %v", err)
	}
	wid := w.Msg.GetWatcherId()
	req, _ := http.NewRequest("POST", e.url+"/files?path=/home/user/polled.txt", strings.NewReader("polled"))
	req.Header.Set("Content-Type", "application/octet-stream")
	if r, err := hc.Do(req); err != nil || r.StatusCode != 200 {
		t.Fatalf("upload: %v %v", r, err)
	}
	var got []string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && !slices.Contains(got, "polled.txt"); time.Sleep(200 * time.Millisecond) {
		evs, err := fs.GetWatcherEvents(ctx, connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: wid}))
		if err != nil {
			t.Fatalf("GetWatcherEvents: %v", err)
		}
		for _, ev := range evs.Msg.GetEvents() {
			got = append(got, ev.GetName())
		}
	}
	if !slices.Contains(got, "polled.txt") {
		t.Errorf("the polled watcher saw %v, not polled.txt", got)
	}
	if _, err := fs.RemoveWatcher(ctx, connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: wid})); err != nil {
		t.Errorf("RemoveWatcher: %v", err)
	}
	if _, err := fs.GetWatcherEvents(ctx, connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: wid})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("a removed watcher's events: %v, want not_found", err)
	}

	yes := true
	st, err := proc.Start(ctx, connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "cat"}}, Stdin: &yes}))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer st.Close()
	if !st.Receive() || st.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("Start: no start event: %v", st.Err())
	}
	pid := st.Msg().GetEvent().GetStart().GetPid()
	in := proc.StreamInput(ctx)
	sel := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}}
	in.Send(&process.StreamInputRequest{Event: &process.StreamInputRequest_Start{Start: &process.StreamInputRequest_StartEvent{Process: sel}}})
	in.Send(&process.StreamInputRequest{Event: &process.StreamInputRequest_Data{Data: &process.StreamInputRequest_DataEvent{Input: &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: []byte("via stream\n")}}}}})
	if _, err := in.CloseAndReceive(); err != nil {
		t.Fatalf("StreamInput: %v", err)
	}
	var out string
	for !strings.Contains(out, "via stream") && st.Receive() {
		out += string(st.Msg().GetEvent().GetData().GetStdout())
	}
	if !strings.Contains(out, "via stream") {
		t.Errorf("cat echoed %q (%v)", out, st.Err())
	}
	if _, err := proc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: sel, Signal: process.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Errorf("SendSignal: %v", err)
	}
}
