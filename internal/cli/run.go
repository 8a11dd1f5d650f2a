package cli

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"banger/client"
	"banger/internal/api"
	"banger/internal/system"
	"banger/internal/vsockagent"
)

// WorkspaceDir is where `vm run PATH` puts a repository in the guest.
const WorkspaceDir = "/root/repo"

func newVMRunCommand(a *app) *cobra.Command {
	var req api.VMCreateRequest
	var spec vmSpecFlags
	var rm, detach, untracked, live bool
	cmd := &cobra.Command{
		Use:   "run [PATH] [flags] [-- COMMAND [ARG...]]",
		Short: "Create and start a VM, then open a shell in it (or run COMMAND); PATH copies a git repository in",
		Long: "The one command: the default image and kernel (pulled on first use), a new VM,\n" +
			"then an interactive shell, or COMMAND with its output and exit status.\n" +
			"PATH (a git repository) is copied to " + WorkspaceDir + " with its git metadata and\n" +
			"becomes the working directory; `banger vm workspace export VM` returns your\n" +
			"changes in the guest as a patch. The VM keeps running afterwards unless --rm.",
		Example: "  banger vm run                           # a shell in a fresh VM\n" +
			"  banger vm run --rm -- make test          # run, exit with its status, remove the VM\n" +
			"  banger vm run . --name work -d           # this repository in a VM, in the background\n" +
			"  banger vm run . --live -- make           # the repository shared live (edits on either side show at once)\n" +
			"  banger vm run -v ~/data:/data:ro         # a host directory, read-only in the VM\n" +
			"  banger vm run --image alpine -p 8080:80 -- httpd -f\n" +
			"  banger vm run -e GOFLAGS=-mod=mod -w /src -u 1000 -- go test ./...   # environment, directory, user",
		Args: argsError(func(cmd *cobra.Command, args []string) error {
			if n := cmd.ArgsLenAtDash(); (n == -1 && len(args) > 1) || n > 1 {
				return errors.New("at most one PATH before `--`; the command goes after it")
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			var path string
			command := args
			if n := cmd.ArgsLenAtDash(); n >= 0 {
				if n == 1 {
					path = args[0]
				}
				command = args[n:]
			} else {
				if len(args) == 1 {
					path = args[0]
				}
				command = nil
			}
			if rm && detach {
				return errors.New("--rm and -d do not go together: a detached VM is meant to stay")
			}
			dir := ""
			if live {
				if path == "" {
					return errors.New("--live shares PATH: give the repository's path before `--`")
				}
				// The repository itself, live at the workspace path,
				// instead of a copy.
				req.Mounts = append(req.Mounts, path+":"+WorkspaceDir)
				path, dir = "", WorkspaceDir
			}
			if err := spec.finish(&req); err != nil {
				return err
			}
			// COMMAND is run through the agent (its output and status
			// are this command's), not as the VM's own command.
			if err := spec.run(&req, nil); err != nil {
				return err
			}
			a.subject = req.Name
			return a.run(cmd, req, path, untracked, command, rm, detach, dir)
		},
	}
	f := cmd.Flags()
	spec.bind(f, &req)
	f.BoolVar(&rm, "rm", false, "remove the VM when the shell or command ends")
	f.BoolVarP(&detach, "detach", "d", false, "leave the VM running in the background and say how to reach it")
	f.BoolVar(&untracked, "include-untracked", false, "with PATH: copy untracked files too (never ignored ones)")
	f.BoolVar(&live, "live", false, "with PATH: share the repository live at "+WorkspaceDir+" (like -v PATH:"+WorkspaceDir+") instead of copying it")
	return cmd
}

func (a *app) run(cmd *cobra.Command, req api.VMCreateRequest, path string, untracked bool, command []string, rm, detach bool, dir string) error {
	ctx := cmd.Context()
	stderr := cmd.ErrOrStderr()
	c, err := a.client(ctx)
	if err != nil {
		return err
	}
	cfg, err := c.Config(ctx)
	if err != nil {
		return err
	}
	setting := func(key string) string {
		for _, s := range cfg.Settings {
			if s.Key == key {
				return s.Value
			}
		}
		return ""
	}
	or := func(v, key string) string {
		if v != "" {
			return v
		}
		return setting(key)
	}
	image, kernel := or(req.Image, "default_image"), or(req.Kernel, "default_kernel")
	mem := or("", "memory")
	if req.MemoryMiB > 0 {
		mem = humanBytes(int64(req.MemoryMiB) << 20)
	}
	disk := or("", "disk_size")
	if req.DiskBytes > 0 {
		disk = humanBytes(req.DiskBytes)
	}
	vcpu := setting("vcpu")
	if req.VCPU > 0 {
		vcpu = fmt.Sprint(req.VCPU)
	}
	who := req.Name
	if who == "" {
		who = "a new VM"
	}
	fmt.Fprintf(stderr, "banger: %s from %s, kernel %s, %s vCPU, %s memory, %s disk, network %s\n", who, image, kernel, vcpu, mem, disk, or(req.Network, "network"))

	if req.Image, err = a.ensureImage(ctx, c, image, stderr); err != nil {
		return err
	}
	req.Kernel = a.ensureKernel(ctx, c, kernel, req.Kernel != "", stderr)
	var prog *vmProgress
	var onEvent func(api.Event)
	if isTerminal(stderr) {
		prog = newVMProgress(stderr, who)
		onEvent = prog.event
	}
	v, err := c.CreateVM(ctx, req, onEvent)
	prog.finish()
	if err != nil {
		return err
	}
	if rm {
		defer func() {
			if _, err := c.RemoveVM(context.WithoutCancel(ctx), v.Name, true); err != nil {
				fmt.Fprintln(stderr, "banger: removing", v.Name+":", err)
			}
		}()
	}
	if path != "" {
		if dir, err = a.copyWorkspace(ctx, c, v.Name, path, untracked); err != nil {
			return err
		}
	}
	if detach {
		fmt.Fprintf(cmd.OutOrStdout(), "%s\n", v.Name)
		fmt.Fprintf(stderr, "banger: %s is running (%s): `banger vm shell %s`, `ssh %s.vm` after `banger ssh-config --install`, `banger vm rm -f %s` when done\n", v.Name, orDash(v.IP), v.Name, v.Name, v.Name)
		return nil
	}
	tty := term.IsTerminal(int(os.Stdin.Fd())) && term.IsTerminal(int(os.Stdout.Fd()))
	r := vsockagent.Request{Op: "exec", Dir: dir, Argv: command, TTY: tty}
	if req.Run != nil {
		r.User = req.Run.User
	}
	if len(command) == 0 {
		r.Argv = vsockagent.LoginShell
		if !tty {
			r.Argv = []string{"/bin/sh", "-l"}
		}
	}
	runErr := a.runInVM(cmd, v.Name, r, true)
	if !rm {
		fmt.Fprintf(stderr, "banger: %s is still running: `banger vm shell %s` to come back, `banger vm rm -f %s` to remove it\n", v.Name, v.Name, v.Name)
	}
	return runErr
}

// imageCatalog maps well-known names to official references.
var imageCatalog = map[string]string{
	"debian": "docker.io/library/debian:bookworm",
	"ubuntu": "docker.io/library/ubuntu:24.04",
	"alpine": "docker.io/library/alpine:3.20",
	"fedora": "registry.fedoraproject.org/fedora:40",
}

// ensureImage returns the name of the image called name, pulling it
// (a catalog name, or any reference) with progress when it is missing.
func (a *app) ensureImage(ctx context.Context, c *client.Client, name string, w io.Writer) (string, error) {
	if img, err := c.Image(ctx, name); err == nil {
		return img.Name, nil
	} else if !client.IsNotFound(err) {
		return "", err
	}
	prog := newPullProgress(w, name, isTerminal(w))
	img, err := pullOrBuild(ctx, c, name, "", w, prog.event)
	prog.finish()
	if err != nil {
		return "", err
	}
	return img.Name, nil
}

// ensureKernel returns the kernel to ask for: name when it is imported,
// else fetched from the catalog. A default that cannot be had is ""
// (the daemon picks); an explicit one that cannot be had is kept, so
// the daemon's error names it.
func (a *app) ensureKernel(ctx context.Context, c *client.Client, name string, explicit bool, w io.Writer) string {
	if name == "" {
		return ""
	}
	if _, err := c.Kernel(ctx, name); err == nil {
		return name
	}
	// Only catalog names are fetched: anything else would be taken for
	// an OCI reference, and a typo should fail as "not found".
	inCatalog := false
	if cat, err := c.KernelCatalog(ctx); err == nil {
		for _, k := range cat {
			inCatalog = inCatalog || k.Name == name
		}
	}
	if !inCatalog {
		if !explicit {
			fmt.Fprintf(w, "banger: kernel %s is neither imported nor in the catalog; using the daemon's default kernel\n", name)
			return ""
		}
		return name
	}
	fmt.Fprintf(w, "banger: fetching kernel %s…\n", name)
	if k, err := c.PullKernel(ctx, api.KernelPullRequest{Name: name}, nil); err == nil {
		return k.Name
	} else if !explicit {
		fmt.Fprintf(w, "banger: kernel %s: %v; using the daemon's default kernel\n", name, err)
		return ""
	}
	return name
}

// copyWorkspace copies the git repository at path into the guest at
// WorkspaceDir: the tracked files (and, when asked, untracked ones that
// are not ignored) as they are on disk, and the repository's .git, so
// git status and diff work inside. The commit it was at is kept in
// .git/banger-base for `workspace export`.
func (a *app) copyWorkspace(ctx context.Context, c *client.Client, vm, path string, untracked bool) (string, error) {
	r := system.Runner{}
	top, err := r.Run(ctx, "git", "-C", path, "rev-parse", "--show-toplevel")
	if err != nil {
		return "", fmt.Errorf("%s is not inside a git repository (vm run PATH copies a repository): %w", path, err)
	}
	root := strings.TrimSpace(string(top))
	head, err := r.Run(ctx, "git", "-C", root, "rev-parse", "HEAD")
	if err != nil {
		return "", fmt.Errorf("%s has no commit yet: commit once, so changes in the VM can be exported against it", root)
	}
	args := []string{"-C", root, "ls-files", "-z", "--cached"}
	if untracked {
		args = append(args, "--others", "--exclude-standard")
	}
	out, err := r.Run(ctx, "git", args...)
	if err != nil {
		return "", err
	}
	files := strings.Split(strings.TrimRight(string(out), "\x00"), "\x00")
	s, err := c.Agent(ctx, vm)
	if err != nil {
		return "", err
	}
	defer s.Close()
	st, err := s.Open(ctx, vsockagent.Request{Op: "put", Path: WorkspaceDir})
	if err != nil {
		return "", err
	}
	werr := writeWorkspace(st, root, files, strings.TrimSpace(string(head)))
	st.CloseWrite()
	if err := finish(ctx, st, werr); err != nil {
		return "", fmt.Errorf("copying %s into %s: %w", root, vm, err)
	}
	return WorkspaceDir, nil
}

// writeWorkspace writes the tar of a workspace: each file under
// "repo/", then the whole .git, then the base commit.
func writeWorkspace(w io.Writer, root string, files []string, base string) error {
	tw := tar.NewWriter(w)
	add := func(rel string) error {
		p := filepath.Join(root, rel)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted in the working tree: so it is in the copy
		}
		if err != nil {
			return err
		}
		// The user's files become root's in the guest.
		return vsockagent.AddTarEntry(tw, p, "repo/"+filepath.ToSlash(rel), fi, true)
	}
	// Parent directories first, so the guest makes them with their modes.
	dirs := map[string]bool{}
	if err := tw.WriteHeader(&tar.Header{Name: "repo/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Now()}); err != nil {
		return err
	}
	for _, f := range files {
		if f == "" {
			continue
		}
		for d := filepath.Dir(f); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range sortedByDepth(dirs) {
		if err := add(d); err != nil {
			return err
		}
	}
	for _, f := range files {
		if f != "" {
			if err := add(f); err != nil {
				return err
			}
		}
	}
	err := filepath.WalkDir(filepath.Join(root, ".git"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		return add(rel)
	})
	if err != nil {
		return err
	}
	b := []byte(base + "\n")
	if err := tw.WriteHeader(&tar.Header{Name: "repo/.git/banger-base", Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
		return err
	}
	if _, err := tw.Write(b); err != nil {
		return err
	}
	return tw.Close()
}

func sortedByDepth(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	// Shallow first: a directory's parent is always shallower.
	sort.Slice(out, func(i, j int) bool {
		di, dj := strings.Count(out[i], "/"), strings.Count(out[j], "/")
		return di < dj || di == dj && out[i] < out[j]
	})
	return out
}

func newVMWorkspaceCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "workspace", Short: "Work with a repository copied in by `banger vm run PATH`"}
	var out string
	export := &cobra.Command{
		Use:   "export VM",
		Short: "Print the guest's changes to " + WorkspaceDir + " as a patch against the commit that was copied (git apply it)",
		Args:  argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			if out != "" {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			// A scratch index: the guest's own index and staging stay as
			// they are.
			script := `cd ` + WorkspaceDir + ` || exit 3
base=$(cat .git/banger-base) || { echo "no workspace copied by banger vm run here" >&2; exit 3; }
GIT_INDEX_FILE=$(mktemp) || exit 1
export GIT_INDEX_FILE
cp .git/index "$GIT_INDEX_FILE" 2>/dev/null
git add -A && git diff --cached --binary "$base"
rc=$?
rm -f "$GIT_INDEX_FILE"
exit $rc`
			cmd.SetOut(w)
			return a.runInVM(cmd, args[0], vsockagent.Request{Op: "exec", Argv: []string{"/bin/sh", "-c", script}}, false)
		},
	}
	export.Flags().StringVarP(&out, "output", "o", "", "write the patch to this file")
	cmd.AddCommand(export)
	return cmd
}
