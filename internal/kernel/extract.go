package kernel

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// ErrNotKernel means a file is none of the kernel formats banger reads.
var ErrNotKernel = errors.New("not a kernel")

// Kind is the format of a file handed to import.
type Kind int

const (
	KindUnknown Kind = iota
	KindVmlinux      // uncompressed ELF kernel
	KindBzImage      // x86 boot image (vmlinuz) with a compressed kernel inside
	KindDeb          // Debian package
)

func (k Kind) String() string {
	return [...]string{"unknown", "vmlinux", "bzImage", "deb"}[k]
}

// DetectKind reads the first bytes of path to tell its format.
func DetectKind(path string) (Kind, error) {
	f, err := os.Open(path)
	if err != nil {
		return KindUnknown, err
	}
	defer f.Close()
	return detectKind(f), nil
}

// detectKind tells a kernel file's format from its first bytes.
func detectKind(r io.Reader) Kind {
	head := make([]byte, 0x210)
	n, _ := io.ReadFull(r, head)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte("\x7fELF")):
		return KindVmlinux
	case bytes.HasPrefix(head, []byte("!<arch>\n")):
		return KindDeb
	case n >= 0x206 && string(head[0x202:0x206]) == "HdrS":
		return KindBzImage
	}
	return KindUnknown
}

// payload magics, as in the kernel's scripts/extract-vmlinux.
var payloadMagics = []struct {
	name  string
	magic []byte
}{
	{"gzip", []byte{0x1f, 0x8b, 0x08}},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}},
	{"bzip2", []byte("BZh")},
}

// ExtractVmlinux decompresses the kernel inside a bzImage and writes the
// ELF vmlinux to w. It uses the boot header's payload fields (boot
// protocol 2.08+) and the payload's own magic number to pick the codec.
func ExtractVmlinux(bz []byte, w io.Writer) error {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return fmt.Errorf("%w: no x86 boot header", ErrNotKernel)
	}
	setup := int(bz[0x1f1])
	if setup == 0 {
		setup = 4
	}
	off := int(binary.LittleEndian.Uint32(bz[0x248:]))
	length := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	start := (setup+1)*512 + off
	if off == 0 || length == 0 {
		return fmt.Errorf("%w: boot header has no payload (boot protocol older than 2.08?)", ErrNotKernel)
	}
	if start+length > len(bz) {
		return fmt.Errorf("%w: the payload runs %d bytes past the end of the file: truncated?", ErrNotKernel, start+length-len(bz))
	}
	payload := bz[start : start+length]
	var r io.Reader
	var codec string
	for _, m := range payloadMagics {
		if bytes.HasPrefix(payload, m.magic) {
			codec = m.name
			break
		}
	}
	var err error
	switch codec {
	case "gzip":
		r, err = gzip.NewReader(bytes.NewReader(payload))
	case "xz":
		r, err = xz.NewReader(bytes.NewReader(payload))
	case "zstd":
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(payload))
		if err == nil {
			defer d.Close()
			r = d
		}
	case "lz4":
		r = lz4.NewReader(bytes.NewReader(payload))
	case "bzip2":
		r = bzip2.NewReader(bytes.NewReader(payload))
	default:
		return fmt.Errorf("%w: unsupported kernel compression (payload starts % x): use an uncompressed vmlinux", ErrNotKernel, payload[:min(6, len(payload))])
	}
	if err != nil {
		return fmt.Errorf("decompressing %s kernel: %w", codec, err)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	head := &headCheck{w: bw}
	if _, err := io.Copy(head, r); err != nil {
		return fmt.Errorf("decompressing %s kernel: %w", codec, err)
	}
	if !head.elf {
		return fmt.Errorf("%w: the %s payload is not an ELF kernel", ErrNotKernel, codec)
	}
	return bw.Flush()
}

// headCheck remembers whether the stream starts with the ELF magic.
type headCheck struct {
	w    io.Writer
	n    int
	head [4]byte
	elf  bool
}

func (h *headCheck) Write(p []byte) (int, error) {
	if h.n < 4 {
		k := copy(h.head[h.n:], p)
		h.n += k
		h.elf = h.n == 4 && string(h.head[:]) == "\x7fELF"
	}
	return h.w.Write(p)
}

// VersionOf finds the "Linux version X" banner in a kernel image (vmlinux
// or bzImage) and returns X, or "" when there is none.
func VersionOf(b []byte) string {
	// A bzImage names its version string in the boot header.
	if len(b) > 0x210 && string(b[0x202:0x206]) == "HdrS" {
		if p := int(binary.LittleEndian.Uint16(b[0x20e:])) + 0x200; p < len(b) {
			if end := bytes.IndexByte(b[p:], ' '); end > 0 {
				return string(b[p : p+end])
			}
		}
	}
	i := bytes.Index(b, []byte("Linux version "))
	if i < 0 {
		return ""
	}
	rest := b[i+len("Linux version "):]
	if end := bytes.IndexAny(rest, " \x00"); end > 0 {
		return string(rest[:end])
	}
	return ""
}
