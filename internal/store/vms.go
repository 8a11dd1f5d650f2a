package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"banger/internal/api"
)

const vmColumns = `id, name, state, image, kernel, vmm, vcpu, memory_mib, disk_bytes, dir, pid, error, created_at, network, ip, ports, origin, mounts, owner, policy, labels, run`

func scanVM(row scanner) (api.VM, error) {
	var v api.VM
	var created, ports, mounts, policy, labels, run string
	if err := row.Scan(&v.ID, &v.Name, &v.State, &v.Image, &v.Kernel, &v.VMM, &v.VCPU, &v.MemoryMiB, &v.DiskBytes, &v.Dir, &v.PID, &v.Error, &created, &v.Network, &v.IP, &ports, &v.Origin, &mounts, &v.Owner, &policy, &labels, &run); err != nil {
		return v, err
	}
	if err := json.Unmarshal([]byte(policy), &v.Policy); err != nil {
		return v, fmt.Errorf("vm %q: decoding policy: %w", v.Name, err)
	}
	if err := json.Unmarshal([]byte(run), &v.Run); err != nil {
		return v, fmt.Errorf("vm %q: decoding run: %w", v.Name, err)
	}
	if err := json.Unmarshal([]byte(labels), &v.Labels); err != nil {
		return v, fmt.Errorf("vm %q: decoding labels: %w", v.Name, err)
	}
	if len(v.Labels) == 0 {
		v.Labels = nil
	}
	if err := json.Unmarshal([]byte(mounts), &v.Mounts); err != nil {
		return v, fmt.Errorf("vm %q: decoding mounts: %w", v.Name, err)
	}
	if err := json.Unmarshal([]byte(ports), &v.Ports); err != nil {
		return v, fmt.Errorf("vm %q: decoding ports: %w", v.Name, err)
	}
	t, err := time.Parse(time.RFC3339Nano, created)
	if err != nil {
		return v, fmt.Errorf("vm %q: decoding created_at: %w", v.Name, err)
	}
	v.CreatedAt = t
	return v, nil
}

// InsertVM records a new VM; ErrExists when its name is taken. With
// alloc, the VM's address is chosen in the same transaction from the
// addresses every other VM holds, so concurrent creates never share one.
func (s *Store) InsertVM(ctx context.Context, v *api.VM, alloc func(used []netip.Addr) (netip.Addr, error)) error {
	if v.CreatedAt.IsZero() {
		v.CreatedAt = time.Now()
	}
	if v.Ports == nil {
		v.Ports = []string{}
	}
	ports, _ := json.Marshal(v.Ports)
	mounts := mountsJSON(v.Mounts)
	policy, _ := json.Marshal(v.Policy)
	labels, _ := json.Marshal(v.Labels)
	if v.Labels == nil {
		labels = []byte("{}")
	}
	run, _ := json.Marshal(v.Run)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if alloc != nil {
		used, err := usedAddrs(ctx, tx)
		if err != nil {
			return err
		}
		a, err := alloc(used)
		if err != nil {
			return err
		}
		v.IP = a.String()
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		v.ID, v.Name, v.State, v.Image, v.Kernel, v.VMM, v.VCPU, v.MemoryMiB, v.DiskBytes, v.Dir, v.PID, v.Error, v.CreatedAt.UTC().Format(time.RFC3339Nano),
		v.Network, v.IP, string(ports), v.Origin, mounts, v.Owner, string(policy), string(labels), string(run))
	if isUnique(err) {
		return fmt.Errorf("vm %q: %w", v.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("recording vm %q: %w", v.Name, err)
	}
	return tx.Commit()
}

func usedAddrs(ctx context.Context, tx *sql.Tx) ([]netip.Addr, error) {
	rows, err := tx.QueryContext(ctx, `SELECT ip FROM vms WHERE ip != ''`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []netip.Addr
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out, rows.Err()
}

// VM returns the named VM, or ErrNotFound.
func (s *Store) VM(ctx context.Context, name string) (api.VM, error) {
	return getByName(ctx, s.db, "vms", vmColumns, "vm", name, scanVM)
}

// VMs returns every VM, by name.
func (s *Store) VMs(ctx context.Context) ([]api.VM, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.VM{}
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// SetVMState records a VM's state, VMM pid and error message.
func (s *Store) SetVMState(ctx context.Context, name, state string, pid int, errMsg string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET state = ?, pid = ?, error = ? WHERE name = ?`, state, pid, errMsg, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %q: %w", name, ErrNotFound)
	}
	return nil
}

// SetVMPolicy records the named VM's egress policy (nil: the default).
func (s *Store) SetVMPolicy(ctx context.Context, name string, p *api.Policy) error {
	b, _ := json.Marshal(p)
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET policy = ? WHERE name = ?`, string(b), name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %q: %w", name, ErrNotFound)
	}
	return nil
}

// SetVMPID records the VMM pid of the named VM (0: none), leaving its
// state alone: states change only through the VM service's transitions.
func (s *Store) SetVMPID(ctx context.Context, name string, pid int) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET pid = ? WHERE name = ?`, pid, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %q: %w", name, ErrNotFound)
	}
	return nil
}

// DeleteVM removes the named VM's record and returns it.
func (s *Store) DeleteVM(ctx context.Context, name string) (api.VM, error) {
	return deleteByName(ctx, s, "vms", vmColumns, "vm", name, scanVM)
}

func mountsJSON(ms []api.Mount) string {
	if ms == nil {
		ms = []api.Mount{}
	}
	b, _ := json.Marshal(ms)
	return string(b)
}

// SetVMMounts records the state of a VM's mounts (their virtiofsd
// processes and errors).
func (s *Store) SetVMMounts(ctx context.Context, name string, ms []api.Mount) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET mounts = ? WHERE name = ?`, mountsJSON(ms), name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %q: %w", name, ErrNotFound)
	}
	return nil
}

// SetVMOrigin records how a VM came to run (see api.VM.Origin).
func (s *Store) SetVMOrigin(ctx context.Context, name, origin string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET origin = ? WHERE name = ?`, origin, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %q: %w", name, ErrNotFound)
	}
	return nil
}

// ErrAddressed means a VM holds an address of the VM subnet, which can
// then not change.
var ErrAddressed = errors.New("a VM holds an address of the subnet")

// Addressed is how many VMs hold an address, in any state.
func (s *Store) Addressed(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM vms WHERE ip != ''`).Scan(&n)
	return n, err
}

// Unaddressed runs fn inside a transaction in which no VM holds an
// address: InsertVM gives addresses in transactions of its own, so none
// is given while fn runs. When some VM holds one, fn does not run and
// the error (ErrAddressed) names it.
func (s *Store) Unaddressed(ctx context.Context, fn func() error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var name, ip string
	var n int
	err = tx.QueryRowContext(ctx, `SELECT count(*), COALESCE(MIN(name), ''), COALESCE(MIN(ip), '') FROM vms WHERE ip != ''`).Scan(&n, &name, &ip)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%w: %d VMs hold addresses (VM %q among them)", ErrAddressed, n, name)
	}
	if err := fn(); err != nil {
		return err
	}
	return tx.Commit()
}
