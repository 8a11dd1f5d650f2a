package vmm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestCopyFile copies a sparse file with data, holes and runs of zeros
// inside its data: the copy reads the same, and holds only the data
// (the space reserved for the zeros is given back).
func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	data := bytes.Repeat([]byte{0xab}, 1<<20)
	f.WriteAt(data, 0)
	f.WriteAt(make([]byte, 4<<20), 1<<20) // zeros, written: data extents
	f.WriteAt(data, 5<<20)
	f.WriteAt(data, 40<<20)
	f.Close()
	n, err := CopyFile(dst, src)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3<<20 {
		t.Errorf("wrote %d bytes, want %d", n, 3<<20)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("the copy differs")
	}
	var st syscall.Stat_t
	syscall.Stat(dst, &st)
	if got := st.Blocks * 512; got > 3<<20+64<<10 {
		t.Errorf("the copy occupies %d bytes, want about %d", got, 3<<20)
	}
	if _, err := CopyFile(dst, src); !errors.Is(err, os.ErrExist) {
		t.Errorf("a copy over an existing file: %v", err)
	}
}
