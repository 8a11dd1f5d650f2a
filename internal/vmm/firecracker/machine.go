package firecracker

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"banger/internal/system"
	"banger/internal/vmm"
)

// File names in a VM directory.
const (
	APISocket   = "fc.sock"
	VsockSocket = "vsock.sock"
	ConsoleLog  = "console.log"
	VMMLog      = "firecracker.log"
	MetricsFile = "metrics.json"
	// GuestCID is the vsock context id every guest gets; each VM has its
	// own vsock socket, so they need not differ.
	GuestCID = 3
)

// Backend starts Firecracker VMs. It is safe for concurrent use.
type Backend struct {
	bin string
}

// New returns a backend running the firecracker binary at bin.
func New(bin string) (*Backend, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("firecracker binary %s: %w: install Firecracker or set its path in the config", bin, err)
	}
	return &Backend{bin: bin}, nil
}

// Features of Firecracker.
func (b *Backend) Features() vmm.Features {
	return vmm.Features{Pause: true, Snapshots: true, AgentOverVsock: true}
}

// Machine is one Firecracker process.
type Machine struct {
	*vmm.Process
	dir    string
	client *Client
}

// Attach adopts the running Firecracker of the VM in dir (after a daemon
// restart): its process and its API socket, checked with a request.
func Attach(ctx context.Context, dir string, pid int) (*Machine, error) {
	proc, err := vmm.AttachProcess(pid, filepath.Join(dir, VMMLog))
	if err != nil {
		return nil, err
	}
	m := &Machine{Process: proc, dir: dir, client: NewClient(filepath.Join(dir, APISocket))}
	if _, err := m.client.InstanceInfo(ctx); err != nil {
		return nil, fmt.Errorf("attaching to Firecracker %d: %w", pid, err)
	}
	return m, nil
}

var (
	_ vmm.Machine     = (*Machine)(nil)
	_ vmm.Pauser      = (*Machine)(nil)
	_ vmm.Snapshotter = (*Machine)(nil)
)

// spawn starts firecracker in dir and waits for its API socket.
func (b *Backend) spawn(ctx context.Context, id, dir string) (m *Machine, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, APISocket)
	for _, f := range []string{APISocket, VsockSocket} {
		os.Remove(filepath.Join(dir, f))
	}
	console, err := os.OpenFile(filepath.Join(dir, ConsoleLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer console.Close()
	vmmLog, err := os.OpenFile(filepath.Join(dir, VMMLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer vmmLog.Close()
	proc, err := vmm.StartProcess(b.bin, []string{"--api-sock", sock, "--id", id}, console, vmmLog)
	if err != nil {
		return nil, err
	}
	m = &Machine{Process: proc, dir: dir, client: NewClient(sock)}
	defer func() {
		if err != nil {
			m.Kill()
			<-m.Exited()
		}
	}()
	if err := m.waitSocket(ctx, sock); err != nil {
		return nil, err
	}
	return m, nil
}

// waitSocket waits for the API socket to answer, failing as soon as the
// process exits, with the tail of its log in the error.
func (m *Machine) waitSocket(ctx context.Context, sock string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-m.Exited():
			return fmt.Errorf("%w before its API socket appeared (%s): %s", vmm.ErrExited, m.ExitState(), m.LogTail())
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("firecracker API socket %s did not appear within 10s: %s", sock, m.LogTail())
		}
	}
}

// Start launches Firecracker for spec, configures it and boots the guest.
// The process outlives ctx; ctx only bounds the start. On error nothing
// keeps running.
func (b *Backend) Start(ctx context.Context, spec vmm.Spec) (_ *Machine, err error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	m, err := b.spawn(ctx, spec.ID, spec.Dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Kill()
			<-m.Exited()
		}
	}()
	c := m.client
	if err := m.configureLogs(ctx); err != nil {
		return nil, err
	}
	if err := c.PutMachineConfig(ctx, MachineConfig{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB}); err != nil {
		return nil, err
	}
	if err := c.PutBootSource(ctx, BootSource{KernelImagePath: spec.Kernel, InitrdPath: spec.Initrd, BootArgs: spec.Cmdline}); err != nil {
		return nil, err
	}
	for _, d := range spec.Drives {
		if err := c.PutDrive(ctx, Drive{DriveID: d.ID, PathOnHost: d.Path, IsReadOnly: d.ReadOnly}); err != nil {
			return nil, err
		}
	}
	if spec.TAP != "" {
		if err := c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: spec.TAP, GuestMAC: spec.MAC}); err != nil {
			return nil, err
		}
	}
	if err := c.PutVsock(ctx, Vsock{GuestCID: GuestCID, UDSPath: filepath.Join(spec.Dir, VsockSocket)}); err != nil {
		return nil, err
	}
	if err := c.Action(ctx, "InstanceStart"); err != nil {
		return nil, fmt.Errorf("starting the guest: %w: console: %s", err, m.consoleTail())
	}
	return m, nil
}

func (m *Machine) configureLogs(ctx context.Context) error {
	// Firecracker opens these, it does not create them.
	for _, f := range []string{VMMLog, MetricsFile} {
		fh, err := os.OpenFile(filepath.Join(m.dir, f), os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		fh.Close()
	}
	if err := m.client.PutLogger(ctx, Logger{LogPath: filepath.Join(m.dir, VMMLog), Level: "Info", ShowLevel: true}); err != nil {
		return err
	}
	return m.client.PutMetrics(ctx, Metrics{MetricsPath: filepath.Join(m.dir, MetricsFile)})
}

func (m *Machine) consoleTail() string {
	b, _ := os.ReadFile(m.ConsolePath())
	return system.Tail(string(b), 400)
}

// Restore starts a new Firecracker in dir from a snapshot written by
// CreateSnapshot, resumed or still paused. The snapshot names the disks
// by the paths it was taken with.
func (b *Backend) Restore(ctx context.Context, id, dir, statePath, memPath string, resume bool) (_ *Machine, err error) {
	m, err := b.spawn(ctx, id, dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Kill()
			<-m.Exited()
		}
	}()
	if err := m.configureLogs(ctx); err != nil {
		return nil, err
	}
	if err := m.client.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: statePath,
		MemBackend: MemBackend{BackendType: "File", BackendPath: memPath}, ResumeVM: resume}); err != nil {
		return nil, fmt.Errorf("loading snapshot: %w", err)
	}
	return m, nil
}

// Client is the machine's API client.
func (m *Machine) Client() *Client { return m.client }

// ConsolePath implements vmm.Machine.
func (m *Machine) ConsolePath() string { return filepath.Join(m.dir, ConsoleLog) }

// Stop sends Ctrl-Alt-Del (banger's init stage powers off on it, systemd
// reboots, and Firecracker exits either way), waits for the process until
// ctx ends, then kills it.
func (m *Machine) Stop(ctx context.Context) error {
	select {
	case <-m.Exited():
		return nil
	default:
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := m.client.Action(actx, "SendCtrlAltDel")
	cancel()
	if err == nil {
		if m.Wait(ctx) == nil {
			return nil
		}
	}
	if err := m.Kill(); err != nil {
		return err
	}
	<-m.Exited()
	return nil
}

// Pause implements vmm.Pauser.
func (m *Machine) Pause(ctx context.Context) error { return m.client.SetState(ctx, "Paused") }

// Resume implements vmm.Pauser.
func (m *Machine) Resume(ctx context.Context) error { return m.client.SetState(ctx, "Resumed") }

// CreateSnapshot implements vmm.Snapshotter; the VM must be paused.
func (m *Machine) CreateSnapshot(ctx context.Context, statePath, memPath string) error {
	return m.client.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Full", SnapshotPath: statePath, MemFilePath: memPath})
}

// DialAgent implements vmm.Machine over hybrid vsock.
func (m *Machine) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	return DialVsock(ctx, filepath.Join(m.dir, VsockSocket), port)
}
