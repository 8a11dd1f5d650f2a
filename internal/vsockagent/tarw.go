package vsockagent

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// WriteTar writes src (a file, a directory tree or a symlink) as a tar
// stream whose top entry is named base(src), keeping modes, owners,
// times and links. Symlinks are stored, not followed.
func WriteTar(w io.Writer, src string) error {
	src = filepath.Clean(src)
	if _, err := os.Lstat(src); err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	tw := tar.NewWriter(w)
	parent := filepath.Dir(src)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(parent, p)
		return AddTarEntry(tw, p, filepath.ToSlash(rel), fi, false)
	})
	if err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	return tw.Close()
}

// AddTarEntry writes the file at path, described by fi (from Lstat: a
// symlink is stored, not followed), to tw as name, keeping its mode,
// times and link target, and its owner unless anonymous (then root's).
func AddTarEntry(tw *tar.Writer, path, name string, fi fs.FileInfo, anonymous bool) error {
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		var err error
		if link, err = os.Readlink(path); err != nil {
			return err
		}
	}
	h, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	h.Name, h.Uname, h.Gname, h.Format = name, "", "", tar.FormatPAX
	if fi.IsDir() {
		h.Name += "/"
	}
	if anonymous {
		h.Uid, h.Gid = 0, 0
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	// O_NOFOLLOW: a file swapped for a symlink since fi was read is
	// refused rather than followed (as root, to anything).
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// Exactly the size in the header: a file still growing (a log) is
	// copied as it was when fi was read instead of failing the copy.
	if _, err := io.CopyN(tw, f, h.Size); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s shrank while being copied: copy it again", path)
		}
		return err
	}
	return nil
}

// WriteFileTar writes a tar stream of one regular file named name.
func WriteFileTar(w io.Writer, name string, data []byte, mode int64) error {
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	return tw.Close()
}
