package vsockagent

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}

// ExtractTar writes a tar stream of one tree (as WriteTar makes) to dst,
// like `cp -a`: when dst is an existing directory the tree lands inside
// it under its own name, otherwise the tree's top entry becomes dst.
// Entries may not leave dst's parent or pass through a symlink the
// archive made; owners are kept when chown is set (root).
func ExtractTar(r io.Reader, dst string, chown bool) error {
	dst = filepath.Clean(dst)
	root, rename := filepath.Dir(dst), filepath.Base(dst)
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		root, rename = dst, ""
	}
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		// Like `mkdir -p`: a destination's missing parents are made.
		if err := os.MkdirAll(root, 0o755); err != nil {
			return fmt.Errorf("copying to %s: %w", dst, err)
		}
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return fmt.Errorf("copying to %s: %s is not a directory", dst, root)
	}
	type dirTime struct {
		path string
		mt   time.Time
	}
	var dirs []dirTime
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the copy: %w", err)
		}
		name := strings.TrimSuffix(filepath.FromSlash(h.Name), "/")
		if !filepath.IsLocal(name) {
			return fmt.Errorf("copy entry %q leaves the destination", h.Name)
		}
		if rename != "" {
			top, rest, _ := strings.Cut(name, string(filepath.Separator))
			_ = top
			name = filepath.Join(rename, rest)
		}
		p := filepath.Join(root, name)
		if err := noSymlinkBetween(root, filepath.Dir(p)); err != nil {
			return err
		}
		mode := h.FileInfo().Mode()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			dirs = append(dirs, dirTime{p, h.ModTime})
		case tar.TypeReg:
			os.Remove(p)
			f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("writing %s: %w", p, err)
			}
		case tar.TypeSymlink:
			os.Remove(p)
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		case tar.TypeLink:
			target := filepath.FromSlash(h.Linkname)
			if rename != "" {
				_, rest, _ := strings.Cut(target, string(filepath.Separator))
				target = filepath.Join(rename, rest)
			}
			if !filepath.IsLocal(target) {
				return fmt.Errorf("copy entry %q links outside the destination", h.Name)
			}
			os.Remove(p)
			if err := os.Link(filepath.Join(root, target), p); err != nil {
				return err
			}
			continue
		default:
			continue // devices and FIFOs are not copied
		}
		if chown {
			os.Lchown(p, h.Uid, h.Gid)
		}
		if h.Typeflag != tar.TypeSymlink {
			if err := os.Chmod(p, mode.Perm()|mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
				return err
			}
			if h.Typeflag != tar.TypeDir {
				os.Chtimes(p, h.ModTime, h.ModTime)
			}
		}
	}
	// Directory times last: writing into a directory changes its mtime.
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Chtimes(dirs[i].path, dirs[i].mt, dirs[i].mt)
	}
	return nil
}

// noSymlinkBetween refuses a path whose directories below root include a
// symlink: an archive could otherwise plant one and write through it.
func noSymlinkBetween(root, dir string) error {
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." {
		return err
	}
	p := root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("copy entry below %s: %w", p, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("copy entry goes through the symlink %s", p)
		}
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
