package vm

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/guestinit"
	"banger/internal/vmm"
	"banger/internal/vmm/qemu"
	"banger/internal/vsockagent"
)

// waitConsole waits until the console log contains s.
func waitConsole(t *testing.T, path, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), s) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	t.Fatalf("console never showed %q:\n%s", s, tail(string(b), 20))
}

func TestQEMUBackendLifecycle(t *testing.T) {
	requireQEMU(t)
	k := importKernel(t)
	data := dataDisk(t, &guestinit.RunSpec{Cmd: []string{"/bin/sh", "-c", "echo STARTED; sleep 600"}, PowerOffOnExit: true})
	b, err := qemu.New("/usr/bin/qemu-system-x86_64", qemu.Probe())
	if err != nil {
		b2, err2 := exec.LookPath("qemu-system-x86_64")
		if err2 != nil {
			t.Fatal(err)
		}
		b, _ = qemu.New(b2, qemu.Probe())
	}
	dir, _ := os.MkdirTemp("", "qvm")
	defer os.RemoveAll(dir)
	spec := vmm.Spec{ID: "driver-test", Dir: dir, VCPUs: 1, MemoryMiB: 512, Kernel: k.Vmlinux, Initrd: k.Initrd,
		Cmdline: "console=ttyS0 panic=-1 reboot=t banger.root=/dev/vda banger.data=/dev/vdb",
		Drives:  []vmm.Drive{{ID: "root", Path: busyboxImage(t), ReadOnly: true}, {ID: "data", Path: data}}}
	ctx := context.Background()
	m, err := b.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	waitConsole(t, m.ConsolePath(), "STARTED", 2*time.Minute)

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.QMP().Status(ctx); st != "paused" {
		t.Errorf("after pause: %s", st)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.QMP().Status(ctx); st != "running" {
		t.Errorf("after resume: %s", st)
	}
	// The agent channel: QEMU accepts on its end whether or not an agent
	// listens in the guest, so a dial proves nothing. A greeting and an
	// exec with its output and exit status do.
	actx, acancel := context.WithTimeout(ctx, time.Minute)
	defer acancel()
	if out, err := agentEcho(actx, m, "agent-answers"); err != nil || out != "agent-answers\n" {
		t.Errorf("agent channel: exec echo = %q, %v", out, err)
	}

	// Graceful stop: the ACPI power button reaches the init stage, which
	// stops the command and powers off cleanly.
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	if err := m.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	console, _ := os.ReadFile(m.ConsolePath())
	if !strings.Contains(string(console), "power button: shutting down") || !strings.Contains(string(console), "command exited: killed by terminated") {
		t.Errorf("stop was not graceful (%s):\n%s", time.Since(start), tail(string(console), 10))
	}
	t.Logf("graceful stop took %s", time.Since(start).Round(time.Millisecond))
	if out, err := exec.Command("e2fsck", "-fn", data).CombinedOutput(); err != nil {
		t.Errorf("writable disk not clean after stop: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, qemu.QMPSocket)); err == nil {
		if _, err := qemu.DialQMP(ctx, filepath.Join(dir, qemu.QMPSocket)); err == nil {
			t.Errorf("QEMU still answers after Stop")
		}
	}
}

// agentEcho runs `sh -c "echo word"` in the guest through the agent channel of m:
// a full exchange of the agent protocol (greeting, stream, output, exit).
func agentEcho(ctx context.Context, m vmm.Machine, word string) (string, error) {
	conn, err := m.DialAgent(ctx, vsockagent.VsockPort)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	s, err := vsockagent.Client(vsockagent.NewChannel(conn), vsockagent.Hello{}, conn)
	if err != nil {
		return "", fmt.Errorf("greeting: %w", err)
	}
	defer s.Close()
	st, err := s.Open(ctx, vsockagent.Request{Op: "exec", Argv: []string{"sh", "-c", "echo " + word}})
	if err != nil {
		return "", err
	}
	st.CloseWrite()
	out, err := io.ReadAll(st)
	if err != nil {
		return "", err
	}
	e, err := st.Wait(ctx)
	if err != nil || e.Code != 0 {
		return string(out), fmt.Errorf("exit %+v: %v", e, err)
	}
	return string(out), nil
}
