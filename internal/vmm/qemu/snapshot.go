package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/vmm"
)

var (
	_ vmm.Snapshotter = (*Machine)(nil)
	_ vmm.Restorer    = (*Backend)(nil)
)

// ignoreShared is the migration capability that leaves RAM in a shared
// file out of the stream: both sides map the same content.
var ignoreShared = map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}

// CreateSnapshot implements vmm.Snapshotter; the VM must be paused. The
// device state goes through QEMU's migration stream to statePath, the
// guest's RAM file is copied (sparse) to memPath. QEMU is left in its
// post-migration state: Resume runs the guest on.
func (m *Machine) CreateSnapshot(ctx context.Context, statePath, memPath string) error {
	if m.memFile == "" {
		return fmt.Errorf("%w: this VM's memory is not in a file (it was started by an older banger): restart it to snapshot it", vmm.ErrNotSupported)
	}
	if _, err := m.qmp.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return err
	}
	if _, err := m.qmp.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(statePath)}); err != nil {
		return err
	}
	if err := m.waitMigration(ctx, "writing the device state"); err != nil {
		os.Remove(statePath)
		return err
	}
	if _, err := vmm.CopyFile(memPath, m.memFile); err != nil {
		os.Remove(statePath)
		return fmt.Errorf("copying guest memory: %w", err)
	}
	return nil
}

// waitMigration polls query-migrate until the stream is complete.
func (m *Machine) waitMigration(ctx context.Context, what string) error {
	for {
		raw, err := m.qmp.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			desc := st.ErrorDesc
			if desc == "" {
				desc = st.Status
			}
			return fmt.Errorf("%s: %s: %s", what, desc, m.LogTail())
		}
		select {
		case <-m.Exited():
			return fmt.Errorf("%s: %w (%s): %s", what, vmm.ErrExited, m.ExitState(), m.LogTail())
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Restore implements vmm.Restorer: the snapshot's memory is copied to
// spec.MemoryFile (which the new VM maps shared, so it can be
// snapshotted in turn), QEMU starts waiting for an incoming stream, reads
// the device state and runs the guest.
func (b *Backend) Restore(ctx context.Context, spec vmm.Spec, snap vmm.Snapshot) (_ vmm.Machine, err error) {
	if spec.MemoryFile == "" {
		return nil, errors.New("restoring needs a memory file in the spec")
	}
	for _, p := range []string{snap.State, snap.Memory} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("snapshot file: %w", err)
		}
	}
	// The copy lands in a private directory, as a new file (see
	// vmm.CreatePrivateFile for why).
	if _, err := vmm.PrivateDir(filepath.Dir(spec.MemoryFile)); err != nil {
		return nil, fmt.Errorf("guest RAM: %w", err)
	}
	if err := os.Remove(spec.MemoryFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("guest RAM: removing the old %s: %w", spec.MemoryFile, err)
	}
	if _, err := vmm.CopyFile(spec.MemoryFile, snap.Memory); err != nil {
		return nil, fmt.Errorf("copying guest memory: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(spec.MemoryFile)
		}
	}()
	m, err := b.start(ctx, spec, "-incoming", "defer")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Kill()
			<-m.Exited()
		}
	}()
	if _, err := m.qmp.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return nil, err
	}
	if _, err := m.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "exec:cat " + shellQuote(snap.State)}); err != nil {
		return nil, err
	}
	if err := m.waitMigration(ctx, "loading the device state"); err != nil {
		return nil, err
	}
	// Without -S QEMU runs the guest once the stream is in; make sure,
	// since a guest left paused would never answer.
	if st, err := m.qmp.Status(ctx); err != nil {
		return nil, err
	} else if st != "running" {
		if _, err := m.qmp.Execute(ctx, "cont", nil); err != nil {
			return nil, fmt.Errorf("running the restored guest (status %s): %w", st, err)
		}
	}
	return m, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
