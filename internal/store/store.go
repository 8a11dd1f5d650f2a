// Package store is banger's persistent state: one SQLite database
// (modernc.org/sqlite, no cgo) in WAL mode with forward-only migrations.
// It stores records only; it never touches the files they describe.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Sentinel errors.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
)

// migrations are applied in order, each once, never edited after release:
// a schema change is a new entry at the end.
var migrations = []string{
	// 1: images
	`CREATE TABLE images (
		id         TEXT PRIMARY KEY,
		name       TEXT NOT NULL UNIQUE,
		ref        TEXT NOT NULL,
		digest     TEXT NOT NULL,
		rootfs     TEXT NOT NULL,
		size_bytes INTEGER NOT NULL,
		disk_bytes INTEGER NOT NULL DEFAULT 0,
		config     TEXT NOT NULL DEFAULT '{}',
		layers     TEXT NOT NULL DEFAULT '[]',
		created_at TEXT NOT NULL
	)`,
	// 2: kernels
	`CREATE TABLE kernels (
		id         TEXT PRIMARY KEY,
		name       TEXT NOT NULL UNIQUE,
		version    TEXT NOT NULL,
		vmlinux    TEXT NOT NULL,
		initrd     TEXT NOT NULL DEFAULT '',
		modules    TEXT NOT NULL DEFAULT '[]',
		source     TEXT NOT NULL,
		agent_hash TEXT NOT NULL DEFAULT '',
		created_at TEXT NOT NULL
	)`,
	// 3: vms
	`CREATE TABLE vms (
		id          TEXT PRIMARY KEY,
		name        TEXT NOT NULL UNIQUE,
		state       TEXT NOT NULL,
		image       TEXT NOT NULL,
		kernel      TEXT NOT NULL,
		vmm         TEXT NOT NULL,
		vcpu        INTEGER NOT NULL,
		memory_mib  INTEGER NOT NULL,
		disk_bytes  INTEGER NOT NULL,
		dir         TEXT NOT NULL,
		pid         INTEGER NOT NULL DEFAULT 0,
		error       TEXT NOT NULL DEFAULT '',
		created_at  TEXT NOT NULL
	)`,
	// 4: VM networking. VMs from before it had no network: 'none'.
	`ALTER TABLE vms ADD COLUMN network TEXT NOT NULL DEFAULT 'none';
	ALTER TABLE vms ADD COLUMN ip TEXT NOT NULL DEFAULT '';
	ALTER TABLE vms ADD COLUMN ports TEXT NOT NULL DEFAULT '[]';
	CREATE UNIQUE INDEX vms_ip ON vms(ip) WHERE ip != ''`,
	// 5: where an image came from. Images from before it were pulled.
	`ALTER TABLE images ADD COLUMN source TEXT NOT NULL DEFAULT 'registry'`,
	// 6: snapshots and warm templates; how a VM first came to run. The
	// snapshot's record is its JSON (api.Snapshot) with the columns
	// lookups need beside it.
	`CREATE TABLE snapshots (
		id           TEXT PRIMARY KEY,
		name         TEXT NOT NULL UNIQUE,
		kind         TEXT NOT NULL,
		state        TEXT NOT NULL,
		template_key TEXT NOT NULL DEFAULT '',
		data         TEXT NOT NULL,
		created_at   TEXT NOT NULL
	);
	CREATE INDEX snapshots_template ON snapshots(template_key) WHERE template_key != '';
	ALTER TABLE vms ADD COLUMN origin TEXT NOT NULL DEFAULT ''`,
	// 7: host directories shared with a VM, as JSON ([]api.Mount).
	`ALTER TABLE vms ADD COLUMN mounts TEXT NOT NULL DEFAULT '[]'`,
	// 8: owners (uids) of VMs, images and kernels, a VM's egress policy
	// (JSON api.Policy, null for the default), labels (JSON) and what it
	// runs over its image's config (JSON api.Run, null for none). What
	// older versions made belongs to root. A snapshot's owner is in its
	// JSON record.
	`ALTER TABLE vms ADD COLUMN owner INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE vms ADD COLUMN policy TEXT NOT NULL DEFAULT 'null';
	ALTER TABLE vms ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
	ALTER TABLE vms ADD COLUMN run TEXT NOT NULL DEFAULT 'null';
	ALTER TABLE images ADD COLUMN owner INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE kernels ADD COLUMN owner INTEGER NOT NULL DEFAULT 0`,
	// 9: the E2B endpoint's API keys (only their SHA-256) and its
	// sandboxes (a VM of the same name; the record is the endpoint's
	// JSON, with the owner beside it).
	`CREATE TABLE e2b_keys (
		id         TEXT PRIMARY KEY,
		hash       TEXT NOT NULL UNIQUE,
		prefix     TEXT NOT NULL,
		name       TEXT NOT NULL DEFAULT '',
		owner      INTEGER NOT NULL,
		created_at TEXT NOT NULL,
		last_used  TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE e2b_sandboxes (
		id    TEXT PRIMARY KEY,
		owner INTEGER NOT NULL,
		data  TEXT NOT NULL
	)`,
}

// Store is the database. It is safe for concurrent use.
type Store struct {
	db *sql.DB
}

// Open opens (creating if needed) the database at path and applies any
// pending migrations.
func Open(ctx context.Context, path string) (*Store, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening database %s: %w", path, err)
	}
	// One connection: writes are serialised anyway, and it rules out
	// SQLITE_BUSY between our own connections.
	db.SetMaxOpenConns(1)
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrating database %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// SchemaVersion is the number of migrations applied.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at TEXT NOT NULL
	)`); err != nil {
		return err
	}
	current, err := s.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	if current > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this bangerd knows (%d): upgrade banger", current, len(migrations))
	}
	for v := current + 1; v <= len(migrations); v++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, v, now()); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

func isUnique(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && (se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)
}

type scanner interface{ Scan(...any) error }

// getByName reads the row of table whose name is name, or ErrNotFound
// naming the noun ("image", "kernel").
func getByName[T any](ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, table, columns, noun, name string, scan func(scanner) (T, error)) (T, error) {
	v, err := scan(q.QueryRowContext(ctx, `SELECT `+columns+` FROM `+table+` WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return v, fmt.Errorf("%s %q: %w", noun, name, ErrNotFound)
	}
	return v, err
}

// deleteByName removes the named row of table and returns what it held.
func deleteByName[T any](ctx context.Context, s *Store, table, columns, noun, name string, scan func(scanner) (T, error)) (T, error) {
	var zero T
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return zero, err
	}
	defer tx.Rollback()
	v, err := getByName(ctx, tx, table, columns, noun, name, scan)
	if err != nil {
		return v, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE name = ?`, name); err != nil {
		return v, err
	}
	return v, tx.Commit()
}
