package imagepull

import (
	"bytes"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// testRegistry is a real OCI distribution registry on loopback, with
// hooks to count and tamper with what it serves.
type testRegistry struct {
	host string
	mu   sync.Mutex
	gets map[string]int // blob digest → GET count
	// tamper, when set for a digest, rewrites the blob body.
	tamper map[string]func([]byte) []byte
	// truncate, when set for a digest, serves only that many bytes.
	truncate map[string]int
	user     string
	pass     string
}

func startRegistry(tb testing.TB) *testRegistry {
	tb.Helper()
	tr := &testRegistry{gets: map[string]int{}, tamper: map[string]func([]byte) []byte{}, truncate: map[string]int{}}
	inner := registry.New(registry.Logger(nopLogger()))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		user, pass := tr.user, tr.pass
		tr.mu.Unlock()
		if user != "" {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="banger-test"`)
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
				return
			}
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			digest := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			tr.mu.Lock()
			tr.gets[digest]++
			tamper, cut, hasCut := tr.tamper[digest], 0, false
			cut, hasCut = tr.truncate[digest]
			tr.mu.Unlock()
			if tamper != nil || hasCut {
				rec := httptest.NewRecorder()
				inner.ServeHTTP(rec, r)
				body := rec.Body.Bytes()
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				if tamper != nil {
					body = tamper(body)
				}
				w.WriteHeader(rec.Code)
				if hasCut {
					body = body[:min(cut, len(body)/2)]
				}
				w.Write(body)
				return
			}
		}
		inner.ServeHTTP(w, r)
	}))
	tb.Cleanup(srv.Close)
	tr.host = strings.TrimPrefix(srv.URL, "http://")
	return tr
}

func (tr *testRegistry) blobGets(digest string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.gets[digest]
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// imageSpec describes a test image.
type imageSpec struct {
	arch   string // default amd64
	layers [][]byte
	cfg    v1.Config
}

// buildTestImage assembles an image with gzip-compressed layers.
func buildTestImage(tb testing.TB, spec imageSpec) v1.Image {
	tb.Helper()
	var ls []v1.Layer
	for _, l := range spec.layers {
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l)), nil })
		if err != nil {
			tb.Fatal(err)
		}
		ls = append(ls, layer)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		tb.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		tb.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = spec.arch
	if cf.Architecture == "" {
		cf.Architecture = "amd64"
	}
	cf.Config = spec.cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

// push writes img to repoTag on the registry and returns its reference.
func (tr *testRegistry) push(tb testing.TB, repoTag string, img v1.Image) string {
	tb.Helper()
	ref := tr.host + "/" + repoTag
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	opts := []remote.Option{}
	if tr.user != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: tr.user, Password: tr.pass}))
	}
	if err := remote.Write(r, img, opts...); err != nil {
		tb.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// pushIndex writes an index of the given images, one per platform.
func (tr *testRegistry) pushIndex(tb testing.TB, repoTag string, imgs map[string]v1.Image) string {
	tb.Helper()
	var adds []mutate.IndexAddendum
	for arch, img := range imgs {
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	ref := tr.host + "/" + repoTag
	r, _ := name.ParseReference(ref, name.Insecure)
	if err := remote.WriteIndex(r, idx); err != nil {
		tb.Fatalf("push index %s: %v", ref, err)
	}
	return ref
}

// fakeAgent writes a stand-in agent binary; injection copies any file.
func fakeAgent(tb testing.TB) (string, string) {
	tb.Helper()
	content := "#!/bin/sh\necho banger-vsock-agent test build\n"
	p := filepath.Join(tb.TempDir(), "banger-vsock-agent")
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		tb.Fatal(err)
	}
	return p, content
}

// rawLayerImage is an image whose single layer blob is exactly b.
func rawLayerImage(tb testing.TB, b []byte) v1.Image {
	tb.Helper()
	layer := static.NewLayer(b, types.DockerLayer)
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		tb.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		tb.Fatal(err)
	}
	return img
}
