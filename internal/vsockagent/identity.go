package vsockagent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// Identity is what makes a VM restored from a snapshot a machine of its
// own: the host sends it (op "identity", JSON on the stream) before the
// VM counts as ready, since the guest's memory still holds the identity
// of the VM the snapshot was taken from.
type Identity struct {
	Hostname string `json:"hostname"`
	Domain   string `json:"domain,omitempty"`
	// Iface is the guest interface the address belongs on (eth0); IP
	// is ADDR/PREFIX, "" when the VM has no network.
	Iface string `json:"iface,omitempty"`
	MAC   string `json:"mac,omitempty"`
	IP    string `json:"ip,omitempty"`
	GW    string `json:"gw,omitempty"`
	DNS   string `json:"dns,omitempty"`
	MTU   string `json:"mtu,omitempty"`
	// SSHHostKey is the new VM's private host key (OpenSSH PEM).
	SSHHostKey []byte `json:"ssh_host_key,omitempty"`
	// UnixNano is the host's clock when it sent this; the guest's clock
	// stopped at the snapshot.
	UnixNano int64 `json:"unix_nano"`
	// Entropy is host randomness for the kernel's pool: every VM
	// restored from one snapshot starts with the same pool otherwise.
	Entropy []byte `json:"entropy"`
	// Run, when set, replaces the run spec the VM was snapshotted with:
	// the held command starts with it, and it is every exec's default
	// environment and directory from now on.
	Run *RunSpec `json:"run,omitempty"`
}

// RunSpec is what the VM should run when the init stage stays PID 1. The
// host writes it to /banger/run.json on the VM's writable disk; it is the
// image's config (entrypoint, cmd, env, working dir, user) as the host
// decided to apply it.
type RunSpec struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	// Image names the image the VM was made from (the agent reports it).
	Image string `json:"image,omitempty"`
	// PowerOffOnExit powers the VM off when the command ends, like a
	// container; otherwise the init stage keeps serving.
	PowerOffOnExit bool `json:"poweroff_on_exit,omitempty"`
}

// Argv is the command line: entrypoint followed by cmd.
func (r RunSpec) Argv() []string { return append(append([]string{}, r.Entrypoint...), r.Cmd...) }

// Linux random(4) ioctls: credit entropy to the pool, and reseed the
// CRNG from it now rather than at its next scheduled reseed.
const (
	rndAddEntropy = 0x40085203 // _IOW('R', 0x03, int[2])
	rndReseedCRNG = 0x5207     // _IO('R', 0x07)
)

// reidentify applies id: clock and entropy first (what follows may use
// randomness), the SSH host key, then the rest through the init stage's
// hook (host name, files, network).
func (a *Agent) reidentify(st *Stream) error {
	var id Identity
	if err := json.NewDecoder(io.LimitReader(st, 1<<20)).Decode(&id); err != nil {
		return fmt.Errorf("decoding the identity: %w", err)
	}
	if id.UnixNano > 0 {
		tv := unix.NsecToTimeval(id.UnixNano)
		if err := unix.Settimeofday(&tv); err != nil {
			return fmt.Errorf("setting the clock: %w", err)
		}
	}
	if len(id.Entropy) > 0 {
		if err := addEntropy(id.Entropy); err != nil {
			return fmt.Errorf("reseeding the kernel's random pool: %w", err)
		}
	}
	if len(id.SSHHostKey) > 0 && a.ssh != nil && a.opts.DataDir != "" {
		if err := a.ssh.replaceHostKey(filepath.Join(a.opts.DataDir, SSHHostKeyPath), id.SSHHostKey); err != nil {
			return err
		}
	}
	if a.opts.Reidentify == nil {
		return errors.New("this agent cannot change the VM's identity")
	}
	if err := a.opts.Reidentify(id); err != nil {
		return err
	}
	if id.Run != nil {
		a.setDefaults(id.Run.Env, id.Run.WorkingDir)
	}
	pongHello.Lock()
	pongHello.h.Hostname = currentHostname()
	pongHello.Unlock()
	// The console of a restored VM starts here: say it is ready, as a
	// booted one does.
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		fmt.Fprintln(f, ReadyLine, a.opts.Version, "(restored as "+id.Hostname+")")
		f.Close()
	}
	return nil
}

// addEntropy mixes b into the kernel's pool, credits it, and reseeds
// the CRNG.
func addEntropy(b []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return e
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); e != 0 {
		return e
	}
	return nil
}

// replaceHostKey writes the new host key where the VM keeps it and
// serves it to every new connection from now on.
func (s *SSH) replaceHostKey(path string, pem []byte) error {
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		return fmt.Errorf("parsing the new SSH host key: %w", err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, pem, 0o600); err != nil {
		return fmt.Errorf("writing the SSH host key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing the SSH host key: %w", err)
	}
	s.cfg.Store(s.config(signer))
	return nil
}

// currentHostname is the guest's host name now, for hellos: a restored
// VM changes it after the agent started.
func currentHostname() string {
	h, _ := os.Hostname()
	return h
}
