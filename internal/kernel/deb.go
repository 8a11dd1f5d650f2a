package kernel

import (
	"archive/tar"
	"bufio"
	"compress/bzip2"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// debContents is what a kernel package holds for banger.
type debContents struct {
	kernel     string // extracted vmlinuz or vmlinux
	modulesDir string // extracted lib/modules/VERSION, "" when none
	version    string
}

// readDeb extracts the kernel image and its modules directory from a
// Debian package (f, named debPath) into dir without installing
// anything. It reads the ar container and the compressed data.tar in one
// pass, and extracts at most MaxInput bytes in all.
func readDeb(f io.Reader, debPath, dir string) (*debContents, error) {
	br := bufio.NewReaderSize(f, 1<<20)
	magic := make([]byte, 8)
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != "!<arch>\n" {
		return nil, fmt.Errorf("%w: %s is not a Debian package", ErrNotKernel, debPath)
	}
	for {
		hdr := make([]byte, 60)
		if _, err := io.ReadFull(br, hdr); err != nil {
			return nil, fmt.Errorf("%w: %s has no data.tar member", ErrNotKernel, debPath)
		}
		name := strings.TrimSuffix(strings.TrimSpace(string(hdr[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 {
			return nil, fmt.Errorf("%w: %s: corrupt ar header", ErrNotKernel, debPath)
		}
		body := io.LimitReader(br, size)
		if strings.HasPrefix(name, "data.tar") {
			dr, err := decompressMember(name, body)
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", debPath, err)
			}
			return extractKernelTree(tar.NewReader(dr), dir, MaxInput)
		}
		if _, err := io.Copy(io.Discard, body); err != nil {
			return nil, err
		}
		if size%2 == 1 { // ar pads members to even offsets
			br.ReadByte()
		}
	}
}

func decompressMember(name string, r io.Reader) (io.Reader, error) {
	switch path.Ext(name) {
	case ".xz":
		return xz.NewReader(bufio.NewReaderSize(r, 1<<20))
	case ".zst":
		d, err := zstd.NewReader(r)
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case ".gz":
		return gzip.NewReader(r)
	case ".bz2":
		return bzip2.NewReader(r), nil
	case ".tar":
		return r, nil
	}
	return nil, fmt.Errorf("unsupported package member %s", name)
}

// extractKernelTree copies boot/vmlinuz-* (or vmlinux-*) and
// lib/modules/VERSION (also under usr/) out of a package's data tar,
// refusing to write more than budget bytes (a compressed member can
// expand to fill the disk).
func extractKernelTree(tr *tar.Reader, dir string, budget int64) (*debContents, error) {
	out := &debContents{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading package data: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			if budget -= h.Size; budget < 0 {
				return nil, fmt.Errorf("%w: the package's files add up to more than %d MiB", ErrTooLarge, MaxInput>>20)
			}
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		name = strings.TrimPrefix(name, "usr/")
		switch {
		case h.Typeflag == tar.TypeReg && (strings.HasPrefix(name, "boot/vmlinuz-") || strings.HasPrefix(name, "boot/vmlinux-")):
			dst := filepath.Join(dir, path.Base(name))
			if err := writeFile(dst, tr, 0o644); err != nil {
				return nil, err
			}
			out.kernel = dst
			if out.version == "" {
				out.version = strings.TrimPrefix(strings.TrimPrefix(path.Base(name), "vmlinuz-"), "vmlinux-")
			}
		case strings.HasPrefix(name, "lib/modules/") && h.Typeflag == tar.TypeReg:
			rel := strings.TrimPrefix(name, "lib/modules/")
			ver, _, ok := strings.Cut(rel, "/")
			if !ok || strings.Contains(rel, "..") {
				continue
			}
			dst := filepath.Join(dir, "modules", rel)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return nil, err
			}
			if err := writeFile(dst, tr, 0o644); err != nil {
				return nil, err
			}
			out.modulesDir = filepath.Join(dir, "modules", ver)
			if out.version == "" {
				out.version = ver
			}
		}
	}
	if out.kernel == "" {
		return nil, fmt.Errorf("%w: the package holds no /boot/vmlinuz-*: is it a linux-image package?", ErrNotKernel)
	}
	return out, nil
}

func writeFile(dst string, r io.Reader, mode os.FileMode) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
