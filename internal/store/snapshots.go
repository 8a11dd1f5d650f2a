package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"banger/internal/api"
)

const snapshotColumns = `data`

func scanSnapshot(row scanner) (api.Snapshot, error) {
	var s api.Snapshot
	var data string
	if err := row.Scan(&data); err != nil {
		return s, err
	}
	if err := json.Unmarshal([]byte(data), &s); err != nil {
		return s, fmt.Errorf("decoding a snapshot record: %w", err)
	}
	return s, nil
}

// InsertSnapshot records a snapshot (in state creating, usually);
// ErrExists when its name is taken.
func (s *Store) InsertSnapshot(ctx context.Context, sn *api.Snapshot) error {
	if sn.CreatedAt.IsZero() {
		sn.CreatedAt = time.Now().UTC()
	}
	data, err := snapshotJSON(*sn)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO snapshots (id, name, kind, state, template_key, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		sn.ID, sn.Name, sn.Kind, sn.State, sn.TemplateKey, string(data), sn.CreatedAt.Format(time.RFC3339Nano))
	if isUnique(err) {
		return fmt.Errorf("snapshot %q: %w", sn.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("recording snapshot %q: %w", sn.Name, err)
	}
	return nil
}

// UpdateSnapshot rewrites a snapshot's record (its state, files and
// sizes once written).
func (s *Store) UpdateSnapshot(ctx context.Context, sn api.Snapshot) error {
	data, err := snapshotJSON(sn)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, `UPDATE snapshots SET state = ?, template_key = ?, data = ? WHERE name = ?`, sn.State, sn.TemplateKey, string(data), sn.Name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("snapshot %q: %w", sn.Name, ErrNotFound)
	}
	return nil
}

// Snapshot returns the named snapshot, or ErrNotFound.
func (s *Store) Snapshot(ctx context.Context, name string) (api.Snapshot, error) {
	return getByName(ctx, s.db, "snapshots", snapshotColumns, "snapshot", name, scanSnapshot)
}

// Snapshots returns every snapshot and template, by name.
func (s *Store) Snapshots(ctx context.Context) ([]api.Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Snapshot{}
	for rows.Next() {
		sn, err := scanSnapshot(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sn)
	}
	return out, rows.Err()
}

// Template returns the ready template with the given key, or
// ErrNotFound.
func (s *Store) Template(ctx context.Context, key string) (api.Snapshot, error) {
	sn, err := scanSnapshot(s.db.QueryRowContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE template_key = ? AND kind = ? AND state = 'ready' ORDER BY created_at DESC LIMIT 1`, key, api.SnapshotKindTemplate))
	if errors.Is(err, sql.ErrNoRows) {
		return sn, fmt.Errorf("template %s: %w", key, ErrNotFound)
	}
	return sn, err
}

// DeleteSnapshot removes the named snapshot's record and returns it.
func (s *Store) DeleteSnapshot(ctx context.Context, name string) (api.Snapshot, error) {
	return deleteByName(ctx, s, "snapshots", snapshotColumns, "snapshot", name, scanSnapshot)
}

// snapshotJSON is a snapshot's record: what is read off the host when
// it is shown (the VMs that use it) is never stored.
func snapshotJSON(sn api.Snapshot) ([]byte, error) {
	sn.InUse, sn.UsedBy = 0, nil
	return json.Marshal(sn)
}
