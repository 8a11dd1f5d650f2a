package consolelog

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestTail(t *testing.T) {
	cases := []struct {
		name      string
		prev, cur string // "" for no file
		n         int64
		want      string
	}{
		{"no log", "", "", 10, ""},
		{"within the current file", "abc", "defgh", 3, "fgh"},
		{"across both files", "abc", "defgh", 7, "bcdefgh"},
		{"more than there is", "abc", "defgh", 100, "abcdefgh"},
		{"only the rotated half", "abc", "", 2, "bc"},
		{"nothing asked", "abc", "def", 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			if c.prev != "" {
				os.WriteFile(path+Rotated, []byte(c.prev), 0o600)
			}
			if c.cur != "" {
				os.WriteFile(path, []byte(c.cur), 0o600)
			}
			got, err := Tail(path, c.n)
			if err != nil || string(got) != c.want {
				t.Fatalf("Tail(%d) = %q, %v, want %q", c.n, got, err, c.want)
			}
		})
	}
}

// TestTailAfterManyRotations: the last n bytes of everything written,
// exactly, whatever n up to what is kept.
func TestTailAfterManyRotations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, _ := Open(path, testMax)
	data := stream(7*testMax + 12345)
	w.Write(data)
	w.Close()
	kept := onDisk(t, path)
	for _, n := range []int64{1, 100, testMax/2 - 1, testMax / 2, testMax/2 + 1, kept} {
		got, err := Tail(path, n)
		if err != nil || !bytes.Equal(got, data[len(data)-int(n):]) {
			t.Errorf("Tail(%d): %d bytes, %v: not the stream's last %d", n, len(got), err, n)
		}
	}
}

// drain reads fl until it has caught up.
func drain(t testing.TB, fl *Follower, into *bytes.Buffer) {
	t.Helper()
	if _, err := io.Copy(into, fl); err != nil {
		t.Fatal(err)
	}
}

// TestFollowAcrossRotations writes a stream in random pieces, with zero,
// one or two rotations between reads, and reads it back whole.
func TestFollowAcrossRotations(t *testing.T) {
	for _, fromStart := range []bool{true, false} {
		path := filepath.Join(t.TempDir(), "console.log")
		w, _ := Open(path, testMax)
		head := []byte("written before the follower\n")
		w.Write(head)
		fl := Follow(path, fromStart)
		var got bytes.Buffer
		data := stream(20 * testMax)
		rng := rand.New(rand.NewPCG(3, 4))
		for rest := data; len(rest) > 0; {
			// Up to just under a whole cap between reads: the file being
			// read may be rotated twice, and the one after it once.
			n := min(len(rest), 1+rng.IntN(testMax-100))
			w.Write(rest[:n])
			rest = rest[n:]
			drain(t, fl, &got)
		}
		want := data
		if fromStart {
			want = append(append([]byte{}, head...), data...)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("fromStart=%v: read %d bytes, want %d, in order, once each", fromStart, got.Len(), len(want))
		}
		fl.Close()
		w.Close()
	}
}

// TestFollowReadsWhatCameBeforeARotation: the writer appends to the
// file being read and rotates it between the follower's read that met
// its end and its look at the current file. Those last bytes are read
// before the next file.
func TestFollowReadsWhatCameBeforeARotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, _ := Open(path, testMax)
	defer w.Close()
	fl := Follow(path, false)
	defer fl.Close()
	data := stream(testMax)
	w.Write(data[:100])
	once := true
	atEOF = func() {
		if once {
			once = false
			w.Write(data[100:]) // fills the file, rotates, starts the next
		}
	}
	defer func() { atEOF = nil }()
	var got bytes.Buffer
	drain(t, fl, &got)
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("read %d bytes, want %d, in order, once each", got.Len(), len(data))
	}
}

// TestFollowConcurrently runs writer and follower at once: the follower
// meets rotations at every point, a missing current file among them.
func TestFollowConcurrently(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, _ := Open(path, testMax)
	defer w.Close()
	fl := Follow(path, true)
	defer fl.Close()
	data := stream(50 * testMax)
	var read atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		rng := rand.New(rand.NewPCG(5, 6))
		for rest := data; len(rest) > 0; {
			// Stay less than half the cap ahead: nothing is lost.
			for int64(len(data)-len(rest))-read.Load() > testMax/4 {
				time.Sleep(10 * time.Microsecond)
			}
			n := min(len(rest), 1+rng.IntN(4096))
			w.Write(rest[:n])
			rest = rest[n:]
		}
	}()
	var got bytes.Buffer
	buf := make([]byte, 1000)
	deadline := time.Now().Add(30 * time.Second)
	for got.Len() < len(data) && time.Now().Before(deadline) {
		n, err := fl.Read(buf)
		got.Write(buf[:n])
		read.Store(int64(got.Len()))
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
	}
	<-done
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("read %d bytes, want %d, in order, once each", got.Len(), len(data))
	}
}

func TestFollowFromTheEnd(t *testing.T) {
	t.Run("of a log", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "console.log")
		os.WriteFile(path+Rotated, []byte("old boot\n"), 0o600)
		os.WriteFile(path, []byte("last boot\n"), 0o600)
		fl := Follow(path, false)
		defer fl.Close()
		w, _ := Open(path, testMax)
		defer w.Close()
		w.Write([]byte("this boot\n"))
		var got bytes.Buffer
		drain(t, fl, &got)
		if got.String() != "this boot\n" {
			t.Errorf("read %q, want only what came after", got.String())
		}
	})
	t.Run("of no log, beside an old rotated half", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "console.log")
		os.WriteFile(path+Rotated, []byte("old boot\n"), 0o600)
		fl := Follow(path, false)
		defer fl.Close()
		var got bytes.Buffer
		drain(t, fl, &got)
		w, _ := Open(path, testMax)
		defer w.Close()
		w.Write([]byte("this boot\n"))
		drain(t, fl, &got)
		if got.String() != "this boot\n" {
			t.Errorf("read %q, want only what came after", got.String())
		}
	})
	// An older banger's oversized log is trimmed when the next boot's
	// writer opens it: a follower from its end sees the new output, not
	// the old end again.
	t.Run("of an oversized log that is trimmed", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "console.log")
		os.WriteFile(path, stream(5*testMax), 0o600)
		fl := Follow(path, false)
		defer fl.Close()
		w, err := Open(path, testMax)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		w.Write([]byte("this boot\n"))
		var got bytes.Buffer
		drain(t, fl, &got)
		if got.String() != "this boot\n" {
			t.Errorf("read %d bytes (%.40q…), want only what came after", got.Len(), got.String())
		}
	})
}
