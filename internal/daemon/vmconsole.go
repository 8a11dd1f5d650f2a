package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/system"
	"banger/internal/vmm"
	"banger/internal/vsockagent"
)

// This file is the serial console: reading it for the ready line and for
// the telling lines of a failed boot, and serving `vm logs`.

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// waitReady watches the console, from offset on, for the agent's ready
// line; the VMM exiting or the timeout end the wait with the console's
// last lines.
func waitReady(m vmm.Machine, console string, offset int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	exited := make(chan struct{})
	go func() {
		m.Wait(context.Background())
		close(exited)
	}()
	for {
		if b, err := readFrom(console, offset); err == nil && bytes.Contains(b, []byte(vsockagent.ReadyLine)) {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("the VM stopped before it was ready; console: %s", consoleTail(console, offset))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the VM was not ready within %s; console: %s", timeout, consoleTail(console, offset))
		}
	}
}

// readFrom reads p from offset on, or from the start when the file is
// now shorter (a VMM that truncated it).
func readFrom(p string, offset int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() < offset {
		offset = 0
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

// consoleTail is the telling part of the console on one line: the init
// stage's fatal error or the kernel's panic when there is one, else the
// last few lines.
func consoleTail(p string, offset int64) string {
	b, _ := readFrom(p, offset)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, l := range lines {
		if strings.Contains(l, "banger-init: FATAL") || strings.Contains(l, "Kernel panic") {
			return system.Tail(l, 600)
		}
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return system.Tail(strings.Join(lines, "\n"), 600)
}

// handleVMLogs streams the console log; with follow=1 it keeps streaming
// new output until the client goes away.
func (d *Daemon) handleVMLogs(w http.ResponseWriter, r *http.Request) error {
	v, err := d.store.VM(r.Context(), r.PathValue("name"))
	if err != nil {
		return vmHint(err)
	}
	f, err := os.Open(filepath.Join(v.Dir, "console.log"))
	if errors.Is(err, os.ErrNotExist) {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
			rc.Flush()
			continue
		}
		if err != nil && err != io.EOF {
			return nil
		}
		if r.URL.Query().Get("follow") != "1" {
			return nil
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}
