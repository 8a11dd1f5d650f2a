package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
)

func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, p
}

func TestImagesRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	img := api.Image{ID: "id1", Name: "alpine:3.20", Ref: "index.docker.io/library/alpine:3.20", Digest: "sha256:aa",
		Rootfs: "/x/rootfs.ext4", SizeBytes: 10, DiskBytes: 5,
		Config:    api.ImageConfig{Cmd: []string{"/bin/sh"}, Env: []string{"A=1"}, WorkingDir: "/w", User: "u"},
		Layers:    []api.ImageLayer{{Digest: "sha256:l1", DiffID: "sha256:d1", Size: 3}},
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	if err := s.InsertImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	got, err := s.Image(ctx, "alpine:3.20")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(img) {
		t.Errorf("got %+v\nwant %+v", got, img)
	}
	dup := img
	dup.ID = "id2"
	if err := s.InsertImage(ctx, dup); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate name err = %v, want ErrExists", err)
	}
	list, _ := s.Images(ctx)
	if len(list) != 1 {
		t.Errorf("list = %v", list)
	}
	if _, err := s.DeleteImage(ctx, "alpine:3.20"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Image(ctx, "alpine:3.20"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after delete err = %v", err)
	}
	if _, err := s.DeleteImage(ctx, "alpine:3.20"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete err = %v", err)
	}
	if list, _ := s.Images(ctx); list == nil || len(list) != 0 {
		t.Errorf("empty list = %#v, want non-nil empty", list)
	}
}

func TestMigrationsAreForwardOnlyAndPersist(t *testing.T) {
	ctx := context.Background()
	s, p := openTest(t)
	v, _ := s.SchemaVersion(ctx)
	if v != len(migrations) {
		t.Fatalf("version %d, want %d", v, len(migrations))
	}
	s.InsertImage(ctx, api.Image{ID: "a", Name: "a", Ref: "r", Digest: "d", Rootfs: "/r"})
	s.Close()
	// Reopening applies nothing twice and keeps the data.
	s2, err := Open(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Image(ctx, "a"); err != nil {
		t.Errorf("data lost on reopen: %v", err)
	}
	// A database from a newer banger is refused.
	s2.db.Exec(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, 'x')`, len(migrations)+1)
	s2.Close()
	if _, err := Open(ctx, p); err == nil {
		t.Errorf("opened a database with a newer schema")
	}
}

func TestConcurrentInsertsOfOneName(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.InsertImage(ctx, api.Image{ID: fmt.Sprint(i), Name: "same", Ref: "r", Digest: "d", Rootfs: "/r"})
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, ErrExists) {
				t.Errorf("err = %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d inserts of one name succeeded, want 1", wins)
	}
}

func TestKernelsRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	k := api.Kernel{ID: "k1", Name: "cloud", Version: "6.1.0-56-cloud-amd64", Vmlinux: "/k/vmlinux", Initrd: "/k/initrd.img",
		Modules: []string{"virtio", "virtio_mmio"}, Source: "deb", AgentHash: "aa", CreatedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	if err := s.InsertKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertKernel(ctx, k); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate err = %v", err)
	}
	if err := s.SetKernelInitrd(ctx, "cloud", "/k/new.img", "bb"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Kernel(ctx, "cloud")
	want := k
	want.Initrd, want.AgentHash = "/k/new.img", "bb"
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %+v, %v\nwant %+v", got, err, want)
	}
	newer := api.Kernel{ID: "k2", Name: "host", Version: "6.1", Vmlinux: "/h", Source: "bzImage", CreatedAt: k.CreatedAt.Add(time.Hour)}
	s.InsertKernel(ctx, newer)
	if list, _ := s.Kernels(ctx); len(list) != 2 || list[0].Name != "host" || list[1].Modules == nil {
		t.Errorf("list (newest first) = %+v", list)
	}
	if _, err := s.DeleteKernel(ctx, "cloud"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Kernel(ctx, "cloud"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after delete: %v", err)
	}
}

// TestVMAddressesAreUniqueUnderConcurrency creates VMs from many
// goroutines with an allocator over a small pool: every VM gets its own
// address, the pool's end is a clean error, and a removed VM's address
// is handed out again.
func TestVMAddressesAreUniqueUnderConcurrency(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	pool := []netip.Addr{}
	for i := 2; i <= 9; i++ {
		pool = append(pool, netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}))
	}
	errFull := errors.New("pool full")
	alloc := func(used []netip.Addr) (netip.Addr, error) {
		taken := map[netip.Addr]bool{}
		for _, u := range used {
			taken[u] = true
		}
		for _, a := range pool {
			if !taken[a] {
				return a, nil
			}
		}
		return netip.Addr{}, errFull
	}
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v := api.VM{ID: fmt.Sprint(i), Name: fmt.Sprintf("vm%d", i), State: "created", Network: "nat"}
			errs <- s.InsertVM(ctx, &v, alloc)
		}(i)
	}
	wg.Wait()
	close(errs)
	full := 0
	for err := range errs {
		if errors.Is(err, errFull) {
			full++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	vms, _ := s.VMs(ctx)
	seen := map[string]bool{}
	for _, v := range vms {
		if seen[v.IP] || v.IP == "" {
			t.Fatalf("address %q twice or missing: %+v", v.IP, vms)
		}
		seen[v.IP] = true
	}
	if len(vms) != 8 || full != 4 {
		t.Fatalf("%d VMs, %d refused; want 8 and 4", len(vms), full)
	}
	gone, _ := s.DeleteVM(ctx, vms[3].Name)
	v := api.VM{ID: "new", Name: "new", State: "created", Network: "nat"}
	if err := s.InsertVM(ctx, &v, alloc); err != nil || v.IP != gone.IP {
		t.Fatalf("after removing %s (%s): got %s, %v", gone.Name, gone.IP, v.IP, err)
	}
	// Without an allocator (--network none) there is no address.
	n := api.VM{ID: "none", Name: "none", State: "created", Network: "none"}
	if err := s.InsertVM(ctx, &n, nil); err != nil || n.IP != "" {
		t.Fatalf("network none: %q, %v", n.IP, err)
	}
}
