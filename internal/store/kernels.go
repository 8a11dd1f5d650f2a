package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"banger/internal/api"
)

const kernelColumns = `id, name, version, vmlinux, initrd, modules, source, agent_hash, created_at, owner`

func scanKernel(row scanner) (api.Kernel, error) {
	var k api.Kernel
	var mods, created string
	if err := row.Scan(&k.ID, &k.Name, &k.Version, &k.Vmlinux, &k.Initrd, &mods, &k.Source, &k.AgentHash, &created, &k.Owner); err != nil {
		return k, err
	}
	if err := json.Unmarshal([]byte(mods), &k.Modules); err != nil {
		return k, fmt.Errorf("kernel %q: decoding modules: %w", k.Name, err)
	}
	t, err := time.Parse(time.RFC3339Nano, created)
	if err != nil {
		return k, fmt.Errorf("kernel %q: decoding created_at: %w", k.Name, err)
	}
	k.CreatedAt = t
	return k, nil
}

// InsertKernel records an imported kernel; ErrExists when the name is taken.
func (s *Store) InsertKernel(ctx context.Context, k api.Kernel) error {
	if k.Modules == nil {
		k.Modules = []string{}
	}
	mods, _ := json.Marshal(k.Modules)
	if k.CreatedAt.IsZero() {
		k.CreatedAt = time.Now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO kernels (`+kernelColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.Name, k.Version, k.Vmlinux, k.Initrd, string(mods), k.Source, k.AgentHash, k.CreatedAt.UTC().Format(time.RFC3339Nano), k.Owner)
	if isUnique(err) {
		return fmt.Errorf("kernel %q: %w", k.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("recording kernel %q: %w", k.Name, err)
	}
	return nil
}

// Kernel returns the named kernel, or ErrNotFound.
func (s *Store) Kernel(ctx context.Context, name string) (api.Kernel, error) {
	return getByName(ctx, s.db, "kernels", kernelColumns, "kernel", name, scanKernel)
}

// Kernels returns every kernel, newest first.
func (s *Store) Kernels(ctx context.Context) ([]api.Kernel, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+kernelColumns+` FROM kernels ORDER BY created_at DESC, name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Kernel{}
	for rows.Next() {
		k, err := scanKernel(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// SetKernelInitrd records a rebuilt initramfs and the agent it holds.
func (s *Store) SetKernelInitrd(ctx context.Context, name, initrd, agentHash string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE kernels SET initrd = ?, agent_hash = ? WHERE name = ?`, initrd, agentHash, name)
	return err
}

// DeleteKernel removes the named kernel's record and returns it.
func (s *Store) DeleteKernel(ctx context.Context, name string) (api.Kernel, error) {
	return deleteByName(ctx, s, "kernels", kernelColumns, "kernel", name, scanKernel)
}
