package firecracker

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"banger/internal/consolelog"
	"banger/internal/system"
	"banger/internal/vmm"
)

// File names in a VM directory.
const (
	APISocket   = "fc.sock"
	VsockSocket = "vsock.sock"
	ConsoleLog  = vmm.ConsoleLog
	VMMLog      = "firecracker.log"
	MetricsFile = "metrics.json"
	// GuestCID is the vsock context id every guest gets; each VM has its
	// own vsock socket, so they need not differ.
	GuestCID = 3
)

// Backend starts Firecracker VMs. It is safe for concurrent use.
type Backend struct {
	bin    string
	jailer *Jailer // nil: Firecracker runs as its starter, unjailed
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
	// root is the jail's root as seen from the host, "" without the
	// jailer; sockets live there, and files Firecracker opens are
	// placed there (see place).
	root string
	jail *Jailer
}

// sock is the host path of one of the VM's sockets.
func (m *Machine) sock(name string) string {
	if m.root != "" {
		return filepath.Join(m.root, name)
	}
	return filepath.Join(m.dir, name)
}

// at is the path Firecracker is given for a socket it creates: relative
// to its working directory, the VM's (or the jail's root), so the path a
// snapshot records fits any VM restored from it.
func (m *Machine) at(name string) string {
	if m.root != "" {
		return "/" + name
	}
	return name
}

// Attach adopts the running Firecracker of the VM in dir (after a daemon
// restart): its process and its API socket, checked with a request.
func (b *Backend) Attach(ctx context.Context, dir string, pid int) (*Machine, error) {
	proc, err := vmm.AttachProcess(pid, filepath.Join(dir, VMMLog))
	if err != nil {
		return nil, err
	}
	m := &Machine{Process: proc, dir: dir, jail: b.jailer}
	if b.jailer != nil {
		m.root = filepath.Join(b.jailDir(dir), "root")
		go func() {
			<-m.Exited()
			b.removeJail(dir)
		}()
	}
	m.client = NewClient(m.sock(APISocket))
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

// spawn starts firecracker in spec's directory, its standard output the
// guest's serial console, and waits for its API socket.
func (b *Backend) spawn(ctx context.Context, spec vmm.Spec) (m *Machine, err error) {
	id, dir := spec.ID, spec.Dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	m = &Machine{dir: dir, jail: b.jailer}
	bin, args := b.bin, []string{"--api-sock", filepath.Join(dir, APISocket), "--id", id}
	if b.jailer != nil {
		jid, err := jailID(dir)
		if err != nil {
			return nil, err
		}
		// A jail left by a VMM that died is stale: the jailer wants a
		// fresh one.
		jail := b.jailDir(dir)
		os.RemoveAll(jail)
		m.root = filepath.Join(jail, "root")
		if err := os.MkdirAll(m.root, 0o755); err != nil {
			return nil, err
		}
		bin, args = b.jailer.Bin, b.jailArgs(jid)
	}
	for _, f := range []string{APISocket, VsockSocket} {
		os.Remove(m.sock(f))
	}
	console, release, err := vmm.ConsoleWriter(spec)
	if err != nil {
		return nil, err
	}
	// Firecracker holds its own copy from here on; its exit ends the
	// log's writer.
	defer release()
	vmmLog, err := os.OpenFile(filepath.Join(dir, VMMLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer vmmLog.Close()
	// Unjailed, Firecracker runs in the VM directory: the vsock socket
	// is given relative to it, so a snapshot restored elsewhere (a fork)
	// binds its own socket, not its still-running source's.
	proc, err := vmm.StartProcess(spec.StartHook, dir, bin, args, console, vmmLog)
	if err != nil {
		return nil, err
	}
	m.Process, m.client = proc, NewClient(m.sock(APISocket))
	if m.root != "" {
		go func() {
			<-m.Exited()
			b.removeJail(dir)
		}()
	}
	defer func() {
		if err != nil {
			m.Kill()
			<-m.Exited()
		}
	}()
	if err := m.waitSocket(ctx, m.sock(APISocket)); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Machine) waitSocket(ctx context.Context, sock string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-m.Exited():
			return m.ExitError(" before its API socket appeared")
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
	if len(spec.FS) > 0 {
		return nil, fmt.Errorf("%w: Firecracker has no shared file system (virtio-fs)", vmm.ErrNotSupported)
	}
	m, err := b.spawn(ctx, spec)
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
	kernel, err := m.place(spec.Kernel, "vmlinux", false)
	if err != nil {
		return nil, err
	}
	initrd := spec.Initrd
	if initrd != "" {
		if initrd, err = m.place(initrd, "initrd.img", false); err != nil {
			return nil, err
		}
	}
	if err := c.PutBootSource(ctx, BootSource{KernelImagePath: kernel, InitrdPath: initrd, BootArgs: spec.Cmdline}); err != nil {
		return nil, err
	}
	for _, d := range spec.Drives {
		p, err := m.place(d.Path, "drive-"+d.ID, !d.ReadOnly)
		if err != nil {
			return nil, err
		}
		if err := c.PutDrive(ctx, Drive{DriveID: d.ID, PathOnHost: p, IsReadOnly: d.ReadOnly}); err != nil {
			return nil, err
		}
	}
	if spec.TAP != "" {
		if err := c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: spec.TAP, GuestMAC: spec.MAC}); err != nil {
			return nil, err
		}
	}
	if err := c.PutVsock(ctx, Vsock{GuestCID: GuestCID, UDSPath: m.at(VsockSocket)}); err != nil {
		return nil, err
	}
	if err := c.Action(ctx, "InstanceStart"); err != nil {
		return nil, fmt.Errorf("starting the guest: %w: console: %s", err, m.consoleTail())
	}
	return m, nil
}

func (m *Machine) configureLogs(ctx context.Context) error {
	// Firecracker opens these, it does not create them.
	paths := map[string]string{}
	for _, f := range []string{VMMLog, MetricsFile} {
		p := filepath.Join(m.dir, f)
		fh, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		fh.Close()
		if paths[f], err = m.place(p, f, true); err != nil {
			return err
		}
	}
	if err := m.client.PutLogger(ctx, Logger{LogPath: paths[VMMLog], Level: "Info", ShowLevel: true}); err != nil {
		return err
	}
	return m.client.PutMetrics(ctx, Metrics{MetricsPath: paths[MetricsFile]})
}

func (m *Machine) consoleTail() string {
	b, _ := consolelog.Tail(m.ConsolePath(), 4<<10)
	return system.Tail(string(b), 400)
}

var _ vmm.Restorer = (*Backend)(nil)

// Restore implements vmm.Restorer: a new Firecracker in spec.Dir loads
// the snapshot paused, with the spec's TAP instead of the source's, its
// writable drives moved to the spec's files, and then runs the guest.
// Drives are matched by ID; read-only ones (the shared image) stay.
func (b *Backend) Restore(ctx context.Context, spec vmm.Spec, snap vmm.Snapshot) (_ vmm.Machine, err error) {
	m, err := b.spawn(ctx, spec)
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
	state, err := m.place(snap.State, "vm.state", false)
	if err != nil {
		return nil, err
	}
	mem, err := m.place(snap.Memory, "vm.mem", false)
	if err != nil {
		return nil, err
	}
	load := SnapshotLoad{SnapshotPath: state, MemBackend: MemBackend{BackendType: "File", BackendPath: mem}}
	if spec.TAP != "" {
		load.NetworkOverrides = []NetworkOverride{{IfaceID: "eth0", HostDevName: spec.TAP}}
	}
	if err := m.client.LoadSnapshot(ctx, load); err != nil {
		return nil, fmt.Errorf("loading snapshot: %w", err)
	}
	for _, d := range spec.Drives {
		if d.ReadOnly {
			continue
		}
		p, err := m.place(d.Path, "drive-"+d.ID, true)
		if err != nil {
			return nil, err
		}
		if err := m.client.PatchDrive(ctx, DrivePatch{DriveID: d.ID, PathOnHost: p}); err != nil {
			return nil, fmt.Errorf("moving drive %s to the new VM's copy: %w", d.ID, err)
		}
	}
	if err := m.Resume(ctx); err != nil {
		return nil, err
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
	if m.root == "" {
		return m.client.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Full", SnapshotPath: statePath, MemFilePath: memPath})
	}
	// A jailed Firecracker writes inside its chroot; the files move out
	// (same filesystem) once written.
	if err := m.client.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Full", SnapshotPath: "/vm.state", MemFilePath: "/vm.mem"}); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(m.root, "vm.state"), statePath); err != nil {
		return err
	}
	return os.Rename(filepath.Join(m.root, "vm.mem"), memPath)
}

// DialAgent implements vmm.Machine over hybrid vsock.
func (m *Machine) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	return DialVsock(ctx, m.sock(VsockSocket), port)
}
