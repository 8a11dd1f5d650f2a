package vm

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"banger/internal/api"
	"banger/internal/vsockagent"
)

// hostKeyFile holds a VM's SSH host public key in its directory; the
// private half lives only on the VM's writable disk.
const hostKeyFile = "ssh_host_ed25519_key.pub"

// guestDataDir is where the init stage mounts the VM's writable disk.
const guestDataDir = "/run/banger/data"

// newHostKey makes a VM's SSH host key: the private key in OpenSSH PEM
// for the guest, the public key in authorized_keys form for the host.
func newHostKey(comment string) (private []byte, public string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, "", err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, "", err
	}
	return pem.EncodeToMemory(block), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))), nil
}

// sshSeed returns the files a new VM's disk gets for SSH, and records the
// host key's public half in the VM's directory.
func (s *Service) sshSeed(v api.VM) (map[string][]byte, error) {
	priv, pub, err := newHostKey(v.Name + ".vm")
	if err != nil {
		return nil, fmt.Errorf("making the VM's SSH host key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(v.Dir, hostKeyFile), []byte(pub+"\n"), 0o600); err != nil {
		return nil, err
	}
	keys, _ := os.ReadFile(s.authorizedKeysPath(v.Owner))
	return map[string][]byte{vsockagent.SSHHostKeyPath: priv, vsockagent.SSHAuthorizedKeysPath: keys}, nil
}

// withHostKey fills in what is not in the store: the SSH host key.
func withHostKey(v api.VM) api.VM {
	if b, err := os.ReadFile(filepath.Join(v.Dir, hostKeyFile)); err == nil {
		v.SSHHostKey = strings.TrimSpace(string(b))
	}
	return v
}

// authorizedKeysPath holds the SSH keys of uid: they log in to uid's
// VMs only.
func (s *Service) authorizedKeysPath(uid int) string {
	return filepath.Join(s.layout.StateDir, "ssh_authorized_keys."+strconv.Itoa(uid))
}

// adoptOldKeys gives the keys of a banger from before owners (one file
// for every VM) to root, who owned every VM then.
func (s *Service) adoptOldKeys() {
	old := filepath.Join(s.layout.StateDir, "ssh_authorized_keys")
	if _, err := os.Stat(s.authorizedKeysPath(0)); os.IsNotExist(err) {
		os.Rename(old, s.authorizedKeysPath(0))
	}
}

var authorizedKeysMu sync.Mutex

// AddSSHKey authorizes c's public key in every VM of c's: new ones get
// it on their disk, running ones through their agents, stopped ones when
// they next start. A key logs in to its owner's VMs only.
func (s *Service) AddSSHKey(ctx context.Context, c Caller, req api.SSHKeyRequest) error {
	key, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(req.Key))
	if err != nil {
		return fmt.Errorf("%w: not an SSH public key (authorized_keys format): %v", api.ErrInvalid, err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	if comment != "" {
		line += " " + comment
	}
	authorizedKeysMu.Lock()
	path := s.authorizedKeysPath(c.UID)
	old, _ := os.ReadFile(path)
	known := false
	for _, l := range strings.Split(string(old), "\n") {
		if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l)); err == nil && bytes.Equal(k.Marshal(), key.Marshal()) {
			known = true
		}
	}
	if !known {
		err = os.WriteFile(path, append(old, []byte(line+"\n")...), 0o600)
	}
	authorizedKeysMu.Unlock()
	if err != nil {
		return err
	}
	vms, err := s.store.VMs(ctx)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, v := range vms {
		if v.State == string(Running) && v.Owner == c.UID {
			wg.Add(1)
			go func(v api.VM) { defer wg.Done(); s.pushAuthorizedKeys(ctx, v) }(v)
		}
	}
	wg.Wait()
	return nil
}

// pushAuthorizedKeys writes the authorized keys onto a running VM's disk
// through its agent. Best effort: a VM that cannot take them now gets
// them at its next start.
func (s *Service) pushAuthorizedKeys(ctx context.Context, v api.VM) {
	keys, err := os.ReadFile(s.authorizedKeysPath(v.Owner))
	if err != nil || len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sess, err := s.agentSession(ctx, v)
	if err == nil {
		var st *vsockagent.Stream
		if st, err = sess.Open(ctx, vsockagent.Request{Op: "put", Path: filepath.Join(guestDataDir, vsockagent.SSHAuthorizedKeysPath)}); err == nil {
			err = vsockagent.WriteFileTar(st, "authorized_keys", keys, 0o600)
			st.CloseWrite()
			if e, werr := st.Wait(ctx); werr != nil {
				err = werr
			} else if e.Error != "" {
				err = fmt.Errorf("%s", e.Error)
			}
		}
	}
	if err != nil {
		s.log.Info("authorized keys not pushed (the VM gets them at its next start)", "vm", v.Name, "err", err)
	}
}
