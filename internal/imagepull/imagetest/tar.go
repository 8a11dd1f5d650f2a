// Package imagetest builds layer tarballs in memory for tests of the
// image pipeline. It is test data only; nothing in banger's binaries
// imports it.
package imagetest

import (
	"archive/tar"
	"bytes"
	"testing"
	"time"
)

// Entry is one tar entry of a test layer.
type Entry struct {
	Name     string
	Type     byte // default tar.TypeReg
	Mode     int64
	UID, GID int
	Body     string
	Link     string
	Major    int64
	Minor    int64
	Xattrs   map[string]string
}

// ModTime is the modification time of every entry.
var ModTime = time.Unix(1700000000, 0)

// Layer builds an uncompressed tar layer from entries, in order, in PAX
// format. Modes default to 0644 for files and 0755 for directories.
func Layer(tb testing.TB, entries ...Entry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.Mode
		if mode == 0 {
			mode = 0o644
			if typ == tar.TypeDir {
				mode = 0o755
			}
		}
		hdr := &tar.Header{Name: e.Name, Typeflag: typ, Mode: mode, Uid: e.UID, Gid: e.GID,
			Linkname: e.Link, Devmajor: e.Major, Devminor: e.Minor, ModTime: ModTime, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.Body))
		}
		for k, v := range e.Xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(hdr); err != nil {
			tb.Fatalf("writing header %s: %v", e.Name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.Body)); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}
