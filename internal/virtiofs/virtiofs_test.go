package virtiofs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		spec, host, guest string
		ro, sync          bool
		err               string
	}{
		{spec: "/src:/work", host: "/src", guest: "/work"},
		{spec: "/src/:/work/:ro", host: "/src", guest: "/work", ro: true},
		{spec: "/src:/work:rw", host: "/src", guest: "/work"},
		{spec: "src:/work", err: "host path must be absolute"},
		{spec: "/src:work", err: "must be absolute"},
		{spec: "/src:/", err: "cannot be /"},
		{spec: "/src:/proc/x", err: "inside /proc"},
		{spec: "/src:/a b", err: "space"},
		{spec: "/src:/work:rx", err: "want HOST:GUEST"},
		{spec: "/src:/work:sync", host: "/src", guest: "/work", sync: true},
		{spec: "/src:/work:ro,sync", host: "/src", guest: "/work", ro: true, sync: true},
		{spec: "/src:/work:ro,fast", err: `unknown option "fast"`},
		{spec: "/src", err: "want HOST:GUEST"},
	} {
		s, err := Parse(c.spec)
		if c.err != "" {
			if err == nil || !errors.Is(err, ErrBadMount) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Parse(%q) = %v, want an error with %q", c.spec, err, c.err)
			}
			continue
		}
		if err != nil || s.Host != c.host || s.Guest != c.guest || s.ReadOnly != c.ro || s.Sync != c.sync {
			t.Errorf("Parse(%q) = %+v %v", c.spec, s, err)
		}
	}
}

func TestResolveChecksTheCallersRights(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(dir, link)
	m, err := Resolve(Spec{Host: link, Guest: "/w", ReadOnly: false}, Caller{UID: 0})
	if err != nil || m.Host != dir {
		t.Errorf("root, through a symlink: %+v %v (want the resolved path)", m, err)
	}
	// Someone else: may read (0755), may not write.
	other := Caller{UID: 4242, GID: 4242}
	if _, err := Resolve(Spec{Host: dir, Guest: "/w", ReadOnly: true}, other); err != nil {
		t.Errorf("ro for another user of a 0755 directory: %v", err)
	}
	if _, err := Resolve(Spec{Host: dir, Guest: "/w", ReadOnly: false}, other); err == nil || !strings.Contains(err.Error(), "you may not read and write it") {
		t.Errorf("rw for another user of a 0755 directory: %v", err)
	}
	// A group member may write a 0775 directory of that group.
	os.Chmod(dir, 0o775)
	os.Chown(dir, 0, 4343)
	if _, err := Resolve(Spec{Host: dir, Guest: "/w", ReadOnly: false}, Caller{UID: 4242, GID: 1, Groups: []int{4343}}); err != nil {
		t.Errorf("rw for a member of the directory's group: %v", err)
	}
	f := filepath.Join(dir, "f")
	os.WriteFile(f, nil, 0o644)
	if _, err := Resolve(Spec{Host: f, Guest: "/w", ReadOnly: true}, Caller{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a file: %v", err)
	}
	if _, err := Resolve(Spec{Host: filepath.Join(dir, "nope"), Guest: "/w", ReadOnly: true}, Caller{}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing path: %v", err)
	}
}

func TestCheckAndCmdline(t *testing.T) {
	ms := []api.Mount{{Guest: "/a", Tag: "banger0"}, {Guest: "/b", Tag: "banger1", ReadOnly: true}}
	if err := Check(ms); err != nil {
		t.Fatal(err)
	}
	if got := Cmdline(ms[1]); got != "banger.mount=banger1:/b:ro" {
		t.Errorf("Cmdline = %q", got)
	}
	if err := Check(append(ms, api.Mount{Guest: "/a"})); err == nil || !strings.Contains(err.Error(), "two mounts at /a") {
		t.Errorf("duplicate guest path: %v", err)
	}
}
