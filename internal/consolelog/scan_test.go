package consolelog

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const needle = "banger-vsock-agent: ready"

// TestScannerFindsASplitNeedle splits a stream holding the needle once
// at every point around it, into two writes and into bytes.
func TestScannerFindsASplitNeedle(t *testing.T) {
	text := "[  1.2] booting\r\nnoise " + needle + " v1\r\n"
	start := strings.Index(text, needle)
	for cut := start - 2; cut <= start+len(needle)+2; cut++ {
		s := NewScanner(needle)
		s.Write([]byte(text[:cut]))
		s.Write([]byte(text[cut:]))
		if !s.Found() {
			t.Errorf("needle cut at %d not found", cut-start)
		}
	}
	s := NewScanner(needle)
	for i := range len(text) {
		s.Write([]byte{text[i]})
	}
	if !s.Found() {
		t.Error("needle written a byte at a time not found")
	}
}

func TestScannerFindsNoPhantom(t *testing.T) {
	s := NewScanner(needle)
	// Every proper prefix and suffix of the needle, written apart so
	// that no two pieces form it.
	for i := 1; i < len(needle); i++ {
		s.Write([]byte(needle[:i]))
		s.Write([]byte("\n"))
		s.Write([]byte(needle[i:]))
		s.Write([]byte("\n"))
	}
	s.Write(bytes.Repeat([]byte("x"), 1<<16))
	if s.Found() {
		t.Fatal("found a needle that was never written")
	}
}

// TestScannerFindsANeedleAcrossARotation: the needle straddles the end
// of one file and the start of the next; a Follower feeding a Scanner
// (the daemon's readiness wait) still sees it.
func TestScannerFindsANeedleAcrossARotation(t *testing.T) {
	for _, cut := range []int{1, len(needle) / 2, len(needle) - 1} {
		path := filepath.Join(t.TempDir(), "console.log")
		w, _ := Open(path, testMax)
		fl := Follow(path, false)
		s := NewScanner(needle)
		// Fill the first file so the needle's first cut bytes end it.
		pad := bytes.Repeat([]byte("x"), testMax/2-cut)
		w.Write(pad)
		io.Copy(s, fl)
		w.Write([]byte(needle + "\n"))
		if fi, err := os.Stat(path + Rotated); err != nil || fi.Size() != testMax/2 {
			t.Fatalf("no rotation inside the needle: %v %v", fi, err)
		}
		io.Copy(s, fl)
		if !s.Found() {
			t.Errorf("needle cut by a rotation after %d bytes not found", cut)
		}
		fl.Close()
		w.Close()
	}
}

func TestRecent(t *testing.T) {
	r := NewRecent(8)
	for _, p := range []string{"abc", "defg", "hij", "", "k"} {
		r.Write([]byte(p))
	}
	if got := string(r.Bytes()); got != "defghijk" {
		t.Errorf("kept %q", got)
	}
	r.Write([]byte("0123456789"))
	if got := string(r.Bytes()); got != "23456789" {
		t.Errorf("after a long write kept %q", got)
	}
}
