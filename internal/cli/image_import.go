package cli

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"banger/client"
	"banger/internal/api"
)

// runImageOp runs an operation that ends in an image (pull, import,
// build) with the output the flags ask for: progress on stderr, then one
// line; NDJSON events with --json; the name alone with -q.
func runImageOp(cmd *cobra.Command, o outputFlags, label string, size int64, op func(onEvent func(api.Event)) (*api.Image, error)) error {
	start := time.Now()
	var onEvent func(api.Event)
	var prog *pullProgress
	switch {
	case o.asJSON:
		enc := json.NewEncoder(cmd.OutOrStdout())
		onEvent = func(ev api.Event) { enc.Encode(ev) }
	case !o.quiet:
		prog = newPullProgress(cmd.ErrOrStderr(), label, isTerminal(cmd.ErrOrStderr()))
		prog.size = size
		onEvent = prog.event
	}
	img, err := op(onEvent)
	if prog != nil {
		prog.finish()
	}
	if err != nil {
		if o.asJSON {
			return &exitError{code: 1}
		}
		return err
	}
	switch {
	case o.asJSON:
	case o.quiet:
		fmt.Fprintln(cmd.OutOrStdout(), img.Name)
	default:
		fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s on disk\t%s\n", img.Name, shortDigest(img.Digest), humanBytes(img.DiskBytes), time.Since(start).Round(10*time.Millisecond))
	}
	return nil
}

type importOptions struct {
	name, ref  string
	entrypoint string
	cmd        string
	env        []string
	workdir    string
	user       string
	outputFlags
}

func newImageImportCommand(a *app) *cobra.Command {
	var o importOptions
	cmd := &cobra.Command{
		Use:   "import SRC",
		Short: "Build an image from a docker save archive, an OCI layout or a root file system tarball",
		Long: `Build a bootable image from a local source, told apart by its content:
  - a docker save archive (with several images in it, --ref picks one);
  - an OCI image layout: a directory (oci-layout, index.json, blobs/) or a tar
    of one, as skopeo, buildah and docker buildx write them; the linux/amd64
    image of its index is used;
  - a root file system tarball (debootstrap, mmdebstrap, Alpine's minirootfs,
    distributions' rootfs.tar), which has no image config: its command is
    /bin/bash, else /bin/sh, unless --cmd says otherwise.
Each may be uncompressed or gzip, xz, zstd or bzip2. SRC - reads standard
input. The file is read by this command and streamed to bangerd, so a file
only you can read works. --cmd and --entrypoint take a JSON array
('["/bin/sh","-c","echo hi"]') or words split at spaces.`,
		Example: `  docker save alpine:3.20 | banger image import - --name alpine
  banger image import ./app.oci --name app
  mmdebstrap bookworm - | banger image import - --name deb
  banger image import alpine-minirootfs-3.20.3-x86_64.tar.gz --cmd /bin/sh`,
		Args: argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			src := args[0]
			opts := api.ImportOptions{Name: o.name, Ref: o.ref, Source: src}
			var err error
			if opts.Config.Entrypoint, err = parseCommandFlag("--entrypoint", o.entrypoint); err != nil {
				return err
			}
			if opts.Config.Cmd, err = parseCommandFlag("--cmd", o.cmd); err != nil {
				return err
			}
			opts.Config.Env, opts.Config.WorkingDir, opts.Config.User = o.env, o.workdir, o.user
			if opts.Name == "" {
				if opts.Name = importName(src, o.ref); opts.Name == "" {
					return errors.New("importing from standard input needs a name: add --name NAME")
				}
			}
			if src != "-" {
				if abs, err := filepath.Abs(src); err == nil {
					opts.Source = abs
				}
			}
			body, size, err := openImportSource(src, cmd.InOrStdin())
			if err != nil {
				return err
			}
			defer body.Close()
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			return runImageOp(cmd, o.outputFlags, opts.Name, size, func(onEvent func(api.Event)) (*api.Image, error) {
				return c.ImportImage(cmd.Context(), opts, body, onEvent)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "name to store the image under (default: --ref's short form, else the file name)")
	f.StringVar(&o.ref, "ref", "", "the image to import from an archive or layout holding several (a tag it lists)")
	f.StringVar(&o.entrypoint, "entrypoint", "", "set the image's entrypoint (clears its cmd unless --cmd is given)")
	f.StringVar(&o.cmd, "cmd", "", "set the image's command")
	f.StringArrayVarP(&o.env, "env", "e", nil, "set an environment variable, KEY=VALUE (repeatable)")
	f.StringVarP(&o.workdir, "workdir", "w", "", "set the working directory (absolute)")
	f.StringVarP(&o.user, "user", "u", "", "set the user commands run as (NAME, UID or UID:GID)")
	o.bind(cmd, "print only the image name")
	f.Lookup("json").Usage = "print progress and the result as JSON events, one per line"
	return cmd
}

// parseCommandFlag reads --cmd or --entrypoint: a JSON array, or words.
// nil means the flag was not given.
func parseCommandFlag(flag, v string) ([]string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	if strings.HasPrefix(v, "[") {
		var out []string
		if err := json.Unmarshal([]byte(v), &out); err != nil || len(out) == 0 {
			return nil, fmt.Errorf("%s %s: want a JSON array of strings such as [\"/bin/sh\",\"-c\",\"echo hi\"], or plain words", flag, v)
		}
		return out, nil
	}
	return strings.Fields(v), nil
}

var (
	archiveSuffixRE = regexp.MustCompile(`(\.(tar|tgz|tbz2?|txz|tzst|gz|xz|zst|zstd|bz2|oci|docker|rootfs))+$`)
	nameJunkRE      = regexp.MustCompile(`[^a-z0-9._-]+`)
)

// importName is the default name of an import: the short form of ref,
// else the source's file name without its archive suffixes ("" for
// standard input).
func importName(src, ref string) string {
	if ref != "" {
		if r := normalizeShort(ref); r != "" {
			return r
		}
	}
	if src == "-" {
		return ""
	}
	base := strings.ToLower(filepath.Base(filepath.Clean(src)))
	base = archiveSuffixRE.ReplaceAllString(base, "")
	base = strings.Trim(nameJunkRE.ReplaceAllString(base, "-"), "-._")
	return base
}

// normalizeShort is the familiar form of a reference: "alpine:3.20" for
// docker.io/library/alpine:3.20.
func normalizeShort(ref string) string {
	s := strings.TrimPrefix(strings.TrimPrefix(ref, "docker.io/"), "index.docker.io/")
	return strings.ToLower(strings.TrimPrefix(s, "library/"))
}

// openImportSource opens what `image import` sends: standard input, a
// file, or a directory (an OCI layout), which is tarred on the fly. size
// is the number of bytes to send when known, else 0.
func openImportSource(src string, stdin io.Reader) (io.ReadCloser, int64, error) {
	if src == "-" {
		return io.NopCloser(stdin), 0, nil
	}
	fi, err := os.Stat(src)
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read %s: %w", src, errors.Unwrap(err))
	}
	if !fi.IsDir() {
		f, err := os.Open(src)
		if err != nil {
			return nil, 0, fmt.Errorf("cannot read %s: %w", src, errors.Unwrap(err))
		}
		return f, fi.Size(), nil
	}
	for _, must := range []string{"oci-layout", "index.json"} {
		if _, err := os.Stat(filepath.Join(src, must)); err != nil {
			return nil, 0, fmt.Errorf("%s is a directory but no OCI image layout (it has no %s): import a tarball, a docker save archive or an OCI layout", src, must)
		}
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.AddFS(os.DirFS(src))
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr, 0, nil
}

func newImageBuildCommand(a *app) *cobra.Command {
	var o struct {
		name    string
		include []string
		outputFlags
	}
	cmd := &cobra.Command{
		Use:   "build DISTRIBUTION[:SUITE]",
		Short: "Build an image from the Debian or Ubuntu package archive (mmdebstrap)",
		Long: `Build an image from a distribution's package archive with mmdebstrap on
bangerd's host, without any container registry: debian (bookworm unless a
suite is given) or ubuntu (noble). Debian builds use the host's apt mirrors
when the host is Debian. The image holds a minimal system plus what a
development sandbox needs (ca-certificates, curl, git, iproute2, less,
openssh-client, procps, …); --include adds packages.`,
		Example: "  banger image build debian:bookworm\n  banger image build debian:trixie --name trixie --include build-essential,python3",
		Args:    argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			var include []string
			for _, i := range o.include {
				include = append(include, strings.Split(i, ",")...)
			}
			req := api.BuildRequest{Name: o.name, Spec: args[0], Include: include}
			return runImageOp(cmd, o.outputFlags, args[0], 0, func(onEvent func(api.Event)) (*api.Image, error) {
				return c.BuildImage(cmd.Context(), req, onEvent)
			})
		},
	}
	cmd.Flags().StringVar(&o.name, "name", "", "name to store the image under (default: DISTRIBUTION:SUITE)")
	cmd.Flags().StringArrayVar(&o.include, "include", nil, "more packages, comma-separated or repeated")
	o.bind(cmd, "print only the image name")
	return cmd
}

// buildRecipes are the catalog images banger can build from a package
// archive when their registry cannot be reached.
var buildRecipes = map[string]string{
	"debian": "debian:bookworm",
	"ubuntu": "ubuntu:noble",
}

// withBuildHint adds to a pull of Debian or Ubuntu that could not reach
// its registry how to build the same from the package archive.
func withBuildHint(err error, ref string) error {
	var apiErr *client.APIError
	if err == nil || !errors.As(err, &apiErr) || apiErr.Code != api.CodeUnreachable {
		return err
	}
	repo, tag, _ := strings.Cut(normalizeShort(ref), ":")
	if _, ok := buildRecipes[repo]; !ok {
		return err
	}
	spec := buildRecipes[repo]
	if tag != "" && tag != "latest" && !strings.ContainsAny(tag[:1], "0123456789") {
		spec = repo + ":" + tag // a codename: debian:trixie
	}
	return fmt.Errorf("%w; build it from the package archive instead: `banger image build %s`", err, spec)
}

// pullOrBuild pulls the image a catalog name or reference stands for,
// and for catalog names with a recipe builds it from the package archive
// instead when the registry cannot be reached, saying why on w.
func pullOrBuild(ctx context.Context, c *client.Client, ref, name string, w io.Writer, onEvent func(api.Event)) (*api.Image, error) {
	pullRef := ref
	if r, ok := imageCatalog[ref]; ok {
		pullRef = r
		if name == "" {
			name = ref
		}
	}
	img, err := c.PullImage(ctx, api.PullRequest{Ref: pullRef, Name: name, Auth: userAuth(pullRef)}, onEvent)
	spec, buildable := buildRecipes[ref]
	var apiErr *client.APIError
	if err == nil || !buildable || !errors.As(err, &apiErr) {
		return img, err
	}
	why := ""
	switch apiErr.Code {
	case api.CodeUnreachable:
		why = fmt.Sprintf("%s is unreachable", pullRef)
		if isTerminal(w) {
			fmt.Fprint(w, "\r\033[K") // the pull's status line
		}
		fmt.Fprintf(w, "banger: %s (%s); building %s from the package archive with mmdebstrap instead\n", why, apiErr.Message, spec)
	case api.CodeConflict:
		// Another command is building it already: the build request
		// joins that build (and fails as a conflict if it is something
		// else under this name).
	default:
		return nil, err
	}
	return c.BuildImage(ctx, api.BuildRequest{Name: name, Spec: spec, Why: why}, onEvent)
}
