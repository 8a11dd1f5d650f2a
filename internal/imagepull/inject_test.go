package imagepull

import (
	"banger/internal/testenv"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/system"
)

func TestBuildInjectScript(t *testing.T) {
	files := []injectFile{
		{hostSrc: "/stage dir/agent", guestPath: "/usr/local/bin/banger-vsock-agent", mode: 0o755},
		{hostSrc: "/stage/unit", guestPath: "/etc/systemd/system/x.service", mode: 0o644},
	}
	links := []injectSymlink{{target: "/etc/systemd/system/x.service", link: "/etc/systemd/system/multi-user.target.wants/x.service"}}
	got := string(buildInjectScript(files, links))
	want := strings.Join([]string{
		"mkdir /etc",
		"mkdir /usr",
		"mkdir /etc/systemd",
		"mkdir /usr/local",
		"mkdir /etc/systemd/system",
		"mkdir /usr/local/bin",
		"mkdir /etc/systemd/system/multi-user.target.wants",
		`write "/stage dir/agent" /usr/local/bin/banger-vsock-agent`,
		"write /stage/unit /etc/systemd/system/x.service",
		"set_inode_field /usr/local/bin/banger-vsock-agent uid 0",
		"set_inode_field /usr/local/bin/banger-vsock-agent gid 0",
		"set_inode_field /usr/local/bin/banger-vsock-agent mode 0100755",
		"set_inode_field /etc/systemd/system/x.service uid 0",
		"set_inode_field /etc/systemd/system/x.service gid 0",
		"set_inode_field /etc/systemd/system/x.service mode 0100644",
		"set_inode_field /etc uid 0", "set_inode_field /etc gid 0",
		"set_inode_field /usr uid 0", "set_inode_field /usr gid 0",
		"set_inode_field /etc/systemd uid 0", "set_inode_field /etc/systemd gid 0",
		"set_inode_field /usr/local uid 0", "set_inode_field /usr/local gid 0",
		"set_inode_field /etc/systemd/system uid 0", "set_inode_field /etc/systemd/system gid 0",
		"set_inode_field /usr/local/bin uid 0", "set_inode_field /usr/local/bin gid 0",
		"set_inode_field /etc/systemd/system/multi-user.target.wants uid 0",
		"set_inode_field /etc/systemd/system/multi-user.target.wants gid 0",
		"symlink /etc/systemd/system/multi-user.target.wants/x.service /etc/systemd/system/x.service",
	}, "\n") + "\n"
	if got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
}

func TestQuoteArg(t *testing.T) {
	for in, want := range map[string]string{
		"/plain/path":    "/plain/path",
		"/with space":    `"/with space"`,
		"/tab\there":     "\"/tab\there\"",
		"/it's":          `"/it's"`,
		"":               `""`,
		"/usr/local/bin": "/usr/local/bin",
	} {
		if got := quoteArg(in); got != want {
			t.Errorf("quoteArg(%q) = %s, want %s", in, got, want)
		}
	}
	for _, bad := range []string{`/a"b`, "/a\nb", "/a\x00b"} {
		if validArg(bad) {
			t.Errorf("validArg(%q) = true", bad)
		}
	}
}

func TestCollectAncestorsDeduplicatesShallowFirst(t *testing.T) {
	got := collectAncestors(
		[]injectFile{{guestPath: "/a/b/c/f"}, {guestPath: "/a/b/g"}, {guestPath: "/top"}},
		[]injectSymlink{{link: "/a/x/l"}},
	)
	if strings.Join(got, " ") != "/a /a/b /a/x /a/b/c" {
		t.Errorf("ancestors = %v", got)
	}
}

func TestScanInjectOutput(t *testing.T) {
	script := []byte("mkdir /etc\nwrite /s/a /etc/a\nset_inode_field /etc/a uid 0\n")
	benign := "debugfs 1.47.0 (5-Feb-2023)\ndebugfs: mkdir /etc\nebugfs: \n" +
		"ext2fs_mkdir: Ext2 directory already exists while creating directory \"etc\"\nmkdir: Ext2 directory already exists \n" +
		"mkdir: File exists\ndebugfs: write /s/a /etc/a\nAllocated inode: 13\ndebugfs: set_inode_field /etc/a uid 0\n"
	// "ebugfs: " is not an echo of the script: it must be reported.
	if bad := scanDebugfsOutput([]byte(benign), script, benignMkdir); bad != "ebugfs:" {
		t.Errorf("scan = %q, want the unknown line", bad)
	}
	clean := strings.Replace(benign, "ebugfs: \n", "", 1)
	if bad := scanDebugfsOutput([]byte(clean), script, benignMkdir); bad != "" {
		t.Errorf("benign output flagged: %q", bad)
	}
	for _, failure := range []string{
		"write: Ext2 file already exists ",
		"do_write_internal: No such file or directory while opening \"/s/a\" to copy",
		"/etc/nope: File not found by ext2_lookup ",
		"symlink: Ext2 file already exists ",
		"debugfs: Command not found bogus",
		"write: Could not allocate inode in ext2 filesystem",
		"ext2fs_mkdir: Could not allocate block in ext2 filesystem while creating directory \"x\"",
	} {
		if bad := scanDebugfsOutput([]byte(clean+failure+"\n"), script, benignMkdir); bad != strings.TrimSpace(failure) {
			t.Errorf("scan missed %q (got %q)", failure, bad)
		}
	}
}

func mkfs(tb testing.TB) string {
	tb.Helper()
	testenv.RequireBinary(tb, "mkfs.ext4", "apt-get install e2fsprogs")
	img := filepath.Join(tb.TempDir(), "img.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "32M").CombinedOutput(); err != nil {
		tb.Fatalf("mkfs: %v %s", err, out)
	}
	return img
}

func TestInjectGuestAgentsIntoRealExt4(t *testing.T) {
	img := mkfs(t)
	agent, _ := fakeAgent(t)
	if err := InjectGuestAgents(context.Background(), system.Runner{}, img, GuestAgentAssets{VsockAgentBin: agent}); err != nil {
		t.Fatal(err)
	}
	checkInjected(t, img)
	e2fsckClean(t, img)
	if got := catFile(t, img, "/usr/local/libexec/banger-network-bootstrap"); !strings.HasPrefix(got, "#!/bin/sh") {
		t.Errorf("bootstrap script content %q", got[:min(len(got), 40)])
	}

	// A second run cannot overwrite: debugfs says so, and that is an error.
	err := InjectGuestAgents(context.Background(), system.Runner{}, img, GuestAgentAssets{VsockAgentBin: agent})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("re-inject err = %v, want an 'already exists' failure", err)
	}
}

func TestInjectGuestAgentsFullImage(t *testing.T) {
	testenv.RequireBinary(t, "mkfs.ext4", "apt-get install e2fsprogs")
	img := filepath.Join(t.TempDir(), "tiny.ext4")
	// 128 inodes, nearly all used: the writes cannot allocate.
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-N", "16", img, "1M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	agent, _ := fakeAgent(t)
	err := InjectGuestAgents(context.Background(), system.Runner{}, img, GuestAgentAssets{VsockAgentBin: agent})
	if !errors.Is(err, ErrImageFull) || errors.Is(err, ErrNoSpace) {
		t.Fatalf("inject into a full image: err = %v, want ErrImageFull (and not the host's ErrNoSpace)", err)
	}
}

type noStdinRunner struct{}

func (noStdinRunner) Run(context.Context, string, ...string) ([]byte, error) { return nil, nil }

func TestInjectGuestAgentsPreconditions(t *testing.T) {
	img := mkfs(t)
	agent, _ := fakeAgent(t)
	for name, c := range map[string]struct {
		runner system.CommandRunner
		assets GuestAgentAssets
		want   string
	}{
		"no binary path":  {system.Runner{}, GuestAgentAssets{}, "binary path is required"},
		"missing binary":  {system.Runner{}, GuestAgentAssets{VsockAgentBin: "/nonexistent/agent"}, "missing"},
		"runner no stdin": {noStdinRunner{}, GuestAgentAssets{VsockAgentBin: agent}, "cannot feed standard input"},
	} {
		t.Run(name, func(t *testing.T) {
			err := InjectGuestAgents(context.Background(), c.runner, img, c.assets)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}
