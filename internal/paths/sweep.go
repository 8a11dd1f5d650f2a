package paths

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// RemoveLeftovers removes every entry of dir whose name is not in known:
// staging directories of interrupted work (named with a leading dot) and
// orphans of records that went away. Each removal is logged.
func RemoveLeftovers(log *slog.Logger, dir string, known map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		p := filepath.Join(dir, e.Name())
		reason := "orphan directory"
		if strings.HasPrefix(e.Name(), ".") {
			reason = "interrupted work"
		}
		log.Info("removing leftover", "path", p, "reason", reason)
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// SyncDir makes a rename in dir durable.
func SyncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}
