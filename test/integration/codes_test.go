package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/client"
	"banger/internal/api"
	"banger/internal/imagepull/imagetest"
	"banger/internal/testenv"
)

// apiErr is err as the public client returns a daemon's error.
func apiErr(t *testing.T, what string, err error) *client.APIError {
	t.Helper()
	var ae *client.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("%s: %v (%T), want an *APIError", what, err, err)
	}
	return ae
}

// rawAs sends one request to the daemon's socket as u, with curl, and
// returns the HTTP status and the error body's code.
func (in *instance) rawAs(t *testing.T, u hostUser, method, path, body string) (int, string) {
	t.Helper()
	testenv.RequireBinary(t, "curl", "apt-get install curl")
	cmd := exec.Command("curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket", in.path("run", "bangerd.sock"),
		"-X", method, "-H", "Content-Type: application/json", "--data-binary", body, "http://bangerd"+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: u.groups}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s %s as %s: %v %s", method, path, u.name, err, out)
	}
	i := strings.LastIndexByte(string(out), '\n')
	var e api.Error
	json.Unmarshal(out[:i], &e)
	var status int
	json.Unmarshal(out[i+1:], &status)
	return status, e.Code
}

// TestErrorCodes: each error code a client can act on, as the public
// client sees it over the daemon's socket, produced by a real request
// that fails for that reason (the daemon's mapping is tested by what it
// answers, not by a copy of it). Codes no request here can provoke
// cheaply are in internal/daemon's TestClassifyRest.
func TestErrorCodes(t *testing.T) {
	testenv.RequireRoot(t) // other users, a small disk
	reg := imagetest.StartRegistry(t)
	ref := smallImage(t, reg, "codes/app:1", "a")
	other := smallImage(t, reg, "codes/other:1", "b")
	in := newInstance(t)
	in.ok("image", "pull", "-q", ref, "--name", "app")
	in.ok("kernel", "import", "k", "--from", testenv.KernelPackage(t))
	c := client.New(in.path("run", "bangerd.sock"))
	ctx := context.Background()

	locked := imagetest.StartRegistry(t)
	locked.SetAuth("alice", "s3cret")
	private := smallImage(t, locked, "codes/private:1", "p")

	twoTags := filepath.Join(t.TempDir(), "two.tar")
	one := imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{imagetest.Layer(t, imagetest.Entry{Name: "x", Body: "1"})}, Config: v1.Config{Cmd: []string{"/x"}}})
	two := imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{imagetest.Layer(t, imagetest.Entry{Name: "x", Body: "2"})}, Config: v1.Config{Cmd: []string{"/x"}}})
	writeDockerArchive(t, twoTags, map[string]v1.Image{"one:1": one, "two:1": two})
	notKernel := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notKernel, []byte(strings.Repeat("not a kernel ", 100)), 0o644)
	var notTar bytes.Buffer
	notTar.WriteString(strings.Repeat("plain text, no archive\n", 100))

	importOf := func(name, path string) error {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = c.ImportImage(ctx, api.ImportOptions{Name: name}, f, nil)
		return err
	}
	for _, tc := range []struct {
		code     string
		sentinel error // the client's sentinel for it, when it has one
		status   int   // 0: ended a stream, or not checked
		do       func() error
	}{
		{api.CodeNotFound, client.ErrNotFound, http.StatusNotFound, func() error { _, err := c.Image(ctx, "nope"); return err }},
		{api.CodeExists, client.ErrExists, 0, func() error {
			_, err := c.PullImage(ctx, api.PullRequest{Ref: other, Name: "app"}, nil)
			return err
		}},
		{api.CodeInvalid, client.ErrInvalid, 0, func() error {
			_, err := c.PullImage(ctx, api.PullRequest{Ref: "Not/A::Reference"}, nil)
			return err
		}},
		{api.CodeInvalid, client.ErrInvalid, 0, func() error {
			_, err := c.CreateVM(ctx, api.VMCreateRequest{Name: "tiny", Image: "app", Kernel: "k", VMM: "qemu", Network: "none", MemoryMiB: 1, NoStart: true}, nil)
			return err
		}},
		{api.CodeAuth, nil, 0, func() error { _, err := c.PullImage(ctx, api.PullRequest{Ref: private}, nil); return err }},
		{api.CodeUnreachable, nil, 0, func() error {
			_, err := c.PullImage(ctx, api.PullRequest{Ref: "127.0.0.1:1/codes/none:1"}, nil)
			return err
		}},
		{api.CodeBadImage, nil, 0, func() error {
			_, err := c.ImportImage(ctx, api.ImportOptions{Name: "junk"}, &notTar, nil)
			return err
		}},
		{api.CodeAmbiguous, nil, 0, func() error { return importOf("amb", twoTags) }},
		{api.CodeBadKernel, nil, 0, func() error {
			_, err := c.ImportKernel(ctx, api.KernelImportRequest{Name: "notk", From: notKernel})
			return err
		}},
	} {
		err := tc.do()
		ae := apiErr(t, tc.code, err)
		if ae.Code != tc.code || (tc.status != 0 && ae.Status != tc.status) {
			t.Errorf("want %s (HTTP %d): got %s (HTTP %d): %s", tc.code, tc.status, ae.Code, ae.Status, ae.Message)
		}
		if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
			t.Errorf("%s: errors.Is(err, client's sentinel) is false", tc.code)
		}
	}

	// A VM: a state it cannot leave that way, and a start whose VMM dies.
	if _, err := c.CreateVM(ctx, api.VMCreateRequest{Name: "v", Image: "app", Kernel: "k", VMM: "qemu", Network: "none", VCPU: 1, MemoryMiB: 256, DiskBytes: 128 << 20, NoStart: true}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := c.VMAction(ctx, "v", "stop", nil)
	if ae := apiErr(t, "stop a VM never started", err); ae.Code != api.CodeConflict || !errors.Is(err, client.ErrConflict) {
		t.Errorf("stop a VM never started: %s %q, want conflict", ae.Code, ae.Message)
	}
	var k kernelJSON
	in.jsonOut(&k, "kernel", "show", "k", "--json")
	if err := os.WriteFile(k.Vmlinux, []byte("no kernel here"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = c.VMAction(ctx, "v", "start", nil)
	if ae := apiErr(t, "start on a broken kernel", err); ae.Code != api.CodeVMStart {
		t.Errorf("start on a broken kernel: %s %q, want %s", ae.Code, ae.Message, api.CodeVMStart)
	}

	// Another user: root's image is not theirs to remove, and [limits]
	// stops their VMs.
	alice := testUser(t, "banger-alice")
	in.shareWithGroup()
	if status, code := in.rawAs(t, alice, "DELETE", "/v1/images/app", ""); status != http.StatusForbidden || code != api.CodeForbidden {
		t.Errorf("alice removes root's image: HTTP %d %s, want 403 %s", status, code, api.CodeForbidden)
	}
	in.stopDaemon()
	os.WriteFile(in.path("config.toml"), []byte("[limits]\nvcpus = 1\n"), 0o644)
	in.daemonPID()
	in.shareWithGroup()
	body := `{"name":"big","image":"app","kernel":"k","vmm":"qemu","network":"none","vcpu":2,"memory_mib":256,"disk_bytes":134217728}`
	if status, code := in.rawAs(t, alice, "POST", "/v1/vms", body); status != http.StatusForbidden || code != api.CodeLimit {
		t.Errorf("alice past [limits] vcpus: HTTP %d %s, want 403 %s", status, code, api.CodeLimit)
	}

	// A full disk.
	full := newInstance(t)
	full.smallDisk(t, "20m")
	big := randomImage(t, reg, "codes/big:1", 24<<20)
	full.daemonPID()
	_, err = client.New(full.path("run", "bangerd.sock")).PullImage(ctx, api.PullRequest{Ref: big}, nil)
	if ae := apiErr(t, "pull onto a full disk", err); ae.Code != api.CodeNoSpace {
		t.Errorf("pull onto a full disk: %s %q, want %s", ae.Code, ae.Message, api.CodeNoSpace)
	}
}
