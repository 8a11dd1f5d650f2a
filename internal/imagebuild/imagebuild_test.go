package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"banger/internal/system"
)

func TestParseSpec(t *testing.T) {
	for in, want := range map[string]string{"debian": "debian:bookworm", "debian:trixie": "debian:trixie", "debian:latest": "debian:bookworm", "ubuntu": "ubuntu:noble", "ubuntu:jammy": "ubuntu:jammy"} {
		s, err := ParseSpec(in, nil)
		if err != nil || s.String() != want {
			t.Errorf("ParseSpec(%q) = %v, %v; want %s", in, s, err, want)
		}
	}
	for _, bad := range []string{"fedora:40", "", "debian:Book worm", "debian:../x"} {
		if _, err := ParseSpec(bad, nil); !errors.Is(err, ErrUnknownDistro) {
			t.Errorf("ParseSpec(%q) err = %v, want ErrUnknownDistro", bad, err)
		}
	}
	// Each of these apt would take as more than a package name: a local
	// .deb installed unsigned as root, patterns, versions, suites, removals.
	for _, bad := range []string{"", "a b", "-oAPT::x", "a,b", "/dev/shm/x.deb", "./x.deb", "../x.deb", "x.deb/",
		"?name(python3)", "~npython", "python3=3.11", "python3/sid", "python3-", "Python3", "p", "a\nb", "pkg:amd64",
		"file:///tmp/x.deb", "?essential", "*"} {
		_, err := ParseSpec("debian", []string{bad})
		if !errors.Is(err, ErrInvalidPackage) || !errors.Is(err, ErrBuild) {
			t.Errorf("--include %q: err = %v, want ErrInvalidPackage", bad, err)
		}
	}
	for _, good := range []string{"python3", "g++", "libstdc++6", "linux-image-6.1.0-57-cloud-amd64", "xz-utils", "0ad", "node.js"} {
		if _, err := ParseSpec("debian", []string{good}); err != nil {
			t.Errorf("--include %q: %v", good, err)
		}
	}
}

func TestArgs(t *testing.T) {
	s, _ := ParseSpec("debian:bookworm", []string{"python3"})
	got := Args(s, Mirrors{Archive: "http://m.example/debian", Security: "http://m.example/debian-security"})
	want := []string{"--variant=apt", "--mode=auto", "--format=tar",
		"--include=ca-certificates,curl,git,iproute2,iputils-ping,less,netbase,openssh-client,procps,xz-utils,python3",
		"bookworm", "-",
		"deb http://m.example/debian bookworm main",
		"deb http://m.example/debian bookworm-updates main",
		"deb http://m.example/debian-security bookworm-security main"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Args =\n%q\nwant\n%q", got, want)
	}
	u, _ := ParseSpec("ubuntu", nil)
	got = Args(u, HostMirrors(u.Distro, "/nonexistent"))
	if !strings.Contains(strings.Join(got, " "), "--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg") || got[len(got)-1] != "deb http://security.ubuntu.com/ubuntu noble-security main universe" {
		t.Errorf("ubuntu args: %q", got)
	}
}

func TestLastError(t *testing.T) {
	tail := system.Tail("I: chroot architecture amd64\nE: The repository 'http://x nosuch Release' does not have a Release file.\nE: apt-get update failed\nE: mmdebstrap failed to run\n", 2048)
	if got := LastError(tail); got != "E: The repository 'http://x nosuch Release' does not have a Release file." {
		t.Errorf("LastError = %q", got)
	}
	if got := LastError("I: a | I: b"); got != "I: b" {
		t.Errorf("LastError without E: = %q", got)
	}
}

func TestBuildWithoutMmdebstrap(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	s, _ := ParseSpec("debian", nil)
	err := Build(context.Background(), system.Runner{}, s, Mirrors{}, &bytes.Buffer{})
	if !errors.Is(err, ErrBuild) || !strings.Contains(err.Error(), "apt-get install mmdebstrap") {
		t.Errorf("err = %v", err)
	}
}

// TestBuildReportsMmdebstrapsError runs a stand-in mmdebstrap that fails
// as the real one does for a missing suite.
func TestBuildReportsMmdebstrapsError(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho 'I: reading' >&2\necho \"E: The repository '$7' does not have a Release file.\" >&2\necho 'E: mmdebstrap failed to run' >&2\nexit 25\n"
	os.WriteFile(filepath.Join(dir, "mmdebstrap"), []byte(script), 0o755)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	s, _ := ParseSpec("debian:nosuch", nil)
	err := Build(context.Background(), system.Runner{}, s, Mirrors{Archive: "http://a", Security: "http://s"}, &bytes.Buffer{})
	if !errors.Is(err, ErrBuild) || !strings.Contains(err.Error(), "(exit 25): E: The repository 'deb http://a nosuch main' does not have a Release file: check") || !strings.Contains(err.Error(), "banger image import") {
		t.Errorf("err = %v", err)
	}
}
