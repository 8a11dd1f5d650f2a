// Package flatten applies OCI image layers in order and produces the
// resulting file tree as one clean tar stream: whiteouts and opaque
// directories applied, hard links resolved across layers, unsafe entries
// rejected. It knows nothing of registries or ext4 and uses only the
// standard library, so it can be fuzzed cheaply.
package flatten

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// ErrUnsafeEntry marks a layer entry that would escape the image root or
// write through a link: a path with "..", a hard link or symlink pointing
// outside the tree, or an entry below a symlink.
var ErrUnsafeEntry = errors.New("unsafe layer entry")

// ErrBadLayer marks a layer whose tar stream is corrupt or self-contradictory.
var ErrBadLayer = errors.New("corrupt layer")

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// aufs bookkeeping entries (".wh..wh.plnk", ".wh..wh.aufs") carry no
	// file-system meaning.
	metaWhiteoutPrefix = ".wh..wh."
)

// Tree applies image layers in order and keeps the resulting file
// tree in memory, with regular-file contents spooled once to a file. It
// implements the OCI layer semantics: whiteouts and opaque directories
// hide entries of lower layers; a later entry replaces an earlier one;
// hard links share one inode, also across layers and when a link precedes
// its target in the stream; directories may appear after their entries.
//
// A Tree is not safe for concurrent use.
type Tree struct {
	root  *node
	spool Spool
	off   int64
	layer int
	// Links whose target had not appeared yet when they were read; they
	// are resolved when the layer ends.
	pending []pendingLink
	entries int
	// consumed counts bytes read from the current layer's tar stream;
	// layerOff is the spool offset where the current layer began.
	consumed int64
	layerOff int64
	// maxHoles is the sparse-hole budget per layer (maxSparseHoles).
	maxHoles int64
}

// maxSparseHoles bounds how many bytes of holes the sparse files of one
// layer may expand to. tar2ext4 stores holes as written zeros, and a tiny
// layer could otherwise declare terabytes of them.
const maxSparseHoles = 64 << 20

type node struct {
	ino      *inode
	children map[string]*node // non-nil for directories
	layer    int              // layer that created or last changed this entry
	// touched is the newest layer that created or changed this entry or
	// anything below it; whiteouts keep what the current layer touched.
	touched int
}

// inode is what a path points at; hard-linked paths share one.
type inode struct {
	hdr  tar.Header // Name, Linkname (hard links) and Size (non-regular) are not used
	off  int64      // content offset in the spool (regular files)
	size int64
}

type pendingLink struct {
	n      *node
	path   string
	target string
}

// Spool holds file contents between AddLayer and WriteTar. An *os.File
// in the image's staging directory is the usual one.
type Spool interface {
	io.ReaderAt
	io.WriterAt
}

// New returns a Tree that spools file contents into spool, which it
// writes from offset 0 and later reads back with ReadAt. The caller owns
// spool and removes it after WriteTar.
func New(spool Spool) *Tree {
	return &Tree{
		root:     &node{ino: &inode{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}}, children: map[string]*node{}},
		spool:    spool,
		layer:    -1,
		maxHoles: maxSparseHoles,
	}
}

// CleanPath turns a tar entry name into a path relative to the root,
// "" for the root itself. Leading "/" and "./" are dropped, as Docker
// does; a path with a NUL byte or a ".." component is rejected with
// ErrUnsafeEntry.
func CleanPath(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: %q contains a NUL byte", ErrUnsafeEntry, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q contains \"..\"", ErrUnsafeEntry, name)
		}
	}
	p := path.Clean("/" + name)
	return strings.TrimPrefix(p, "/"), nil
}

// AddLayer applies one uncompressed layer tar stream on top of the layers
// added before. It reads r to the end of the tar archive.
func (f *Tree) AddLayer(r io.Reader) error {
	f.layer++
	f.consumed, f.layerOff = 0, f.off
	tr := tar.NewReader(&countingReader{r: r, n: &f.consumed})
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: reading tar: %v", ErrBadLayer, err)
		}
		if err := f.addEntry(hdr, tr); err != nil {
			return err
		}
	}
	return f.resolvePending()
}

func (f *Tree) addEntry(hdr *tar.Header, content io.Reader) error {
	p, err := CleanPath(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")

	if strings.HasPrefix(base, whiteoutPrefix) {
		parent, err := f.dirFor(dir, hdr.Name)
		if err != nil {
			return err
		}
		switch {
		case base == opaqueMarker:
			f.hideLower(parent)
		case strings.HasPrefix(base, metaWhiteoutPrefix):
		default:
			hidden := strings.TrimPrefix(base, whiteoutPrefix)
			if hidden == "" || hidden == "." || hidden == ".." {
				return fmt.Errorf("%w: whiteout %q names no entry", ErrUnsafeEntry, hdr.Name)
			}
			if child := parent.children[hidden]; child != nil {
				if child.touched < f.layer {
					delete(parent.children, hidden)
				} else if child.children != nil {
					// This layer already put entries below it: keep
					// those, hide what lower layers had there.
					f.hideLower(child)
				}
			}
		}
		return nil
	}

	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeDir:
		if p == "" {
			f.root.ino.hdr = metaOnly(hdr, tar.TypeDir)
			f.root.layer = f.layer
			return nil
		}
		parent, err := f.dirFor(dir, hdr.Name)
		if err != nil {
			return err
		}
		if existing := parent.children[base]; existing != nil && existing.children != nil {
			// An existing directory keeps its children; only its own
			// metadata changes.
			existing.ino.hdr = metaOnly(hdr, tar.TypeDir)
			existing.layer, existing.touched = f.layer, f.layer
			return nil
		}
		parent.children[base] = &node{ino: &inode{hdr: metaOnly(hdr, tar.TypeDir)}, children: map[string]*node{}, layer: f.layer, touched: f.layer}
		f.entries++
		return nil
	}

	if p == "" {
		return fmt.Errorf("%w: %q replaces the root directory", ErrUnsafeEntry, hdr.Name)
	}
	parent, err := f.dirFor(dir, hdr.Name)
	if err != nil {
		return err
	}
	n := &node{layer: f.layer, touched: f.layer}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		ino := &inode{hdr: metaOnly(hdr, tar.TypeReg), off: f.off, size: hdr.Size}
		if hdr.Size < 0 {
			return fmt.Errorf("%w: %q has negative size", ErrBadLayer, hdr.Name)
		}
		src := &taggedReader{r: content}
		written, err := f.spoolContent(src)
		if errors.Is(err, errSparseBomb) {
			return fmt.Errorf("%w: %q is a sparse file with more than %d MiB of holes in its layer; banger does not store sparse files that large", ErrBadLayer, hdr.Name, f.maxHoles>>20)
		}
		if err != nil {
			if src.err != nil {
				return fmt.Errorf("%w: reading %q: %v", ErrBadLayer, hdr.Name, err)
			}
			return fmt.Errorf("spooling %q: %w", hdr.Name, err)
		}
		if written != hdr.Size {
			return fmt.Errorf("%w: %q is truncated (%d of %d bytes)", ErrBadLayer, hdr.Name, written, hdr.Size)
		}
		f.off += written
		n.ino = ino
	case tar.TypeSymlink:
		if err := checkSymlink(p, hdr.Linkname); err != nil {
			return err
		}
		ino := &inode{hdr: metaOnly(hdr, tar.TypeSymlink)}
		ino.hdr.Linkname = hdr.Linkname
		n.ino = ino
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		n.ino = &inode{hdr: metaOnly(hdr, hdr.Typeflag)}
	case tar.TypeLink:
		target, err := CleanPath(hdr.Linkname)
		if err != nil || target == "" {
			return fmt.Errorf("%w: hard link %q points outside the image (%q)", ErrUnsafeEntry, hdr.Name, hdr.Linkname)
		}
		if target == p {
			return fmt.Errorf("%w: hard link %q points to itself", ErrBadLayer, hdr.Name)
		}
		if t := f.lookup(target); t != nil && t.ino != nil {
			if t.children != nil {
				return fmt.Errorf("%w: hard link %q points to directory %q", ErrBadLayer, hdr.Name, hdr.Linkname)
			}
			n.ino = t.ino
		} else {
			// The target may still come later in this layer.
			f.pending = append(f.pending, pendingLink{n: n, path: p, target: target})
		}
	default:
		// Other tar types (GNU volume headers, continuation entries)
		// carry no file for the image.
		return nil
	}
	if parent.children[base] == nil {
		f.entries++
	}
	parent.children[base] = n
	return nil
}

var errSparseBomb = errors.New("sparse file too large")

// spoolContent appends one file's content to the spool, stopping when the
// layer's files expand far beyond what the layer stream holds.
func (f *Tree) spoolContent(src io.Reader) (int64, error) {
	dst := io.NewOffsetWriter(f.spool, f.off)
	buf := make([]byte, 128<<10)
	var written int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return written, werr
			}
			written += int64(n)
			if f.off+written-f.layerOff-f.consumed > f.maxHoles {
				return written, errSparseBomb
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

type countingReader struct {
	r io.Reader
	n *int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// taggedReader remembers a read error so a copy can tell a corrupt layer
// from a full disk.
type taggedReader struct {
	r   io.Reader
	err error
}

func (t *taggedReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		t.err = err
	}
	return n, err
}

// hideLower removes from dir everything that lower layers put there,
// keeping what the current layer created or changed (and, below a kept
// directory, again only the current layer's entries).
func (f *Tree) hideLower(dir *node) {
	for name, child := range dir.children {
		switch {
		case child.touched < f.layer:
			delete(dir.children, name)
		case child.children != nil:
			f.hideLower(child)
		}
	}
}

// metaOnly copies the metadata of hdr that the image keeps, with typ as
// the entry type.
func metaOnly(hdr *tar.Header, typ byte) tar.Header {
	out := tar.Header{
		Typeflag:   typ,
		Mode:       hdr.Mode & 0o7777,
		Uid:        hdr.Uid,
		Gid:        hdr.Gid,
		ModTime:    hdr.ModTime,
		AccessTime: hdr.AccessTime,
		ChangeTime: hdr.ChangeTime,
		Devmajor:   hdr.Devmajor,
		Devminor:   hdr.Devminor,
	}
	for k, v := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			if out.PAXRecords == nil {
				out.PAXRecords = map[string]string{}
			}
			out.PAXRecords[k] = v
		}
	}
	return out
}

// checkSymlink rejects a relative symlink target that climbs above the
// image root from the link's own directory. Absolute targets are fine:
// the guest resolves them inside its own root.
func checkSymlink(p, target string) error {
	if target == "" {
		return fmt.Errorf("%w: symlink %q has an empty target", ErrBadLayer, p)
	}
	if strings.ContainsRune(target, 0) {
		return fmt.Errorf("%w: symlink %q target contains a NUL byte", ErrUnsafeEntry, p)
	}
	if strings.HasPrefix(target, "/") {
		return nil
	}
	depth := strings.Count(path.Dir("/"+p), "/")
	if path.Dir("/"+p) == "/" {
		depth = 0
	}
	for _, part := range strings.Split(target, "/") {
		switch part {
		case "..":
			depth--
			if depth < 0 {
				return fmt.Errorf("%w: symlink %q points outside the image (%q)", ErrUnsafeEntry, p, target)
			}
		case "", ".":
		default:
			depth++
		}
	}
	return nil
}

// dirFor returns the directory node at dir, creating missing directories
// (entries may precede their directory's own header). A symlink or other
// non-directory on the way is rejected: writing through it is how layers
// escape their root.
func (f *Tree) dirFor(dir, entry string) (*node, error) {
	n := f.root
	if dir == "" {
		return n, nil
	}
	for _, part := range strings.Split(dir, "/") {
		child := n.children[part]
		if child == nil {
			child = &node{ino: &inode{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}}, children: map[string]*node{}, layer: f.layer}
			n.children[part] = child
			f.entries++
		} else if child.children == nil {
			kind := "a file"
			if child.ino != nil && child.ino.hdr.Typeflag == tar.TypeSymlink {
				kind = "a symlink"
			}
			return nil, fmt.Errorf("%w: %q is below %s", ErrUnsafeEntry, entry, kind)
		}
		child.touched = f.layer
		n = child
	}
	return n, nil
}

// lookup returns the node at p without creating anything, or nil.
func (f *Tree) lookup(p string) *node {
	n := f.root
	if p == "" {
		return n
	}
	for _, part := range strings.Split(p, "/") {
		if n.children == nil {
			return nil
		}
		n = n.children[part]
		if n == nil {
			return nil
		}
	}
	return n
}

func (f *Tree) resolvePending() error {
	pending := f.pending
	f.pending = nil
	// A link may point at another pending link; resolve until no progress.
	for len(pending) > 0 {
		var next []pendingLink
		for _, pl := range pending {
			t := f.lookup(pl.target)
			switch {
			case t == nil:
				next = append(next, pl)
			case t.children != nil:
				return fmt.Errorf("%w: hard link %q points to directory %q", ErrBadLayer, pl.path, pl.target)
			case t.ino == nil:
				next = append(next, pl)
			default:
				pl.n.ino = t.ino
			}
		}
		if len(next) == len(pending) {
			pl := next[0]
			if f.lookup(pl.path) != pl.n {
				// Replaced later in the same layer: nothing to resolve.
				next = next[1:]
			} else {
				return fmt.Errorf("%w: hard link %q points to %q, which is not in the image", ErrBadLayer, pl.path, pl.target)
			}
		}
		pending = next
	}
	return nil
}

// Exists reports whether p (relative or absolute, as the image sees it)
// names an entry of the tree once symlinks are followed inside the tree,
// the way the guest's kernel would resolve it: "bin/bash" exists in a
// merged-/usr image where bin is a link to usr/bin.
func (f *Tree) Exists(p string) bool {
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	var cur []string // resolved components so far
	for hops := 0; len(parts) > 0; {
		part := parts[0]
		parts = parts[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if len(cur) > 0 {
				cur = cur[:len(cur)-1]
			}
			continue
		}
		n := f.lookup(strings.Join(append(cur, part), "/"))
		if n == nil || n.ino == nil {
			return false
		}
		if n.ino.hdr.Typeflag != tar.TypeSymlink {
			cur = append(cur, part)
			continue
		}
		if hops++; hops > 40 {
			return false
		}
		target := n.ino.hdr.Linkname
		if strings.HasPrefix(target, "/") {
			cur = nil
		}
		parts = append(strings.Split(target, "/"), parts...)
	}
	return true
}

// Remove drops the entry at p (and everything below it) if it exists.
func (f *Tree) Remove(p string) {
	p, err := CleanPath(p)
	if err != nil || p == "" {
		return
	}
	dir, base := path.Split(p)
	if parent := f.lookup(strings.TrimSuffix(dir, "/")); parent != nil && parent.children != nil {
		delete(parent.children, base)
	}
}

// Entries is the number of paths created so far, an upper bound of the
// number in the final tree.
func (f *Tree) Entries() int { return f.entries }

// WriteTar writes the flattened tree as one tar stream: each directory
// before its entries, siblings in name order, the first path of every
// inode as the file itself and later paths as hard links to it. The
// stream contains no whiteouts; paths carry no leading "/" or "./".
func (f *Tree) WriteTar(w io.Writer) error {
	tw := tar.NewWriter(w)
	written := map[*inode]string{}
	root := f.root.ino.hdr
	root.Name = "./"
	if err := tw.WriteHeader(&root); err != nil {
		return fmt.Errorf("writing flattened tar: %w", err)
	}
	if err := f.writeDir(tw, f.root, "", written); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("writing flattened tar: %w", err)
	}
	return nil
}

func (f *Tree) writeDir(tw *tar.Writer, dir *node, prefix string, written map[*inode]string) error {
	names := make([]string, 0, len(dir.children))
	for name := range dir.children {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		child := dir.children[name]
		p := prefix + name
		if child.children != nil {
			hdr := child.ino.hdr
			hdr.Name = p + "/"
			if err := tw.WriteHeader(&hdr); err != nil {
				return fmt.Errorf("writing flattened tar: %s: %w", p, err)
			}
			if err := f.writeDir(tw, child, p+"/", written); err != nil {
				return err
			}
			continue
		}
		if child.ino == nil {
			return fmt.Errorf("%w: hard link %q was never resolved", ErrBadLayer, p)
		}
		if first, ok := written[child.ino]; ok {
			hdr := tar.Header{Typeflag: tar.TypeLink, Name: p, Linkname: first, Mode: child.ino.hdr.Mode, ModTime: child.ino.hdr.ModTime}
			if err := tw.WriteHeader(&hdr); err != nil {
				return fmt.Errorf("writing flattened tar: %s: %w", p, err)
			}
			continue
		}
		written[child.ino] = p
		hdr := child.ino.hdr
		hdr.Name = p
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = child.ino.size
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			return fmt.Errorf("writing flattened tar: %s: %w", p, err)
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			if _, err := io.Copy(tw, io.NewSectionReader(f.spool, child.ino.off, child.ino.size)); err != nil {
				return fmt.Errorf("writing flattened tar: %s: %w", p, err)
			}
		}
	}
	return nil
}
