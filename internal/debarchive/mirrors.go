// Package debarchive reads Debian package archives the way apt does:
// the host's configured mirrors, a suite's InRelease file verified with
// gpgv against the archive keyring, the package index it vouches for
// (checked by hash), and Debian version order. banger uses it to find
// the newest catalog kernel at pull time and to pick the mirror image
// builds use. It downloads only what it is asked for and caches index
// files by hash.
package debarchive

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// Mirrors are a distribution's archive and its security archive.
type Mirrors struct {
	Archive  string
	Security string
}

// HostMirrors returns the Debian mirrors the host's apt uses (deb822
// files under etcApt/sources.list.d, and etcApt/sources.list with the
// .list files), each field falling back to def's.
func HostMirrors(etcApt string, def Mirrors) Mirrors {
	m := Mirrors{}
	for _, src := range hostSources(etcApt) {
		switch {
		case strings.HasSuffix(src.suite, "-security"):
			if m.Security == "" {
				m.Security = src.uri
			}
		case !strings.Contains(src.suite, "-") && strings.Contains(src.uri, "debian"):
			if m.Archive == "" {
				m.Archive = src.uri
			}
		}
	}
	if m.Archive == "" {
		m.Archive = def.Archive
	}
	if m.Security == "" {
		m.Security = def.Security
	}
	return m
}

type aptSource struct{ uri, suite string }

// hostSources reads the "deb" entries of the host's apt configuration.
func hostSources(etcApt string) []aptSource {
	var out []aptSource
	files, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", "*.sources"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, stanza := range strings.Split(string(b), "\n\n") {
			fields := map[string]string{}
			for _, line := range strings.Split(stanza, "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, " ") {
					fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
				}
			}
			if !strings.Contains(" "+fields["types"]+" ", " deb ") || strings.EqualFold(fields["enabled"], "no") {
				continue
			}
			for _, uri := range strings.Fields(fields["uris"]) {
				for _, suite := range strings.Fields(fields["suites"]) {
					out = append(out, aptSource{uri: strings.TrimSuffix(uri, "/"), suite: suite})
				}
			}
		}
	}
	lists, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", "*.list"))
	for _, f := range append([]string{filepath.Join(etcApt, "sources.list")}, lists...) {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 3 || fs[0] != "deb" {
				continue
			}
			fs = fs[1:]
			if strings.HasPrefix(fs[0], "[") { // [signed-by=… arch=…]
				for len(fs) > 0 && !strings.HasSuffix(fs[0], "]") {
					fs = fs[1:]
				}
				if len(fs) > 0 {
					fs = fs[1:]
				}
			}
			if len(fs) >= 2 {
				out = append(out, aptSource{uri: strings.TrimSuffix(fs[0], "/"), suite: fs[1]})
			}
		}
		fh.Close()
	}
	return out
}
