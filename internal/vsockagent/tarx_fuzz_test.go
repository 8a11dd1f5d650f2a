package vsockagent

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"banger/internal/testenv"
)

// FuzzExtractTar extracts archives described as text (easier for the
// fuzzer to mutate than tar bytes, whose checksums turn most mutations
// into a read error) into base/dst, new or existing, and checks that
// whatever happens, error or not, nothing outside dst changed and no
// extracted file is setuid or setgid. An existing dst holds symlinks out
// of it to tempt the extractor.
func FuzzExtractTar(f *testing.F) {
	for _, c := range hostileCases {
		if c.setup == nil {
			f.Add(encodeSpec(c.entries), false)
		}
		f.Add(encodeSpec(c.entries), true)
	}
	honest := "d|t/||750|\nf|t/run||750|#!/bin/sh\nd|t/s/||700|\nf|t/s/secret||600|x\n" +
		"l|t/link|s/secret||\nh|t/hard|t/run||\nd|t/empty/||555|\nf|t/su||4755|su\nd|t/sg/||2775|\n"
	f.Add(honest, false)
	f.Add(honest, true)
	f.Add("d|t/||755|\nl|t/up|../..||\nd|t/up/||777|\nf|t/up/f||644|x\nh|t/h|t/up/sentinel||", false)
	f.Add("d|a/||777|\nf|a/f||644|x\nf|x/up/sentinel||644|x\nd|x/||755|\nh|x/h|x/old||", true)
	f.Fuzz(func(t *testing.T, spec string, into bool) {
		base, dst := layout(t, into)
		if into {
			must(t, os.Symlink(filepath.Join(base, "outside"), filepath.Join(dst, "a")))
			must(t, os.Mkdir(filepath.Join(dst, "x"), 0o755))
			must(t, os.Symlink("../..", filepath.Join(dst, "x", "up")))
			must(t, os.WriteFile(filepath.Join(dst, "x", "old"), []byte("old"), 0o644))
		}
		archive, err := buildTar(base, parseSpec(spec))
		if err != nil {
			testenv.SkipInput(t, fmt.Sprint("archive/tar cannot write this: ", err))
		}
		before := outside(t, base)
		ExtractTar(bytes.NewReader(archive), dst, ExtractOptions{})
		diffStates(t, "outside dst", before, outside(t, base))
		noSetID(t, dst)
	})
}

// noSetID fails the test for every setuid or setgid file under dir, and
// makes its directories writable so that the test's directory can be
// removed whatever modes the archive gave them.
func noSetID(tb testing.TB, dir string) {
	tb.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable: made readable below, before its contents
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			tb.Errorf("%s is %v: setuid/setgid must be dropped", p, fi.Mode())
		}
		if d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}

// encodeSpec writes entries as FuzzExtractTar's text: one line each,
// "type|name|link|octal mode|body", type d, f, l (symlink), h (hard
// link) or any other tar type byte.
func encodeSpec(entries []tarEntry) string {
	var b strings.Builder
	for _, e := range entries {
		typ := map[byte]string{tar.TypeDir: "d", tar.TypeReg: "f", tar.TypeSymlink: "l", tar.TypeLink: "h"}[e.typ]
		if typ == "" {
			typ = string(e.typ)
		}
		b.WriteString(strings.Join([]string{typ, e.name, e.link, strconv.FormatInt(e.mode, 8), e.body}, "|") + "\n")
	}
	return b.String()
}

// parseSpec reads encodeSpec's text, leniently: a fuzzer's mutations
// still make an archive.
func parseSpec(spec string) []tarEntry {
	var entries []tarEntry
	for _, line := range strings.Split(spec, "\n") {
		f := strings.SplitN(line, "|", 5)
		if f[0] == "" || len(entries) == 64 {
			continue
		}
		for len(f) < 5 {
			f = append(f, "")
		}
		e := tarEntry{typ: f[0][0], name: f[1], link: f[2], mode: 0o644, body: f[4]}
		if t, ok := map[string]byte{"d": tar.TypeDir, "f": tar.TypeReg, "l": tar.TypeSymlink, "h": tar.TypeLink}[f[0]]; ok {
			e.typ = t
		}
		if m, err := strconv.ParseInt(f[3], 8, 64); err == nil {
			e.mode = m
		}
		entries = append(entries, e)
	}
	return entries
}
