// Package testenv gates tests on what the machine has: root, host
// binaries, and fixture files located by environment variables (the VM
// tests' kernel and busybox packages, which scripts/vm-fixtures.sh
// fetches). A gate skips with the reason, or fails when
// BANGER_TEST_STRICT=1 (CI as root), so a missing tool cannot hide a
// test. Test code only; nothing in banger's binaries imports it.
package testenv

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"testing"

	"banger/internal/system"
)

func skipOrFail(tb testing.TB, why string) {
	tb.Helper()
	if os.Getenv("BANGER_TEST_STRICT") == "1" {
		tb.Fatalf("%s (BANGER_TEST_STRICT=1)", why)
	}
	tb.Skip(why)
}

// RequireRoot skips unless the test runs as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(tb, "needs root")
	}
}

// Require skips unless ok, a capability the caller probed (a cgroup
// hierarchy, a kernel feature); why says what is missing and how to get it.
func Require(tb testing.TB, ok bool, why string) {
	tb.Helper()
	if !ok {
		skipOrFail(tb, why)
	}
}

// RequireBinary skips unless name is on PATH; install says how to get it.
func RequireBinary(tb testing.TB, name, install string) {
	tb.Helper()
	if _, err := system.LookPath(name); err != nil {
		skipOrFail(tb, name+" not on PATH: "+install)
	}
}

// Fixture returns the file the environment variable env names, skipping
// when it is unset; what says what the file is and how to get one.
func Fixture(tb testing.TB, env, what string) string {
	tb.Helper()
	p := os.Getenv(env)
	if p == "" {
		skipOrFail(tb, "set "+env+": "+what)
	}
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("%s: %v", env, err)
	}
	return p
}

// The VM tests' fixtures (scripts/vm-fixtures.sh).
const (
	KernelDeb  = "BANGER_TEST_KERNEL_DEB"
	BusyboxDeb = "BANGER_TEST_BUSYBOX_DEB"
	DebianRoot = "BANGER_TEST_DEBIAN_ROOT"
)

// KernelPackage is the Debian cloud kernel package the tests import.
func KernelPackage(tb testing.TB) string {
	tb.Helper()
	return Fixture(tb, KernelDeb, "a linux-image-*-cloud-amd64 .deb (eval \"$(scripts/vm-fixtures.sh)\")")
}

// NetNS creates a named network namespace with loopback up for this
// test and deletes it (and everything in it) when the test ends. Tests
// send traffic only inside namespaces they made this way.
func NetNS(tb testing.TB) string {
	tb.Helper()
	RequireRoot(tb)
	RequireBinary(tb, "ip", "apt-get install iproute2")
	b := make([]byte, 4)
	rand.Read(b)
	name := fmt.Sprintf("bgt-%x", b)
	r := system.Runner{}
	if _, err := r.Run(context.Background(), "ip", "netns", "add", name); err != nil {
		tb.Fatalf("creating network namespace: %v", err)
	}
	tb.Cleanup(func() {
		if _, err := r.Run(context.Background(), "ip", "netns", "delete", name); err != nil {
			tb.Errorf("deleting network namespace %s: %v", name, err)
		}
	})
	if _, err := r.Run(context.Background(), "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		tb.Fatalf("bringing lo up in %s: %v", name, err)
	}
	return name
}

// IP runs `ip ARGS...` for test setup and fails the test on error.
func IP(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := system.Runner{}.Run(context.Background(), "ip", args...)
	if err != nil {
		tb.Fatalf("ip %v: %v", args, err)
	}
	return string(out)
}

// Serve accepts connections on ln until the test ends, handling each in
// its own goroutine and closing it after.
func Serve(tb testing.TB, ln net.Listener, handle func(net.Conn)) {
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// TellRemoteIP answers a connection with the address it came from: what
// a server beyond a NAT sees.
func TellRemoteIP(c net.Conn) { fmt.Fprintln(c, c.RemoteAddr().(*net.TCPAddr).IP) }

// Echo sends back what it reads, then half-closes.
func Echo(c net.Conn) {
	io.Copy(c, c)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
