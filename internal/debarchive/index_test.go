package debarchive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/ulikunitz/xz"

	"banger/internal/system"
	"banger/internal/testenv"
)

// testArchive is a Debian archive served on loopback, its InRelease
// signed by a key made for the test.
type testArchive struct {
	*httptest.Server
	keyring string
	gnupg   string
	mu      sync.Mutex
	files   map[string][]byte
	gets    map[string]int
}

func newTestArchive(t *testing.T) *testArchive {
	t.Helper()
	testenv.RequireBinary(t, "gpg", "apt-get install gpg")
	testenv.RequireBinary(t, "gpgv", "apt-get install gpgv")
	dir, err := os.MkdirTemp("", "bgpg") // gpg-agent's socket path must be short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", dir, "--kill", "all").Run()
		os.RemoveAll(dir)
	})
	gpg := func(args ...string) []byte {
		cmd := exec.Command("gpg", append([]string{"--homedir", dir, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("gpg %v: %v", args, err)
		}
		return out
	}
	gpg("--quick-gen-key", "banger test archive <archive@banger.test>", "ed25519", "sign", "never")
	keyring := filepath.Join(dir, "keyring.gpg")
	if err := os.WriteFile(keyring, gpg("--export"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &testArchive{keyring: keyring, gnupg: dir, files: map[string][]byte{}, gets: map[string]int{}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		b, ok := a.files[r.URL.Path]
		a.gets[r.URL.Path]++
		a.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(a.Close)
	return a
}

// publish writes a suite whose index lists pkgs (name → version), and
// returns the Release text it signed.
func (a *testArchive) publish(t *testing.T, suite string, pkgs map[string]string) {
	t.Helper()
	var idx strings.Builder
	for name, ver := range pkgs {
		deb := []byte("deb of " + name + " " + ver)
		file := fmt.Sprintf("pool/main/l/linux/%s_%s_amd64.deb", name, ver)
		a.files["/"+file] = deb
		fmt.Fprintf(&idx, "Package: %s\nVersion: %s\nArchitecture: amd64\nFilename: %s\nSize: %d\nSHA256: %s\nDescription: test\n  continued\n\n", name, ver, file, len(deb), hashOf(deb))
	}
	var xzBuf bytes.Buffer
	w, _ := xz.NewWriter(&xzBuf)
	w.Write([]byte(idx.String()))
	w.Close()
	path := "main/binary-amd64/Packages.xz"
	a.files["/dists/"+suite+"/"+path] = xzBuf.Bytes()
	release := fmt.Sprintf("Origin: Debian\nSuite: %s\nSHA256:\n %s %d %s\n %s %d main/binary-amd64/Packages\n", suite, hashOf(xzBuf.Bytes()), xzBuf.Len(), path, strings.Repeat("0", 64), idx.Len())
	rel := filepath.Join(t.TempDir(), "Release")
	os.WriteFile(rel, []byte(release), 0o644)
	cmd := exec.Command("gpg", "--homedir", a.gnupg, "--batch", "--yes", "--clearsign", "--output", "-", rel)
	signed, err := cmd.Output()
	if err != nil {
		t.Fatalf("gpg --clearsign: %v", err)
	}
	a.mu.Lock()
	a.files["/dists/"+suite+"/InRelease"] = signed
	a.mu.Unlock()
}

func (a *testArchive) archive(t *testing.T) *Archive {
	return &Archive{Runner: system.Runner{}, Keyring: a.keyring, CacheDir: filepath.Join(t.TempDir(), "cache")}
}

var cloudRE = regexp.MustCompile(`^linux-image-[0-9.]+-[0-9]+-cloud-amd64$`)

func TestPackagesNewestVerifiedAndCached(t *testing.T) {
	srv := newTestArchive(t)
	srv.publish(t, "bookworm", map[string]string{
		"linux-image-6.1.0-56-cloud-amd64": "6.1.192-2",
		"linux-image-6.1.0-57-cloud-amd64": "6.1.192-3",
		"linux-image-cloud-amd64":          "6.1.192-3", // the metapackage
		"linux-image-6.1.0-57-amd64":       "6.1.192-3",
	})
	a := srv.archive(t)
	pkgs, err := a.Packages(context.Background(), srv.URL, "bookworm", "main", "amd64", cloudRE)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 2 {
		t.Fatalf("got %d packages, want the two cloud kernels: %+v", len(pkgs), pkgs)
	}
	best, _ := Newest(pkgs)
	if best.Name != "linux-image-6.1.0-57-cloud-amd64" || best.Version != "6.1.192-3" || best.URL != srv.URL+"/"+best.Filename || best.Size == 0 {
		t.Errorf("newest = %+v", best)
	}
	// Again: only InRelease is fetched; the index comes from the cache.
	if _, err := a.Packages(context.Background(), srv.URL, "bookworm", "main", "amd64", cloudRE); err != nil {
		t.Fatal(err)
	}
	if n := srv.gets["/dists/bookworm/main/binary-amd64/Packages.xz"]; n != 1 {
		t.Errorf("index fetched %d times, want once", n)
	}
	if n := srv.gets["/dists/bookworm/InRelease"]; n != 2 {
		t.Errorf("InRelease fetched %d times, want twice", n)
	}
}

func TestPackagesRefusesTampering(t *testing.T) {
	srv := newTestArchive(t)
	srv.publish(t, "bookworm", map[string]string{"linux-image-6.1.0-57-cloud-amd64": "6.1.192-3"})
	ctx := context.Background()

	// An index that does not match the signed hash.
	good := srv.files["/dists/bookworm/main/binary-amd64/Packages.xz"]
	srv.files["/dists/bookworm/main/binary-amd64/Packages.xz"] = append([]byte{}, append(good[:len(good)-1], good[len(good)-1]^1)...)
	if _, err := srv.archive(t).Packages(ctx, srv.URL, "bookworm", "main", "amd64", cloudRE); !errors.Is(err, ErrUnverified) {
		t.Errorf("tampered index: err = %v, want ErrUnverified", err)
	}
	srv.files["/dists/bookworm/main/binary-amd64/Packages.xz"] = good

	// A Release whose signed text was edited.
	signed := srv.files["/dists/bookworm/InRelease"]
	srv.files["/dists/bookworm/InRelease"] = bytes.Replace(signed, []byte("Origin: Debian"), []byte("Origin: Evil!"), 1)
	_, err := srv.archive(t).Packages(ctx, srv.URL, "bookworm", "main", "amd64", cloudRE)
	if !errors.Is(err, ErrUnverified) || !strings.Contains(err.Error(), "gpgv") {
		t.Errorf("edited InRelease: err = %v, want ErrUnverified from gpgv", err)
	}
	srv.files["/dists/bookworm/InRelease"] = signed

	// Signed by a key the keyring does not hold.
	a := srv.archive(t)
	a.Keyring = filepath.Join(t.TempDir(), "empty.gpg")
	os.WriteFile(a.Keyring, nil, 0o644)
	if _, err := a.Packages(ctx, srv.URL, "bookworm", "main", "amd64", cloudRE); !errors.Is(err, ErrUnverified) {
		t.Errorf("unknown key: err = %v, want ErrUnverified", err)
	}

	// No such suite.
	if _, err := srv.archive(t).Packages(ctx, srv.URL, "nosuch", "main", "amd64", cloudRE); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "404") {
		t.Errorf("missing suite: err = %v, want ErrUnreachable with 404", err)
	}
}

func TestHostMirrors(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte(`Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security/
Suites: bookworm-security
Components: main
`), 0o644)
	os.WriteFile(filepath.Join(dir, "sources.list"), []byte("deb [arch=amd64] https://other.example/apt cloud-sdk-bookworm main\n"), 0o644)
	def := Mirrors{Archive: "http://deb.debian.org/debian", Security: "http://deb.debian.org/debian-security"}
	got := HostMirrors(dir, def)
	want := Mirrors{Archive: "http://mirror.example/debian", Security: "http://mirror.example/debian-security"}
	if got != want {
		t.Errorf("HostMirrors = %+v, want %+v", got, want)
	}
	if got := HostMirrors(t.TempDir(), def); got != def {
		t.Errorf("no sources: %+v, want the defaults", got)
	}
	// A one-line sources.list only.
	d2 := t.TempDir()
	os.WriteFile(filepath.Join(d2, "sources.list"), []byte("deb http://ftp.example/debian/ bookworm main\ndeb-src http://x/debian bookworm main\n"), 0o644)
	if got := HostMirrors(d2, def); got.Archive != "http://ftp.example/debian" || got.Security != def.Security {
		t.Errorf("sources.list: %+v", got)
	}
}
