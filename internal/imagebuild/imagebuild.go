// Package imagebuild builds root file systems from a distribution's
// package archive with mmdebstrap, so banger has a default image on any
// machine that reaches the Debian (or Ubuntu) archive, registry or not.
// It decides the mirror, suite and packages and streams the resulting
// tarball; turning that into an image is imagepull's Import.
package imagebuild

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"banger/internal/debarchive"
	"banger/internal/system"
)

// ErrBuild means mmdebstrap is missing or failed.
var ErrBuild = errors.New("image build failed")

// ErrUnknownDistro means a build spec names a distribution banger cannot
// build.
var ErrUnknownDistro = errors.New("unknown distribution")

// DefaultPackages is what a development sandbox needs beyond a minimal
// system: TLS roots, networking and process tools, a pager, git, curl
// and an ssh client.
var DefaultPackages = []string{
	"ca-certificates", "curl", "git", "iproute2", "iputils-ping", "less",
	"netbase", "openssh-client", "procps", "xz-utils",
}

// Distro is a distribution mmdebstrap can build.
type Distro struct {
	Name         string
	Display      string // as people write it: Debian
	DefaultSuite string
	Mirror       string // the archive, when the host names none
	Security     string // the security archive
	Components   string
	// Keyring verifies the archive; "" uses apt's own trusted keys.
	Keyring string
	// Hint says what to do when the archive cannot be reached.
	Hint string
}

// Distros are the distributions banger builds.
var Distros = map[string]Distro{
	"debian": {
		Name: "debian", Display: "Debian", DefaultSuite: "bookworm",
		Mirror: "http://deb.debian.org/debian", Security: "http://deb.debian.org/debian-security",
		Components: "main",
		Hint:       "check that the Debian archive is reachable (apt-get update), or import a root file system with `banger image import FILE --name debian`",
	},
	"ubuntu": {
		Name: "ubuntu", Display: "Ubuntu", DefaultSuite: "noble",
		Mirror: "http://archive.ubuntu.com/ubuntu", Security: "http://security.ubuntu.com/ubuntu",
		Components: "main universe",
		Keyring:    "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
		Hint:       "the Ubuntu archive must be reachable; otherwise import Ubuntu's own root file system: download ubuntu-base-24.04-base-amd64.tar.gz from cdimage.ubuntu.com and `banger image import FILE --name ubuntu`",
	},
}

// ErrInvalidPackage means an --include item is not a package name. It
// wraps ErrBuild, so callers that only know builds can fail still match.
var ErrInvalidPackage = fmt.Errorf("%w: not a package name", ErrBuild)

// validPackageName accepts a Debian package name and nothing else that
// apt would read as something more: mmdebstrap hands each --include item
// to apt as root, and apt takes a path (./x.deb, /dev/shm/x.deb: installed
// unsigned, its maintainer scripts run as root), a pattern (?name(...),
// ~n), a version (pkg=1.0), a suite (pkg/sid) or a removal (pkg-) as well
// as a name. Policy §5.6.1: at least two characters, lower-case letters,
// digits, + - and ., starting with a letter or digit. A trailing - is
// refused too: apt reads pkg- as "remove pkg".
func validPackageName(p string) bool {
	if len(p) < 2 || len(p) > 128 || strings.HasSuffix(p, "-") {
		return false
	}
	for i, c := range p {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// Spec is what to build.
type Spec struct {
	Distro  Distro
	Suite   string
	Include []string // beyond DefaultPackages
}

// String is the spec as a user writes it: debian:bookworm.
func (s Spec) String() string { return s.Distro.Name + ":" + s.Suite }

// ParseSpec reads DISTRIBUTION[:SUITE], such as debian, debian:trixie or
// ubuntu:noble.
func ParseSpec(s string, include []string) (Spec, error) {
	name, suite, _ := strings.Cut(strings.TrimSpace(s), ":")
	d, ok := Distros[name]
	if !ok {
		var known []string
		for k := range Distros {
			known = append(known, k)
		}
		sort.Strings(known)
		return Spec{}, fmt.Errorf("%w %q: banger builds %s (DISTRIBUTION[:SUITE]); import anything else with `banger image import`", ErrUnknownDistro, name, strings.Join(known, ", "))
	}
	if suite == "" {
		suite = d.DefaultSuite
	}
	if suite == "latest" {
		suite = d.DefaultSuite
	}
	for _, c := range suite {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return Spec{}, fmt.Errorf("%w: suite %q: use a codename such as %s", ErrUnknownDistro, suite, d.DefaultSuite)
		}
	}
	for _, p := range include {
		if !validPackageName(p) {
			return Spec{}, fmt.Errorf("%w: --include %q: give Debian package names (lower-case letters, digits, + - .), one per flag or comma-separated; paths, versions, suites and apt patterns are refused", ErrInvalidPackage, p)
		}
	}
	return Spec{Distro: d, Suite: suite, Include: include}, nil
}

// Mirrors are the archives a build reads.
type Mirrors = debarchive.Mirrors

// HostMirrors returns the mirrors the host's apt uses for d (see
// debarchive.HostMirrors), or d's own.
func HostMirrors(d Distro, etcApt string) Mirrors {
	def := Mirrors{Archive: d.Mirror, Security: d.Security}
	if d.Name != "debian" {
		return def // only Debian hosts' mirrors carry Debian
	}
	return debarchive.HostMirrors(etcApt, def)
}

// Args is mmdebstrap's command line for spec, writing a tarball of the
// root file system to standard output.
func Args(spec Spec, m Mirrors) []string {
	pkgs := append(append([]string(nil), DefaultPackages...), spec.Include...)
	args := []string{"--variant=apt", "--mode=auto", "--format=tar", "--include=" + strings.Join(pkgs, ",")}
	if spec.Distro.Keyring != "" {
		args = append(args, "--keyring="+spec.Distro.Keyring)
	}
	args = append(args, spec.Suite, "-",
		fmt.Sprintf("deb %s %s %s", m.Archive, spec.Suite, spec.Distro.Components),
		fmt.Sprintf("deb %s %s-updates %s", m.Archive, spec.Suite, spec.Distro.Components),
	)
	// Debian's security suite lives in its own archive; Ubuntu's in the
	// security host's copy of the main one.
	args = append(args, fmt.Sprintf("deb %s %s-security %s", m.Security, spec.Suite, spec.Distro.Components))
	return args
}

// Build runs mmdebstrap for spec and streams the root file system
// tarball to w. A failure is ErrBuild with mmdebstrap's last error line
// and what to do.
func Build(ctx context.Context, runner system.CommandRunner, spec Spec, m Mirrors, w io.Writer) error {
	sr, ok := runner.(system.StdoutRunner)
	if !ok {
		return fmt.Errorf("%w: the command runner cannot stream output", ErrBuild)
	}
	if _, err := system.LookPath("mmdebstrap"); err != nil {
		return fmt.Errorf("%w: building %s needs mmdebstrap: `apt-get install mmdebstrap`, or import a root file system with `banger image import`", ErrBuild, spec)
	}
	if k := spec.Distro.Keyring; k != "" {
		if _, err := os.Stat(k); err != nil {
			return fmt.Errorf("%w: building %s needs the archive's keyring %s (package %s-keyring, in %s and in Debian from trixie on); %s", ErrBuild, spec, k, spec.Distro.Name, spec.Distro.Display, spec.Distro.Hint)
		}
	}
	err := sr.RunStdout(ctx, w, "mmdebstrap", Args(spec, m)...)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	var ce *system.CommandError
	if errors.As(err, &ce) {
		return fmt.Errorf("%w: mmdebstrap %s (exit %d): %s: %s", ErrBuild, spec, ce.ExitCode, strings.TrimSuffix(LastError(ce.Stderr), "."), spec.Distro.Hint)
	}
	return fmt.Errorf("%w: mmdebstrap %s: %v: %s", ErrBuild, spec, err, spec.Distro.Hint)
}

// LastError picks the line of mmdebstrap's output that says what went
// wrong: its first "E:" line (the cause; later ones say what failed
// because of it), else the last line.
func LastError(stderr string) string {
	// system.Tail folds line breaks into " | ".
	parts := strings.Split(stderr, " | ")
	for _, p := range parts {
		if p = strings.TrimSpace(p); strings.HasPrefix(p, "E:") {
			return p
		}
	}
	for i := len(parts) - 1; i >= 0; i-- {
		if p := strings.TrimSpace(parts[i]); p != "" {
			return p
		}
	}
	return "no output"
}
