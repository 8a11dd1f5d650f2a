package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// CopyFile copies src to a new file dst (mode 0600) and keeps it sparse:
// a reflink when the file system shares extents (XFS, btrfs), otherwise
// only src's data extents are read (SEEK_DATA) and blocks of zeros
// become holes. Guest RAM and VM disks are mostly holes and zeros, so
// this reads and writes a fraction of their size. It returns the bytes
// written. On error dst is removed. Neither path's last component may
// be a symlink: a copy never follows one (a RAM file swapped for a link
// to a root-only file must not carry that file into a snapshot), and dst
// must not exist.
//
// The space the copy needs (src's data extents) is reserved first, with
// fallocate: of copies that start together on a file system with room
// for only some, those that fit get it and the others fail at once with
// ENOSPC, instead of each filling part of the room and all failing.
func CopyFile(dst, src string) (written int64, err error) {
	in, err := openNoFollow(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return fi.Size(), nil
	}
	if err := out.Truncate(fi.Size()); err != nil {
		return 0, fmt.Errorf("copying %s: %w", src, err)
	}
	if err := reserve(in, out, fi.Size()); err != nil {
		return 0, fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, 64<<10)
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return written, fmt.Errorf("copying %s: %w", src, err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return written, fmt.Errorf("copying %s: %w", src, err)
		}
		for pos := data; pos < hole; {
			n, err := in.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if n == 0 && err != nil {
				if err == io.EOF {
					break
				}
				return written, fmt.Errorf("copying %s: %w", src, err)
			}
			for i := 0; i < n; i += len(zero) {
				chunk := buf[i:min(i+len(zero), n)]
				if bytes.Equal(chunk, zero[:len(chunk)]) {
					// Reserved, but zeros: a hole again.
					unix.Fallocate(int(out.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, pos+int64(i), int64(len(chunk)))
					continue
				}
				if _, err := out.WriteAt(chunk, pos+int64(i)); err != nil {
					return written, fmt.Errorf("copying %s to %s: %w", src, dst, err)
				}
				written += int64(len(chunk))
			}
			pos += int64(n)
		}
		off = hole
	}
	return written, nil
}

// reserving makes each copy's reservation whole before the next's
// begins: a file's extents are reserved one call each, and copies that
// interleaved them would each get part of the room.
var reserving sync.Mutex

// reserve allocates in out the data extents of in (size bytes). A file
// system without fallocate (EOPNOTSUPP) is copied unreserved.
func reserve(in, out *os.File, size int64) error {
	reserving.Lock()
	defer reserving.Unlock()
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if err := unix.Fallocate(int(out.Fd()), unix.FALLOC_FL_KEEP_SIZE, data, hole-data); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				return nil
			}
			return err
		}
		off = hole
	}
	return nil
}
