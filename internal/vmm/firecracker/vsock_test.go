package firecracker

import (
	"banger/internal/testenv"
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// fakeHybridVsock speaks Firecracker's side of the hybrid vsock
// handshake: it accepts ports in open, answers "OK 1073741824" and then
// the guest's first bytes in the same write, and closes otherwise.
func fakeHybridVsock(t *testing.T, open map[string]bool) string {
	t.Helper()
	dir, _ := os.MkdirTemp("", "fv")
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, "v.sock")
	ln, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		if !open[line] {
			return
		}
		// The reply and the guest's greeting arrive together.
		c.Write([]byte("OK 1073741824\nhello from the guest"))
		io.Copy(io.Discard, c)
	})
	return p
}

func TestDialVsock(t *testing.T) {
	p := fakeHybridVsock(t, map[string]bool{"CONNECT 1024\n": true})
	c, err := DialVsock(context.Background(), p, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 64)
	n, _ := io.ReadAtLeast(c, b, len("hello from the guest"))
	if string(b[:n]) != "hello from the guest" {
		t.Errorf("bytes after the handshake = %q: the handshake swallowed them", b[:n])
	}
	if _, err := DialVsock(context.Background(), p, 9); !errors.Is(err, ErrVsockRefused) {
		t.Errorf("closed port: err = %v, want ErrVsockRefused", err)
	}
	if _, err := DialVsock(context.Background(), filepath.Join(t.TempDir(), "none"), 1); err == nil {
		t.Errorf("missing socket: no error")
	}
}
