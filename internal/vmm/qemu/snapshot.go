package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
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
// guest's RAM file is copied (sparse) to memPath. A restored VM's RAM is
// its snapshot's file mapped copy-on-write, which holds none of what
// the guest wrote since: its pages come through the stream instead and
// are split out into memPath (see ramsplit.go), so both kinds of VM
// leave the same two files. QEMU is left in its post-migration state:
// Resume runs the guest on.
func (m *Machine) CreateSnapshot(ctx context.Context, statePath, memPath string) error {
	if m.memFile == "" {
		return fmt.Errorf("%w: this VM's memory is not in a file (it was started by an older banger): restart it to snapshot it", vmm.ErrNotSupported)
	}
	if m.private {
		return m.snapshotPrivate(ctx, statePath, memPath)
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

// snapshotPrivate writes the snapshot of a VM whose RAM is private:
// QEMU streams device state and every page into a pipe, and the
// splitter writes the pages to memPath and the rest to statePath.
func (m *Machine) snapshotPrivate(ctx context.Context, statePath, memPath string) (err error) {
	state, err := os.OpenFile(statePath, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer state.Close()
	mem, err := os.OpenFile(memPath, os.O_CREATE|os.O_EXCL|os.O_RDWR|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		os.Remove(statePath)
		return err
	}
	defer mem.Close()
	defer func() {
		if err != nil {
			os.Remove(statePath)
			os.Remove(memPath)
		}
	}()
	if _, err := m.qmp.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return err
	}
	// QEMU 7.2 limits a migration to 128 MiB/s by default: the guest is
	// paused and the stream goes to a local file, so let it run.
	if _, err := m.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = m.qmp.ExecuteFD(ctx, "getfd", map[string]any{"fdname": "snapshot"}, w)
	w.Close() // QEMU has its own copy: the stream ends when QEMU closes it
	if err != nil {
		return err
	}
	split := make(chan error, 1)
	go func() {
		err := splitRAM(r, state, mem, "ram")
		if err != nil {
			r.Close() // QEMU's next write fails instead of waiting
		}
		split <- err
	}()
	if _, err := m.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:snapshot"}); err != nil {
		m.qmp.Execute(context.Background(), "closefd", map[string]any{"fdname": "snapshot"})
		r.Close()
		<-split
		return err
	}
	werr := m.waitMigration(ctx, "writing the memory and device state")
	if werr != nil {
		// A splitter that stopped reading (a full disk, a stream it does
		// not know) makes QEMU's write fail: its error says why.
		r.Close()
		if serr := <-split; serr != nil {
			return fmt.Errorf("splitting guest memory from the device state: %w", serr)
		}
		return werr
	}
	if err := <-split; err != nil {
		return fmt.Errorf("splitting guest memory from the device state: %w", err)
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
			return fmt.Errorf("%s: %w", what, m.ExitError(""))
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Restore implements vmm.Restorer: QEMU maps the snapshot's memory file
// copy-on-write (share=off), starts waiting for an incoming stream,
// reads the device state and runs the guest. spec.MemoryFile is not
// used: the guest's RAM is the snapshot's file and, once written, its
// own pages.
//
// The device state holds no page of that RAM: it was written with
// x-ignore-shared from a VM whose RAM was a shared file (or, for a
// restored VM, with its pages split out into the memory file, see
// CreateSnapshot), so the pages the mapping reads from the file are
// what the guest left there. QEMU 7.2 does not count a share=off block
// as ignored; it only loads the pages the stream carries, and there are
// none.
func (b *Backend) Restore(ctx context.Context, spec vmm.Spec, snap vmm.Snapshot) (_ vmm.Machine, err error) {
	for _, p := range []string{snap.State, snap.Memory} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("snapshot file: %w", err)
		}
	}
	spec.MemoryFile, spec.MemoryPrivate = snap.Memory, true
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
