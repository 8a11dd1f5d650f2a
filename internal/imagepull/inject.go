package imagepull

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"banger/internal/guestnet"
	"banger/internal/system"
	"banger/internal/vsockagent"
)

// GuestAgentAssets bundles what the guest side of banger needs in a rootfs
// that does not have it yet. The daemon resolves the agent binary with
// paths.CompanionBinaryPath; everything else comes from the asset packages.
type GuestAgentAssets struct {
	VsockAgentBin string // absolute host path, copied verbatim
}

// Guest paths that InjectGuestAgents writes. The flattener drops any entry
// an image already has at one of these paths so the injected files are the
// only ones there.
var (
	guestUnitDir  = "/etc/systemd/system"
	guestWantsDir = guestUnitDir + "/multi-user.target.wants"
)

// InjectedPaths lists every guest path InjectGuestAgents creates.
func InjectedPaths() []string {
	files, links := injectPlan(GuestAgentAssets{})
	var out []string
	for _, f := range files {
		out = append(out, f.guestPath)
	}
	for _, l := range links {
		out = append(out, l.link)
	}
	return out
}

// injectPlan is the fixed list of files and enable symlinks of the seed.
func injectPlan(assets GuestAgentAssets) ([]injectFile, []injectSymlink) {
	files := []injectFile{
		{hostSrc: assets.VsockAgentBin, guestPath: vsockagent.GuestInstallPath, mode: 0o755},
		{content: []byte(guestnet.BootstrapScript()), guestPath: guestnet.GuestScriptPath, mode: 0o755},
		{content: []byte(guestnet.SystemdServiceUnit()), guestPath: guestUnitDir + "/" + guestnet.SystemdServiceName, mode: 0o644},
		{content: []byte(vsockagent.ServiceUnit()), guestPath: guestUnitDir + "/" + vsockagent.ServiceName, mode: 0o644},
		{content: []byte(vsockagent.ModulesLoadConfig()), guestPath: vsockagent.ModulesLoadPath, mode: 0o644},
	}
	links := []injectSymlink{
		{target: guestUnitDir + "/" + guestnet.SystemdServiceName, link: guestWantsDir + "/" + guestnet.SystemdServiceName},
		{target: guestUnitDir + "/" + vsockagent.ServiceName, link: guestWantsDir + "/" + vsockagent.ServiceName},
	}
	return files, links
}

// InjectGuestAgents writes banger's guest-side assets (agent binary and
// unit, network bootstrap script and unit, vsock modules-load config, and
// the symlinks that enable both units at boot) into ext4File, all owned by
// uid 0 / gid 0 with fixed modes.
//
// It runs one `debugfs -w -f -` batch: directories, writes, ownership and
// modes, then symlinks. No root is needed when the caller owns ext4File.
// The target paths must not exist yet (debugfs does not overwrite); images
// built by this package never have them.
func InjectGuestAgents(ctx context.Context, runner system.CommandRunner, ext4File string, assets GuestAgentAssets) error {
	if assets.VsockAgentBin == "" {
		return fmt.Errorf("inject guest agents: vsock-agent binary path is required")
	}
	if _, err := os.Stat(assets.VsockAgentBin); err != nil {
		return fmt.Errorf("inject guest agents: vsock-agent binary %q missing: %w", assets.VsockAgentBin, err)
	}
	stdinRunner, ok := runner.(system.StdinRunner)
	if !ok {
		return fmt.Errorf("inject guest agents: runner %T cannot feed standard input", runner)
	}

	// Content blobs become temp files so debugfs `write` can read them;
	// every other command is inline in the script.
	stage, err := os.MkdirTemp("", "banger-inject-")
	if err != nil {
		return fmt.Errorf("inject guest agents: %w", err)
	}
	defer os.RemoveAll(stage)

	files, links := injectPlan(assets)
	for i := range files {
		if files[i].hostSrc != "" {
			continue
		}
		tmp := filepath.Join(stage, fmt.Sprintf("blob-%d", i))
		if err := os.WriteFile(tmp, files[i].content, 0o644); err != nil {
			return fmt.Errorf("inject guest agents: staging %s: %w", files[i].guestPath, err)
		}
		files[i].hostSrc = tmp
	}

	script := buildInjectScript(files, links)
	out, err := stdinRunner.RunStdin(ctx, bytes.NewReader(script), "debugfs", "-w", "-f", "-", ext4File)
	if err != nil {
		return fmt.Errorf("debugfs inject: %w: %s", err, system.Tail(string(out), 512))
	}
	// debugfs -f carries on past failed commands and its exit status only
	// reflects the last one, so the output is the real verdict.
	if bad := scanDebugfsOutput(out, script, benignMkdir); bad != "" {
		if debugfsFull.MatchString(bad) {
			return fmt.Errorf("debugfs inject: %w: %s", ErrImageFull, bad)
		}
		return fmt.Errorf("debugfs inject: %s", bad)
	}
	return nil
}

// ErrImageFull means the image's own file system had no room (inodes or
// blocks) for banger's guest files: BuildExt4 sized it too tightly. It is
// not the host's disk being full (ErrNoSpace).
var ErrImageFull = errors.New("image file system full")

type injectFile struct {
	content   []byte
	hostSrc   string // set by InjectGuestAgents after staging
	guestPath string
	mode      uint32 // permission bits; buildInjectScript adds the type bits
}

type injectSymlink struct {
	target string
	link   string
}

// quoteArg quotes one debugfs argument. debugfs splits its command lines
// on blanks and honours double quotes, with no escape character, so a
// path that holds a double quote or a line break cannot be expressed.
func quoteArg(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"\\'") {
		return s
	}
	return `"` + s + `"`
}

// validArg reports whether s can be passed to debugfs at all.
func validArg(s string) bool { return !strings.ContainsAny(s, "\"\n\r\x00") }

// buildInjectScript emits the debugfs command stream. It panics on paths
// that debugfs cannot express; every path here is a constant or a temp
// file name that InjectGuestAgents created.
func buildInjectScript(files []injectFile, symlinks []injectSymlink) []byte {
	var buf bytes.Buffer
	line := func(args ...string) {
		for i, a := range args {
			if !validArg(a) {
				panic(fmt.Sprintf("debugfs argument %q cannot be quoted", a))
			}
			if i > 0 {
				buf.WriteByte(' ')
			}
			buf.WriteString(quoteArg(a))
		}
		buf.WriteByte('\n')
	}
	// Every ancestor directory, shallowest first; mkdir of an existing
	// directory is benign and scanInjectOutput ignores it.
	dirs := collectAncestors(files, symlinks)
	for _, d := range dirs {
		line("mkdir", d)
	}
	for _, f := range files {
		line("write", f.hostSrc, f.guestPath)
	}
	for _, f := range files {
		line("set_inode_field", f.guestPath, "uid", "0")
		line("set_inode_field", f.guestPath, "gid", "0")
		line("set_inode_field", f.guestPath, "mode", fmt.Sprintf("0%o", 0o100000|f.mode))
	}
	// Directory ownership only: mkdir's default mode 0755 is what we want.
	for _, d := range dirs {
		line("set_inode_field", d, "uid", "0")
		line("set_inode_field", d, "gid", "0")
	}
	for _, s := range symlinks {
		line("symlink", s.link, s.target)
	}
	return buf.Bytes()
}

// collectAncestors returns the unique parent directories of every file and
// symlink, shallowest first, then lexicographically, so mkdir order is valid.
func collectAncestors(files []injectFile, symlinks []injectSymlink) []string {
	set := map[string]struct{}{}
	add := func(p string) {
		for dir := path.Dir(p); dir != "/" && dir != "."; dir = path.Dir(dir) {
			set[dir] = struct{}{}
		}
	}
	for _, f := range files {
		add(f.guestPath)
	}
	for _, s := range symlinks {
		add(s.link)
	}
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool {
		di, dj := strings.Count(out[i], "/"), strings.Count(out[j], "/")
		if di != dj {
			return di < dj
		}
		return out[i] < out[j]
	})
	return out
}

var (
	debugfsBanner    = regexp.MustCompile(`^debugfs \d+\.\d+`)
	debugfsAllocated = regexp.MustCompile(`^Allocated inode: \d+$`)
	// mkdir of a directory that already exists, as e2fsprogs words it
	// (1.47: "Ext2 directory already exists"; older: "File exists").
	// debugfsFull is debugfs saying the file system has no inode or
	// block left for a write.
	debugfsFull = regexp.MustCompile(`Could not allocate (inode|block)|No free space in the filesystem`)
	benignMkdir = regexp.MustCompile(`^(ext2fs_mkdir|mkdir): (Ext2 directory already exists|File exists)\b`)
)

// scanDebugfsOutput returns the first line of debugfs output that reports
// a failure, or "" when there is none. debugfs echoes each command of the
// script as "debugfs: CMD" and prints a banner and "Allocated inode"
// lines; the only other lines tolerated are those benign matches (for the
// inject batch: mkdir of an existing directory). Everything else (a failed
// write, an unknown path, an unknown command) is a failure, so a message
// this scanner has never seen cannot pass silently.
func scanDebugfsOutput(out, script []byte, benign *regexp.Regexp) string {
	echoed := map[string]bool{}
	for _, l := range strings.Split(string(script), "\n") {
		if l != "" {
			echoed["debugfs: "+l] = true
		}
	}
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "", echoed[line], debugfsBanner.MatchString(line), debugfsAllocated.MatchString(line):
			continue
		case benign != nil && benign.MatchString(line):
			continue
		}
		return line
	}
	return ""
}
