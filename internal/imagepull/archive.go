package imagepull

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// archiveImage is the image an archive or layout holds, unpacked: its
// config and its layer files in order.
type archiveImage struct {
	kind   string
	what   string // how errors name it: "docker archive image alpine:3.20"
	ref    string // the tag it carries, "" when none
	digest string
	cfg    *v1.ConfigFile
	layers []archiveLayer
}

type archiveLayer struct {
	path   string
	digest string // "" when the archive does not name it by digest
	size   int64
}

// dockerManifest is one entry of a docker save archive's manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// readDockerArchive reads the image of an unpacked docker save archive;
// ref picks one when it holds several.
func readDockerArchive(dir, ref string) (*archiveImage, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, fmt.Errorf("%w: reading manifest.json: %v", ErrBadSource, err)
	}
	var ms []dockerManifest
	if err := json.Unmarshal(b, &ms); err != nil {
		return nil, fmt.Errorf("%w: manifest.json of the docker archive: %v", ErrBadSource, err)
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("%w: the docker archive's manifest.json lists no image", ErrBadSource)
	}
	names := make([][]string, len(ms))
	for i, m := range ms {
		names[i] = m.RepoTags
		if len(names[i]) == 0 {
			names[i] = []string{"(untagged " + short(strings.TrimSuffix(filepath.Base(m.Config), ".json")) + ")"}
		}
	}
	i, tag, err := pickImage("docker archive", names, ref)
	if err != nil {
		return nil, err
	}
	m := ms[i]
	cfgPath, err := archiveFile(dir, m.Config)
	if err != nil {
		return nil, err
	}
	cb, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("%w: the docker archive lacks its image config %s", ErrBadSource, m.Config)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(cb))
	if err != nil {
		return nil, fmt.Errorf("%w: image config %s: %v", ErrBadSource, m.Config, err)
	}
	sum := sha256.Sum256(cb)
	img := &archiveImage{kind: KindDockerArchive, ref: tag, cfg: cfg, digest: "sha256:" + hex.EncodeToString(sum[:])}
	img.what = "docker archive image " + orUntagged(tag, img.digest)
	for _, l := range m.Layers {
		p, err := archiveFile(dir, l)
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%w: the docker archive lacks layer %s", ErrBadSource, l)
		}
		al := archiveLayer{path: p, size: fi.Size()}
		if m := blobPathRE.FindStringSubmatch(l); m != nil {
			al.digest = m[1] + ":" + m[2]
		}
		img.layers = append(img.layers, al)
	}
	return img, nil
}

func orUntagged(tag, digest string) string {
	if tag != "" {
		return tag
	}
	return short(digest)
}

// archiveFile is the path of an archive member named in a manifest.
func archiveFile(dir, member string) (string, error) {
	p, err := archivePath(member)
	if err != nil {
		return "", err
	}
	if p == "" {
		return "", fmt.Errorf("%w: the manifest names an empty path", ErrBadSource)
	}
	return filepath.Join(dir, filepath.FromSlash(p)), nil
}

// pickImage chooses among the images of a source, each known by a list
// of names: the only one, or the one ref names. It returns its index and
// the name it matched.
func pickImage(what string, names [][]string, ref string) (int, string, error) {
	var all []string
	for _, ns := range names {
		all = append(all, ns...)
	}
	if ref == "" {
		if len(names) == 1 {
			tag := ""
			if len(names[0]) > 0 && !strings.HasPrefix(names[0][0], "(") {
				tag = names[0][0]
			}
			return 0, tag, nil
		}
		return 0, "", fmt.Errorf("%w: the %s holds %d images (%s): pick one with --ref", ErrAmbiguous, what, len(names), strings.Join(all, ", "))
	}
	want := normalizeRef(ref)
	for i, ns := range names {
		for _, n := range ns {
			if n == ref || normalizeRef(n) == want {
				return i, n, nil
			}
		}
	}
	return 0, "", fmt.Errorf("%w: the %s has no image %s; it holds %s", ErrNotFound, what, ref, strings.Join(all, ", "))
}

// normalizeRef is the fully qualified form of a reference, or the input
// when it is no reference.
func normalizeRef(s string) string {
	if r, err := name.ParseReference(s); err == nil {
		return r.Name()
	}
	return s
}

// checkPlatform refuses an image that is not linux/amd64.
func checkPlatform(cfg *v1.ConfigFile, what string) error {
	if (cfg.OS != "" && cfg.OS != "linux") || (cfg.Architecture != "" && cfg.Architecture != "amd64") {
		return fmt.Errorf("%w: %s is built for %s/%s; banger runs linux/amd64 guests", ErrNoPlatform, what, cfg.OS, cfg.Architecture)
	}
	return nil
}

// decompress detects gzip, zstd, xz or bzip2 by magic number; anything
// else is passed through. Layers use the first two; import sources any.
func decompress(br *bufio.Reader) (io.ReadCloser, error) {
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		zr, err := xz.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("xz: %v", err)
		}
		return io.NopCloser(zr), nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return io.NopCloser(bzip2.NewReader(br)), nil
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %v", err)
		}
		return zr, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("zstd: %v", err)
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// Annotations that name an image in an OCI layout's index.
const (
	annotationRefName        = "org.opencontainers.image.ref.name"
	annotationContainerdName = "io.containerd.image.name"
)

// ociCandidate is one linux/amd64 image manifest of a layout, with the
// names its index entries give it.
type ociCandidate struct {
	desc  v1.Descriptor
	names []string
}

// readOCILayout reads the linux/amd64 image of an unpacked OCI image
// layout; ref picks one when the layout holds several images. Every blob
// was checked against its digest while unpacking.
func readOCILayout(dir, ref string) (*archiveImage, error) {
	idx, err := readIndex(dir, filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	var cands []ociCandidate
	var others []string
	for _, d := range idx.Manifests {
		names := descNames(d)
		found, err := ociImages(dir, d, names, &others, 0)
		if err != nil {
			return nil, err
		}
		cands = append(cands, found...)
	}
	if len(cands) == 0 {
		if len(others) > 0 {
			return nil, fmt.Errorf("%w: the OCI layout offers only %s; banger runs linux/amd64 guests", ErrNoPlatform, strings.Join(others, ", "))
		}
		return nil, fmt.Errorf("%w: the OCI layout's index lists no image", ErrBadSource)
	}
	names := make([][]string, len(cands))
	for i, c := range cands {
		names[i] = c.names
		if len(names[i]) == 0 {
			names[i] = []string{"(untagged " + short(c.desc.Digest.String()) + ")"}
		}
	}
	i, tag, err := pickImage("OCI layout", names, ref)
	if err != nil {
		return nil, err
	}
	desc := cands[i].desc
	mb, err := readBlob(dir, desc.Digest)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, fmt.Errorf("%w: manifest %s: %v", ErrBadSource, short(desc.Digest.String()), err)
	}
	cb, err := readBlob(dir, m.Config.Digest)
	if err != nil {
		return nil, err
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(cb))
	if err != nil {
		return nil, fmt.Errorf("%w: image config %s: %v", ErrBadSource, short(m.Config.Digest.String()), err)
	}
	img := &archiveImage{kind: KindOCILayout, ref: tag, digest: desc.Digest.String(), cfg: cfg}
	img.what = "OCI layout image " + orUntagged(tag, img.digest)
	for _, l := range m.Layers {
		p, err := blobFile(dir, l.Digest)
		if err != nil {
			return nil, err
		}
		img.layers = append(img.layers, archiveLayer{path: p, digest: l.Digest.String(), size: l.Size})
	}
	return img, nil
}

// ociImages walks a descriptor of an index down to its linux/amd64 image
// manifests; the platforms of the others go to others.
func ociImages(dir string, d v1.Descriptor, names []string, others *[]string, depth int) ([]ociCandidate, error) {
	if depth > 4 {
		return nil, fmt.Errorf("%w: the OCI layout's indexes nest too deep", ErrBadSource)
	}
	if d.MediaType.IsIndex() {
		idx, err := readIndexBlob(dir, d.Digest)
		if err != nil {
			return nil, err
		}
		var out []ociCandidate
		for _, c := range idx.Manifests {
			found, err := ociImages(dir, c, names, others, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, found...)
		}
		return out, nil
	}
	if !d.MediaType.IsImage() {
		return nil, nil // attestations, signatures and the like
	}
	if p := d.Platform; p != nil {
		if p.OS == "linux" && p.Architecture == "amd64" {
			return []ociCandidate{{desc: d, names: names}}, nil
		}
		if p.OS != "unknown" {
			*others = append(*others, p.OS+"/"+p.Architecture)
		}
		return nil, nil
	}
	// No platform in the index: the config says (checked later).
	return []ociCandidate{{desc: d, names: names}}, nil
}

// descNames is what an index entry calls its image.
func descNames(d v1.Descriptor) []string {
	var out []string
	if n := d.Annotations[annotationContainerdName]; n != "" {
		out = append(out, n)
	}
	if n := d.Annotations[annotationRefName]; n != "" && !containsString(out, n) {
		out = append(out, n)
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func readIndex(dir, p string) (*v1.IndexManifest, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("%w: reading the OCI layout's index: %v", ErrBadSource, err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%w: the OCI layout's index.json: %v", ErrBadSource, err)
	}
	return idx, nil
}

func readIndexBlob(dir string, h v1.Hash) (*v1.IndexManifest, error) {
	p, err := blobFile(dir, h)
	if err != nil {
		return nil, err
	}
	return readIndex(dir, p)
}

// blobFile is the path of a layout's blob, which must exist.
func blobFile(dir string, h v1.Hash) (string, error) {
	if !blobPathRE.MatchString("blobs/" + h.Algorithm + "/" + h.Hex) {
		return "", fmt.Errorf("%w: unsupported digest %s", ErrBadSource, h)
	}
	p := filepath.Join(dir, "blobs", h.Algorithm, h.Hex)
	if !fileExists(p) {
		return "", fmt.Errorf("%w: the OCI layout lacks blob %s: copy the whole layout again", ErrBadSource, short(h.String()))
	}
	return p, nil
}

func readBlob(dir string, h v1.Hash) ([]byte, error) {
	p, err := blobFile(dir, h)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", short(h.String()), err)
	}
	return b, nil
}
