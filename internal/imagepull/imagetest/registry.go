package imagetest

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is a real OCI distribution registry on loopback, with
// hooks to count and tamper with what it serves.
type Registry struct {
	// Host is host:port of the registry, for references.
	Host     string
	mu       sync.Mutex
	gets     map[string]int // blob digest → GET count
	delay    time.Duration
	tamper   map[string]func([]byte) []byte
	truncate map[string]int
	user     string
	pass     string
}

// SetDelay makes the registry sleep d before serving every blob.
func (tr *Registry) SetDelay(d time.Duration) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.delay = d
}

// SetAuth makes every request need basic auth with user and pass.
func (tr *Registry) SetAuth(user, pass string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.user, tr.pass = user, pass
}

// TamperBlob makes the registry serve fn(body) for the blob with digest.
func (tr *Registry) TamperBlob(digest string, fn func([]byte) []byte) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.tamper[digest] = fn
}

// TruncateBlob makes the registry serve at most n bytes (and at most
// half) of the blob with digest.
func (tr *Registry) TruncateBlob(digest string, n int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.truncate[digest] = n
}

func StartRegistry(tb testing.TB) *Registry {
	tb.Helper()
	tr := &Registry{gets: map[string]int{}, tamper: map[string]func([]byte) []byte{}, truncate: map[string]int{}}
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
			delay := tr.delay
			tamper := tr.tamper[digest]
			cut, hasCut := tr.truncate[digest]
			tr.mu.Unlock()
			time.Sleep(delay)
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
	tr.Host = strings.TrimPrefix(srv.URL, "http://")
	return tr
}

func (tr *Registry) BlobGets(digest string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.gets[digest]
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// ImageSpec describes a test image.
type ImageSpec struct {
	Arch   string // default amd64
	Layers [][]byte
	Config v1.Config
	// GzipLevel compresses the layers; 0 means gzip's default.
	GzipLevel int
}

// Image assembles an image with gzip-compressed layers.
func Image(tb testing.TB, spec ImageSpec) v1.Image {
	tb.Helper()
	var ls []v1.Layer
	var opts []tarball.LayerOption
	if spec.GzipLevel != 0 {
		opts = append(opts, tarball.WithCompressionLevel(spec.GzipLevel))
	}
	for _, l := range spec.Layers {
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l)), nil }, opts...)
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
	cf.Architecture = spec.Arch
	if cf.Architecture == "" {
		cf.Architecture = "amd64"
	}
	cf.Config = spec.Config
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

// push writes img to repoTag on the registry and returns its reference.
func (tr *Registry) Push(tb testing.TB, repoTag string, img v1.Image) string {
	tb.Helper()
	ref := tr.Host + "/" + repoTag
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	opts := []remote.Option{}
	tr.mu.Lock()
	user, pass := tr.user, tr.pass
	tr.mu.Unlock()
	if user != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
	}
	if err := remote.Write(r, img, opts...); err != nil {
		tb.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// pushIndex writes an index of the given images, one per platform.
func (tr *Registry) PushIndex(tb testing.TB, repoTag string, imgs map[string]v1.Image) string {
	tb.Helper()
	var adds []mutate.IndexAddendum
	for arch, img := range imgs {
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	ref := tr.Host + "/" + repoTag
	r, _ := name.ParseReference(ref, name.Insecure)
	if err := remote.WriteIndex(r, idx); err != nil {
		tb.Fatalf("push index %s: %v", ref, err)
	}
	return ref
}

// RawLayerImage is an image whose single layer blob is exactly b.
func RawLayerImage(tb testing.TB, b []byte) v1.Image {
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
