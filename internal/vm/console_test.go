package vm

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/consolelog"
	"banger/internal/vmm"
	"banger/internal/vsockagent"
)

// fakeMachine is a VMM that exits when exit is closed.
type fakeMachine struct{ exit chan struct{} }

func (m *fakeMachine) PID() int                   { return 1 }
func (m *fakeMachine) ConsolePath() string        { return "" }
func (m *fakeMachine) Stop(context.Context) error { return nil }
func (m *fakeMachine) Kill() error                { return nil }
func (m *fakeMachine) DialAgent(context.Context, uint32) (net.Conn, error) {
	return nil, vmm.ErrNotSupported
}
func (m *fakeMachine) Wait(ctx context.Context) error {
	select {
	case <-m.exit:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// cutHere in a boot's writes pads the log so that the next write is cut
// by a rotation.
const cutHere = "\x00cut"

// TestWaitReady boots against a console log that already holds a whole
// earlier boot, ready line included, at the cap: only this boot's output
// counts, across the rotations it causes.
func TestWaitReady(t *testing.T) {
	const max = consolelog.MinMax
	earlier := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "console.log")
		w, _ := consolelog.Open(path, max)
		w.Write(bytes.Repeat([]byte("earlier boot\r\n"), max/2/14))
		w.Write([]byte("[ 0.1] Kernel panic - an earlier boot\r\n" + vsockagent.ReadyLine + " v0\r\n"))
		w.Close()
		return path
	}
	noise := bytes.Repeat([]byte("[ 1.0] this boot\r\n"), max/2/18)
	cases := []struct {
		name    string
		boot    []string // what this boot writes, one write each
		exits   bool
		wantErr string // "" for ready
	}{
		{"ready, the line cut by a rotation", []string{string(noise), cutHere, vsockagent.ReadyLine + " v1\r\n"}, false, ""},
		{"an earlier boot's ready line does not count", []string{string(noise), "[ 2.0] Kernel panic - not syncing: this boot\r\n"}, true, "Kernel panic - not syncing: this boot"},
		{"not ready in time", []string{"[ 1.0] slow\r\n"}, false, "not ready within"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := earlier(t)
			since := consolelog.Follow(path, false)
			defer since.Close()
			m := &fakeMachine{exit: make(chan struct{})}
			written := make(chan struct{})
			go func() {
				defer close(written)
				w, _ := consolelog.Open(path, max)
				defer w.Close()
				for _, b := range c.boot {
					if b == cutHere {
						// Fill the file so the rotation falls 7 bytes
						// into what comes next.
						fi, _ := os.Stat(path)
						b = strings.Repeat("x", max/2-int(fi.Size())-7)
					}
					w.Write([]byte(b))
					time.Sleep(30 * time.Millisecond)
				}
				if c.exits {
					close(m.exit)
				}
			}()
			err := waitReady(m, since, written, 2*time.Second)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("not ready: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr) || strings.Contains(err.Error(), "earlier")):
				t.Fatalf("waitReady = %v, want an error about this boot with %q", err, c.wantErr)
			}
			if prev, _ := os.ReadFile(path + consolelog.Rotated); len(c.boot) > 1 && c.boot[1] == cutHere && !bytes.HasSuffix(prev, []byte(vsockagent.ReadyLine[:7])) {
				t.Errorf("the rotation did not cut the ready line: the rotated half ends %q", prev[len(prev)-20:])
			}
		})
	}
}
