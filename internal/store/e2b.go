package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"banger/internal/api"
)

// The E2B endpoint's records: API keys, kept as their SHA-256 only, and
// sandboxes, kept as the endpoint's own JSON (the store does not read
// it) with the owner beside it.

const e2bKeyColumns = `id, prefix, name, owner, created_at, last_used`

func scanE2BKey(row scanner) (api.E2BKey, error) {
	var k api.E2BKey
	var created, used string
	if err := row.Scan(&k.ID, &k.Prefix, &k.Name, &k.Owner, &created, &used); err != nil {
		return k, err
	}
	k.CreatedAt, _ = time.Parse(time.RFC3339Nano, created)
	if t, err := time.Parse(time.RFC3339Nano, used); err == nil {
		k.LastUsed = &t
	}
	return k, nil
}

// InsertE2BKey records a key by the hex SHA-256 of its text.
func (s *Store) InsertE2BKey(ctx context.Context, k api.E2BKey, hash string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO e2b_keys (id, hash, prefix, name, owner, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
		k.ID, hash, k.Prefix, k.Name, k.Owner, k.CreatedAt.UTC().Format(time.RFC3339Nano))
	if isUnique(err) {
		return fmt.Errorf("E2B key %q: %w", k.ID, ErrExists)
	}
	return err
}

// E2BKeyByHash is the key whose text hashes to hash, or ErrNotFound.
func (s *Store) E2BKeyByHash(ctx context.Context, hash string) (api.E2BKey, error) {
	k, err := scanE2BKey(s.db.QueryRowContext(ctx, `SELECT `+e2bKeyColumns+` FROM e2b_keys WHERE hash = ?`, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return k, fmt.Errorf("E2B key: %w", ErrNotFound)
	}
	return k, err
}

// E2BKeys lists every key, oldest first.
func (s *Store) E2BKeys(ctx context.Context) ([]api.E2BKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+e2bKeyColumns+` FROM e2b_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.E2BKey{}
	for rows.Next() {
		k, err := scanE2BKey(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// DeleteE2BKey removes the key id; ErrNotFound when there is none.
func (s *Store) DeleteE2BKey(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM e2b_keys WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("E2B key %q: %w", id, ErrNotFound)
	}
	return nil
}

// TouchE2BKey records that the key id was used at t.
func (s *Store) TouchE2BKey(ctx context.Context, id string, t time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE e2b_keys SET last_used = ? WHERE id = ?`, t.UTC().Format(time.RFC3339Nano), id)
	return err
}

// E2BRecord is one E2B sandbox's record: its id, its owner and the
// endpoint's JSON.
type E2BRecord struct {
	ID    string
	Owner int
	Data  []byte
}

// PutE2BSandbox writes (inserts or replaces) a sandbox's record.
func (s *Store) PutE2BSandbox(ctx context.Context, r E2BRecord) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO e2b_sandboxes (id, owner, data) VALUES (?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET owner = excluded.owner, data = excluded.data`, r.ID, r.Owner, string(r.Data))
	if err != nil {
		return fmt.Errorf("recording E2B sandbox %q: %w", r.ID, err)
	}
	return nil
}

// E2BSandboxes lists every sandbox record.
func (s *Store) E2BSandboxes(ctx context.Context) ([]E2BRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, owner, data FROM e2b_sandboxes ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []E2BRecord
	for rows.Next() {
		var r E2BRecord
		var data string
		if err := rows.Scan(&r.ID, &r.Owner, &data); err != nil {
			return nil, err
		}
		r.Data = []byte(data)
		out = append(out, r)
	}
	return out, rows.Err()
}

// DeleteE2BSandbox removes a sandbox's record (none is fine).
func (s *Store) DeleteE2BSandbox(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM e2b_sandboxes WHERE id = ?`, id)
	return err
}
