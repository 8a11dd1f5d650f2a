// Package testenv gates tests on what the machine has: root, host
// binaries, and fixture files located by environment variables (the VM
// tests' kernel and busybox packages, which scripts/vm-fixtures.sh
// fetches). A gate skips with the reason, or fails when
// BANGER_TEST_STRICT=1 (CI as root), so a missing tool cannot hide a
// test. Every skip in banger's tests goes through this package: a bare
// t.Skip would bypass strict mode (TestNoBareSkips holds that).
//
// A few skips are expected even in CI, for what no package registry CI
// reaches can install (Firecracker) or what the host's kernel may lack
// (vsock loopback): SkipExpected takes one of the names in Expected,
// skips in strict mode too, and appends a line to the file
// $BANGER_TEST_SKIPLOG names, so scripts/test.sh can list at its end
// what was not tested and why. Test code only; nothing in banger's
// binaries imports it.
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

// Strict reports whether BANGER_TEST_STRICT=1: a skip is a failure
// unless it is expected (SkipExpected).
func Strict() bool { return os.Getenv("BANGER_TEST_STRICT") == "1" }

func skipOrFail(tb testing.TB, why string) {
	tb.Helper()
	if Strict() {
		tb.Fatalf("%s (BANGER_TEST_STRICT=1)", why)
	}
	tb.Skip(why)
}

// Skip skips the test for why: something this machine lacks, or a
// set-up step that did not work here. Under BANGER_TEST_STRICT=1 it
// fails the test instead.
func Skip(tb testing.TB, why string) {
	tb.Helper()
	skipOrFail(tb, why)
}

// Expected names the skips that strict mode allows, each with the
// reason a reader of a CI log is given: what no registry CI reaches can
// install, or what the host's kernel may not offer.
var Expected = map[string]string{
	"firecracker":    "Firecracker and its jailer are in no package registry CI reaches, and need KVM with hardware virtualization",
	"vsock-loopback": "the host kernel has no vsock loopback (vsock_loopback) or vhost-vsock; VMs then use the virtio-serial channel",
}

// SkipLogEnv names the file SkipExpected appends its lines to.
const SkipLogEnv = "BANGER_TEST_SKIPLOG"

// SkipExpected skips the test, in strict mode too, for the expected
// reason name (a key of Expected; any other name fails the test), with
// detail saying what this machine showed. It appends "name<TAB>reason"
// to $BANGER_TEST_SKIPLOG when that is set.
func SkipExpected(tb testing.TB, name, detail string) {
	tb.Helper()
	reason, ok := Expected[name]
	if !ok {
		tb.Fatalf("testenv.SkipExpected: %q is not an expected skip (see testenv.Expected)", name)
	}
	if p := os.Getenv(SkipLogEnv); p != "" {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintf(f, "%s\t%s\n", name, reason)
			f.Close()
		}
	}
	tb.Skipf("not tested here: %s, because %s (%s)", name, reason, detail)
}

// SkipInput skips one fuzz or table input the test cannot use (an
// archive archive/tar refuses to write). It is no gap in the machine, so
// strict mode does not apply.
func SkipInput(tb testing.TB, why string) {
	tb.Helper()
	tb.Skip("input not usable: " + why)
}

// SkipShort skips the test under go test -short, which asks to leave out
// slow tests; strict mode does not apply (the runner asked for it).
func SkipShort(tb testing.TB, why string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: " + why)
	}
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
