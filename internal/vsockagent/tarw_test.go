package vsockagent

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// AddTarEntry writes what fi described: a file that changed since it was
// read is copied as it was (grown) or refused (swapped for a symlink,
// which as root could point anywhere), never followed.
func TestAddTarEntryFileChanged(t *testing.T) {
	for _, c := range []struct {
		name    string
		change  func(tb testing.TB, p string)
		want    string // the entry's content; "" when the copy must fail
		wantErr bool
	}{
		{"unchanged", func(testing.TB, string) {}, "abc", false},
		{"grown", func(tb testing.TB, p string) {
			f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			must(tb, err)
			f.WriteString("def")
			must(tb, f.Close())
		}, "abc", false},
		{"swapped for a symlink", func(tb testing.TB, p string) {
			secret := filepath.Join(filepath.Dir(p), "secret")
			must(tb, os.WriteFile(secret, []byte("xyz"), 0o600))
			must(tb, os.Remove(p))
			must(tb, os.Symlink(secret, p))
		}, "", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f")
			must(t, os.WriteFile(p, []byte("abc"), 0o644))
			fi, err := os.Lstat(p)
			must(t, err)
			c.change(t, p)
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			err = AddTarEntry(tw, p, "f", fi, false)
			if (err != nil) != c.wantErr {
				t.Fatalf("AddTarEntry = %v, want error %v", err, c.wantErr)
			}
			if err != nil {
				return
			}
			must(t, tw.Close())
			tr := tar.NewReader(&buf)
			_, err = tr.Next()
			must(t, err)
			if b, _ := io.ReadAll(tr); string(b) != c.want {
				t.Errorf("entry content %q, want %q", b, c.want)
			}
		})
	}
}
