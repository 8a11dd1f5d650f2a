package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"banger/client"
	"banger/internal/api"
)

func newImageCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Aliases: []string{"images"}, Short: "Pull and manage root file system images"}
	cmd.AddCommand(newImagePullCommand(a), newImageImportCommand(a), newImageBuildCommand(a), newImageListCommand(a), newImageShowCommand(a), newImageRmCommand(a), newImageCacheCommand(a), newImageWarmCommand(a))
	return cmd
}

type pullOptions struct {
	name string
	outputFlags
}

func newImagePullCommand(a *app) *cobra.Command {
	var o pullOptions
	cmd := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an OCI image and build its bootable root file system",
		Long: `Pull an OCI image for linux/amd64 and turn it into a bootable ext4 with
banger's guest agents inside. REF is any image reference: Docker Hub short
names (alpine:3.20), other registries (ghcr.io/o/r:tag), digests (@sha256:…).
Registries on localhost are spoken to over plain HTTP. Credentials come from
your Docker configuration (~/.docker/config.json, credential helpers).`,
		Example: "  banger image pull alpine:3.20\n  banger image pull --name dev ghcr.io/acme/devbox:latest",
		Args:    argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			return runImageOp(cmd, o.outputFlags, args[0], 0, func(onEvent func(api.Event)) (*api.Image, error) {
				img, err := c.PullImage(cmd.Context(), api.PullRequest{Ref: args[0], Name: o.name, Auth: userAuth(args[0])}, onEvent)
				return img, withBuildHint(err, args[0])
			})
		},
	}
	cmd.Flags().StringVar(&o.name, "name", "", "name to store the image under (default: the reference's short form)")
	o.bind(cmd, "print only the image name")
	cmd.Flags().Lookup("json").Usage = "print progress and the result as JSON events, one per line"
	return cmd
}

// userAuth resolves the invoking user's credentials for ref's registry,
// so a daemon running as root pulls with the user's rights. Anonymous
// access sends nothing.
func userAuth(ref string) *api.RegistryAuth {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil // the daemon reports the bad reference
	}
	auth, err := authn.DefaultKeychain.Resolve(r.Context().Registry)
	if err != nil || auth == authn.Anonymous {
		return nil
	}
	cfg, err := auth.Authorization()
	if err != nil || (cfg.Username == "" && cfg.Password == "" && cfg.IdentityToken == "" && cfg.RegistryToken == "" && cfg.Auth == "") {
		return nil
	}
	// The Docker config loader has already decoded "auth" into
	// Username and Password.
	ra := &api.RegistryAuth{Username: cfg.Username, Password: cfg.Password, IdentityToken: cfg.IdentityToken, RegistryToken: cfg.RegistryToken}
	return ra
}

func newImageListCommand(a *app) *cobra.Command {
	return newListCommand(a, listSpec[api.Image]{
		short: "List images",
		fetch: (*client.Client).Images,
		name:  func(img api.Image) string { return img.Name },
		head:  "NAME\tDIGEST\tDISK\tSIZE\tLAYERS\tCREATED",
		row: func(img api.Image) string {
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%s", img.Name, shortDigest(img.Digest), humanBytes(img.DiskBytes), humanBytes(img.SizeBytes), len(img.Layers), humanAgo(img.CreatedAt))
		},
		empty: "no images yet: pull one with `banger image pull alpine:3.20`",
	})
}

func newImageShowCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one image",
		Args:  argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			img, err := c.Image(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), img)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintf(tw, "name:\t%s\n", img.Name)
			fmt.Fprintf(tw, "ref:\t%s\n", orDash(img.Ref))
			fmt.Fprintf(tw, "source:\t%s\n", img.Source)
			fmt.Fprintf(tw, "digest:\t%s\n", img.Digest)
			fmt.Fprintf(tw, "rootfs:\t%s\n", img.Rootfs)
			fmt.Fprintf(tw, "size:\t%s (%s on disk)\n", humanBytes(img.SizeBytes), humanBytes(img.DiskBytes))
			fmt.Fprintf(tw, "layers:\t%d\n", len(img.Layers))
			fmt.Fprintf(tw, "created:\t%s (%s)\n", img.CreatedAt.Local().Format(time.RFC3339), humanAgo(img.CreatedAt))
			if len(img.Config.Entrypoint) > 0 {
				fmt.Fprintf(tw, "entrypoint:\t%s\n", strings.Join(img.Config.Entrypoint, " "))
			}
			if len(img.Config.Cmd) > 0 {
				fmt.Fprintf(tw, "cmd:\t%s\n", strings.Join(img.Config.Cmd, " "))
			}
			if img.Config.WorkingDir != "" {
				fmt.Fprintf(tw, "workdir:\t%s\n", img.Config.WorkingDir)
			}
			if img.Config.User != "" {
				fmt.Fprintf(tw, "user:\t%s\n", img.Config.User)
			}
			for _, e := range img.Config.Env {
				fmt.Fprintf(tw, "env:\t%s\n", e)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newImageRmCommand(a *app) *cobra.Command {
	return newRmCommand(a, "Remove images (their cached layers stay until `image cache prune`)",
		func(ctx context.Context, c *client.Client, name string) error {
			_, err := c.RemoveImage(ctx, name)
			return err
		})
}

func newImageCacheCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "cache", Short: "Manage the layer blob cache"}
	var asJSON bool
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove cached layer blobs that no image uses",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			res, err := c.PruneCache(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d cached files, freed %s\n", res.RemovedBlobs, humanBytes(res.FreedBytes))
			return nil
		},
	}
	prune.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(prune)
	return cmd
}
