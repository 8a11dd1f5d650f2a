package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be the helper process, as bangerd is.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == HelperCommand {
		os.Exit(HelperMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

const testMax = MinMax

// stream is n bytes of numbered lines: any loss, repeat or reordering
// shows.
func stream(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "line %08d\n", i)
	}
	return b.Bytes()[:n]
}

// onDisk is the size of the log and its rotated half together.
func onDisk(t testing.TB, path string) int64 {
	t.Helper()
	var total int64
	for _, p := range []string{path, path + Rotated} {
		if fi, err := os.Stat(p); err == nil {
			total += fi.Size()
		}
	}
	return total
}

func TestWriterKeepsTheCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, err := Open(path, testMax)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	data := stream(10 * testMax)
	rng := rand.New(rand.NewPCG(1, 2))
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(10000))
		if m, err := w.Write(rest[:n]); err != nil || m != n {
			t.Fatalf("Write = %d, %v", m, err)
		}
		rest = rest[n:]
		if got := onDisk(t, path); got > testMax {
			t.Fatalf("%d bytes on disk after %d written, cap %d", got, len(data)-len(rest), testMax)
		}
	}
	// What is kept is the end of the stream, at least half the cap.
	kept := onDisk(t, path)
	got, err := Tail(path, testMax)
	if err != nil {
		t.Fatal(err)
	}
	if kept < testMax/2 || int64(len(got)) != kept || !bytes.Equal(got, data[len(data)-len(got):]) {
		t.Fatalf("kept %d bytes; tail of %d is not the stream's end", kept, len(got))
	}
	for _, p := range []string{path, path + Rotated} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", p, fi.Mode(), err)
		}
	}
}

func TestOpenTrimsAnOversizedLog(t *testing.T) {
	half := int64(testMax / 2)
	cases := []struct {
		name               string
		cur, prev          int64 // sizes before Open, -1 for none
		wantCur, wantPrev  int64 // sizes after, -1 for none
		prevIsTailOfOldCur bool
	}{
		{"within the cap", half / 2, half, half / 2, half, false},
		{"an older banger's uncapped log", 10 * half, -1, 0, half, true},
		{"both past a lowered cap", 3 * half, 2 * half, 0, half, true},
		{"only the rotated half past it", half / 2, 3 * half, half / 2, -1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			old := stream(int(max(c.cur, 0)))
			if c.cur >= 0 {
				os.WriteFile(path, old, 0o600)
			}
			if c.prev >= 0 {
				os.WriteFile(path+Rotated, bytes.Repeat([]byte("p"), int(c.prev)), 0o600)
			}
			w, err := Open(path, testMax)
			if err != nil {
				t.Fatal(err)
			}
			w.Close()
			for p, want := range map[string]int64{path: c.wantCur, path + Rotated: c.wantPrev} {
				fi, err := os.Stat(p)
				switch {
				case want < 0 && !errors.Is(err, os.ErrNotExist):
					t.Errorf("%s: %v, want it gone", filepath.Base(p), err)
				case want >= 0 && (err != nil || fi.Size() != want):
					t.Errorf("%s: %v %v, want %d bytes", filepath.Base(p), fi, err, want)
				}
			}
			if c.prevIsTailOfOldCur {
				if b, _ := os.ReadFile(path + Rotated); !bytes.Equal(b, old[len(old)-int(half):]) {
					t.Errorf("the rotated half is not the old log's end")
				}
			}
		})
	}
}

func TestOpenRejectsATinyCap(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "c"), MinMax-1); err == nil {
		t.Fatal("a cap under MinMax was accepted")
	}
}

// A log that cannot rotate (here its rotated name is a directory) drops
// output, keeps the cap, and never stops draining: a guest's console
// must not stall on the host's problems.
func TestDrainDropsWhatItCannotWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.MkdirAll(filepath.Join(path+Rotated, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	w, err := Open(path, testMax)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, pw := io.Pipe()
	var reports []error
	done := make(chan error, 1)
	go func() { done <- Drain(r, w, func(err error) { reports = append(reports, err) }) }()
	data := stream(10 * testMax)
	if _, err := pw.Write(data); err != nil {
		t.Fatalf("the writer stalled: %v", err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Size() != testMax/2 {
		t.Errorf("log holds %d bytes, want the half cap %d", fi.Size(), testMax/2)
	}
	if len(reports) != 1 {
		t.Errorf("reports = %v, want the one error once", reports)
	}
}

func TestPipeWritesUntilTheLastWriterCloses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, done, err := Pipe(path, testMax)
	if err != nil {
		t.Fatal(err)
	}
	data := stream(3 * testMax)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	w.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the pipe's reader did not end at EOF")
	}
	got, _ := Tail(path, testMax)
	if len(got) < testMax/2 || !bytes.Equal(got, data[len(data)-len(got):]) {
		t.Fatalf("log holds %d bytes, not the stream's end", len(got))
	}
}

// The helper process: it drains the pipe into the log, keeps the cap
// and exits 0 once the writing end is closed.
func TestHelperProcess(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "console.log")
	stderr, _ := os.Create(filepath.Join(t.TempDir(), "stderr"))
	defer stderr.Close()
	w, p, err := StartHelper(exe, path, testMax, stderr)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.Pid)); !IsHelper(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), path) {
		t.Errorf("IsHelper does not know the helper's command line %q", b)
	}
	data := stream(10 * testMax)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	w.Close()
	st, err := p.Wait()
	if err != nil || !st.Success() {
		out, _ := os.ReadFile(stderr.Name())
		t.Fatalf("helper: %v %v\n%s", st, err, out)
	}
	if got := onDisk(t, path); got > testMax {
		t.Errorf("%d bytes on disk, cap %d", got, testMax)
	}
	got, _ := Tail(path, testMax)
	if !bytes.Equal(got, data[len(data)-len(got):]) {
		t.Errorf("log is not the stream's end")
	}
}
