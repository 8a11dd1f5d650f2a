package imagepull

import (
	"archive/tar"
	"banger/internal/testenv"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"banger/internal/imagepull/imagetest"
	"banger/internal/system"
)

// The pull benchmarks share one image of about $BANGER_BENCH_MIB MiB
// (default 300) in four gzip layers: thousands of files from 1 KiB to
// 8 MiB, half random and half text (so it compresses about 2:1), a tenth
// owned by uid 1000, with upper layers replacing and whiting out files of
// lower ones, like a real image.
//
// Run all of them in one go and compare the ratios (bench/pull.sh does):
//
//	go test -run '^$' -bench 'Pull' -benchtime 3x ./internal/imagepull
var benchImage struct {
	once sync.Once
	reg  *imagetest.Registry
	ref  string
	img  v1.Image
	mib  int
}

func setupBenchImage(b *testing.B) {
	benchImage.once.Do(func() {
		mib := 300
		if s := os.Getenv("BANGER_BENCH_MIB"); s != "" {
			mib, _ = strconv.Atoi(s)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		text := bytes.Repeat([]byte("banger builds root file systems from OCI layers; "), 1<<14)
		var layers [][]byte
		perLayer := int64(mib) << 20 / 4
		for l := 0; l < 4; l++ {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			var written int64
			for i := 0; written < perLayer; i++ {
				size := int64(1<<10 + rng.IntN(16<<10))
				if i%40 == 0 {
					size = int64(1<<20 + rng.IntN(7<<20))
				}
				body := make([]byte, size)
				if i%2 == 0 {
					for j := 0; j < len(body); j += 8 {
						v := rng.Uint64()
						for k := 0; k < 8 && j+k < len(body); k++ {
							body[j+k] = byte(v >> (8 * k))
						}
					}
				} else {
					copy(body, text[:min(len(text), len(body))])
				}
				uid := 0
				if i%10 == 0 {
					uid = 1000
				}
				// Layers 2+ rewrite some of layer 0's names.
				name := fmt.Sprintf("usr/lib/l%d/d%d/f%d", l, i%50, i)
				if l > 0 && i%7 == 0 {
					name = fmt.Sprintf("usr/lib/l0/d%d/f%d", i%50, i)
				}
				tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Uid: uid, Gid: uid, Typeflag: tar.TypeReg})
				tw.Write(body)
				written += size
			}
			if l > 0 {
				tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("usr/lib/l0/d%d/.wh..wh..opq", l), Typeflag: tar.TypeReg})
			}
			tw.Close()
			layers = append(layers, buf.Bytes())
		}
		img := imagetest.Image(b, imagetest.ImageSpec{Layers: layers, GzipLevel: gzip.BestSpeed})
		benchImage.reg = imagetest.StartRegistry(&testing.T{})
		benchImage.ref = benchImage.reg.Push(b, "bench/img:1", img)
		benchImage.img = img
		benchImage.mib = mib
	})
	if benchImage.ref == "" {
		b.Fatal("bench image setup failed")
	}
	b.SetBytes(int64(benchImage.mib) << 20)
}

func remoteBenchImage(b *testing.B) v1.Image {
	r, _ := ParseReference(benchImage.ref)
	img, err := remote.Image(r)
	if err != nil {
		b.Fatal(err)
	}
	return img
}

// BenchmarkPullBanger is banger's pipeline, cold cache: fetch, flatten,
// ext4, inject.
func BenchmarkPullBanger(b *testing.B) {
	testenv.RequireBinary(b, "debugfs", "apt-get install e2fsprogs")
	setupBenchImage(b)
	agent, _ := fakeAgent(b)
	for b.Loop() {
		b.StopTimer()
		p := newTestPuller(b)
		dir := b.TempDir()
		b.StartTimer()
		if _, err := p.Pull(context.Background(), Request{Ref: benchImage.ref, Dir: dir, Assets: GuestAgentAssets{VsockAgentBin: agent}}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

// BenchmarkPullBaseline is the first banger's way: fetch, flatten with
// mutate.Extract, extract into a directory, mkfs.ext4 -d, fix owners with
// debugfs, inject.
func BenchmarkPullBaseline(b *testing.B) {
	testenv.RequireBinary(b, "mkfs.ext4", "apt-get install e2fsprogs")
	setupBenchImage(b)
	agent, _ := fakeAgent(b)
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		b.StartTimer()
		baselinePull(b, dir, agent)
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

// BenchmarkPullFloor fetches and decompresses every layer and keeps
// nothing: no pull can be faster.
func BenchmarkPullFloor(b *testing.B) {
	setupBenchImage(b)
	for b.Loop() {
		ls, err := remoteBenchImage(b).Layers()
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range ls {
			rc, err := l.Uncompressed()
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, rc)
			rc.Close()
		}
	}
}

func baselinePull(b *testing.B, dir, agent string) {
	root := filepath.Join(dir, "root")
	rc := mutate.Extract(remoteBenchImage(b))
	defer rc.Close()
	tr := tar.NewReader(rc)
	var owners bytes.Buffer
	var total int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		p := filepath.Join(root, h.Name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		switch h.Typeflag {
		case tar.TypeDir:
			os.MkdirAll(p, os.FileMode(h.Mode))
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode))
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(f, tr)
			total += n
			f.Close()
		case tar.TypeSymlink:
			os.Symlink(h.Linkname, p)
		}
		if h.Uid != 0 || h.Gid != 0 {
			fmt.Fprintf(&owners, "set_inode_field /%s uid %d\nset_inode_field /%s gid %d\n", h.Name, h.Uid, h.Name, h.Gid)
		}
	}
	img := filepath.Join(dir, "rootfs.ext4")
	size := total + total/3 + 64<<20
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img, strconv.FormatInt(size>>10, 10)+"K").CombinedOutput(); err != nil {
		b.Fatalf("mkfs.ext4 -d: %v %s", err, out)
	}
	cmd := exec.Command("debugfs", "-w", "-f", "-", img)
	cmd.Stdin = &owners
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("debugfs owners: %v %s", err, out)
	}
	if err := InjectGuestAgents(context.Background(), system.Runner{}, img, GuestAgentAssets{VsockAgentBin: agent}); err != nil {
		b.Fatal(err)
	}
}
