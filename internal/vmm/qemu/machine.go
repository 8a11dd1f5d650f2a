package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/vmm"
)

// Backend starts QEMU microvm VMs. It is safe for concurrent use.
type Backend struct {
	bin  string
	caps Caps
}

// New returns a backend running the QEMU binary at bin on a host with
// caps (see Probe).
func New(bin string, caps Caps) (*Backend, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("QEMU binary %s: %w: install qemu-system-x86", bin, err)
	}
	return &Backend{bin: bin, caps: caps}, nil
}

// Features of QEMU microvm: pause, snapshots (of VMs whose RAM is a
// file), the agent over vsock where the host has vhost-vsock
// (virtio-serial otherwise).
func (b *Backend) Features() vmm.Features {
	return vmm.Features{Pause: true, Snapshots: true, AgentOverVsock: b.caps.VhostVsock}
}

// Caps returns the capabilities the backend was made with.
func (b *Backend) Caps() Caps { return b.caps }

// Machine is one QEMU process.
type Machine struct {
	*vmm.Process
	dir     string
	qmp     *QMP
	cid     uint32 // vhost-vsock context id, 0 without vhost-vsock
	memFile string // the guest RAM file, "" for anonymous memory
	// private: memFile is a snapshot's, mapped copy-on-write (share=off);
	// the guest's RAM is not all in it.
	private bool
}

var (
	_ vmm.Machine = (*Machine)(nil)
	_ vmm.Pauser  = (*Machine)(nil)
)

// Start launches QEMU for spec and connects to its QMP socket. The guest
// boots at once. On error nothing keeps running.
func (b *Backend) Start(ctx context.Context, spec vmm.Spec) (*Machine, error) {
	if spec.MemoryFile != "" {
		// A booting guest starts from zeroed RAM in a file made here,
		// never from one a crashed VMM (or another user) left: QEMU maps
		// it shared, so whoever else could open it would see and write
		// the guest's memory.
		f, _, err := vmm.CreatePrivateFile(spec.MemoryFile)
		if err != nil {
			return nil, fmt.Errorf("guest RAM: %w", err)
		}
		f.Close()
	}
	return b.start(ctx, spec)
}

// start launches QEMU with extra arguments after the spec's.
func (b *Backend) start(ctx context.Context, spec vmm.Spec, extra ...string) (_ *Machine, err error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, err
	}
	for _, f := range []string{QMPSocket, AgentSocket} {
		os.Remove(filepath.Join(spec.Dir, f))
	}
	logf, err := os.OpenFile(filepath.Join(spec.Dir, VMMLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	console, release, err := vmm.ConsoleWriter(spec)
	if err != nil {
		return nil, err
	}
	// QEMU holds its own copy from here on; its exit ends the log's
	// writer (consoleFD is the first extra file).
	defer release()
	proc, err := vmm.StartProcess(spec.StartHook, "", b.bin, append(Args(spec, b.caps), extra...), logf, logf, console)
	if err != nil {
		return nil, err
	}
	m := &Machine{Process: proc, dir: spec.Dir, memFile: spec.MemoryFile, private: spec.MemoryPrivate}
	if b.caps.VhostVsock {
		m.cid = GuestCID(spec.Dir)
	}
	defer func() {
		if err != nil {
			m.Kill()
			<-m.Exited()
		}
	}()
	sock := filepath.Join(spec.Dir, QMPSocket)
	deadline := time.Now().Add(10 * time.Second)
	for {
		q, derr := DialQMP(ctx, sock)
		if derr == nil {
			m.qmp = q
			return m, nil
		}
		select {
		case <-m.Exited():
			return nil, m.ExitError(" before its QMP socket appeared")
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("QMP socket %s did not answer within 10s: %s", sock, m.LogTail())
		}
	}
}

// Attach adopts the running QEMU of the VM in dir (after a daemon
// restart): its process and its QMP socket.
func Attach(ctx context.Context, dir string, pid int) (*Machine, error) {
	proc, err := vmm.AttachProcess(pid, filepath.Join(dir, VMMLog))
	if err != nil {
		return nil, err
	}
	q, err := DialQMP(ctx, filepath.Join(dir, QMPSocket))
	if err != nil {
		return nil, fmt.Errorf("attaching to QEMU %d: %w", pid, err)
	}
	m := &Machine{Process: proc, dir: dir, qmp: q}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		args := strings.Split(string(b), "\x00")
		for i, a := range args {
			if strings.Contains(a, "vhost-vsock-device") {
				m.cid = GuestCID(dir)
			}
			if i > 0 && args[i-1] == "-object" && strings.HasPrefix(a, "memory-backend-file,") {
				for _, kv := range strings.Split(a, ",") {
					if p, ok := strings.CutPrefix(kv, "mem-path="); ok {
						m.memFile = p
					}
					if kv == "share=off" {
						m.private = true
					}
				}
			}
		}
	}
	return m, nil
}

// QMP is the machine's QMP client.
func (m *Machine) QMP() *QMP { return m.qmp }

// ConsolePath implements vmm.Machine.
func (m *Machine) ConsolePath() string { return filepath.Join(m.dir, ConsoleLog) }

// Stop presses the ACPI power button (banger's init stage and systemd
// both shut down cleanly on it; microvm has no keyboard for
// Ctrl-Alt-Del), waits until ctx ends, then asks QEMU to quit and finally
// kills it.
func (m *Machine) Stop(ctx context.Context) error {
	select {
	case <-m.Exited():
		return nil
	default:
	}
	if _, err := m.qmp.Execute(ctx, "system_powerdown", nil); err == nil {
		if m.Wait(ctx) == nil {
			return nil
		}
	}
	qctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	m.qmp.Execute(qctx, "quit", nil)
	cancel()
	select {
	case <-m.Exited():
		return nil
	case <-time.After(2 * time.Second):
	}
	if err := m.Kill(); err != nil {
		return err
	}
	<-m.Exited()
	return nil
}

// Pause implements vmm.Pauser.
func (m *Machine) Pause(ctx context.Context) error {
	_, err := m.qmp.Execute(ctx, "stop", nil)
	return err
}

// Resume implements vmm.Pauser.
func (m *Machine) Resume(ctx context.Context) error {
	_, err := m.qmp.Execute(ctx, "cont", nil)
	return err
}

// DialAgent implements vmm.Machine: the virtio-serial port's host end.
// There is one channel; port is ignored.
// The agent channel is vhost-vsock when the VM has it, with the
// virtio-serial port (every VM has one) as the fallback.
func (m *Machine) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	if m.cid != 0 {
		if c, err := vmm.DialVsock(ctx, m.cid, port); err == nil {
			return c, nil
		}
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", filepath.Join(m.dir, AgentSocket))
}
