package hostnet

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"banger/internal/testenv"
)

func TestParsePort(t *testing.T) {
	for in, want := range map[string]string{
		"8080:80":           "127.0.0.1:8080:80/tcp",
		"8080:80/tcp":       "127.0.0.1:8080:80/tcp",
		"0.0.0.0:2222:22":   "0.0.0.0:2222:22/tcp",
		"10.1.2.3:443:8443": "10.1.2.3:443:8443/tcp",
	} {
		p, err := ParsePort(in)
		if err != nil || p.String() != want {
			t.Errorf("ParsePort(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, in := range []string{"80", "0:80", "8080:70000", "a:b", "53:53/udp", "x.y:1:2"} {
		if _, err := ParsePort(in); err == nil || !strings.Contains(err.Error(), "-p 8080:80") {
			t.Errorf("ParsePort(%q) = %v, want an error with an example", in, err)
		}
	}
}

// netWithGuest is a namespace with banger's bridge and one guest stand-in
// at 10.253.0.11 running an echo server on port 7.
func netWithGuest(t testing.TB) (*Net, string) {
	ns := testenv.NetNS(t)
	n, err := Open(Config{NetNS: ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	g := guest(t, ns, "bg-g1", "10.253.0.11")
	var ln net.Listener
	if err := InNetNS(g, func() (err error) { ln, err = net.Listen("tcp", "10.253.0.11:7"); return }); err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, testenv.Echo)
	return n, ns
}

func echo(ns, addr string, payload []byte) ([]byte, error) {
	var c net.Conn
	if err := InNetNS(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, time.Second); return }); err != nil {
		return nil, err
	}
	defer c.Close()
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	return io.ReadAll(c)
}

func TestForwardEchoRoundTrip(t *testing.T) {
	n, ns := netWithGuest(t)
	p, _ := ParsePort("18080:7")
	f, err := n.Forward(p, netip.MustParseAddr("10.253.0.11"))
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	got, err := echo(ns, "127.0.0.1:18080", payload)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo through the published port: %d of %d bytes back, %v", len(got), len(payload), err)
	}
	// The port is taken while published: a second one is refused clearly.
	if _, err := n.Forward(p, netip.MustParseAddr("10.253.0.11")); !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "-p OTHER:7") {
		t.Errorf("second publish of the same port: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := echo(ns, "127.0.0.1:18080", []byte("x")); err == nil {
		t.Error("the port still answers after Close")
	}
	// And it is free again.
	f2, err := n.Forward(p, netip.MustParseAddr("10.253.0.11"))
	if err != nil {
		t.Fatalf("port not released: %v", err)
	}
	f2.Close()
}
