package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"banger/client"
	"banger/internal/api"
)

func newKernelCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "kernel", Aliases: []string{"kernels"}, Short: "Import and manage guest kernels"}
	cmd.AddCommand(newKernelImportCommand(a), newKernelPullCommand(a), newKernelListCommand(a), newKernelShowCommand(a),
		newKernelRmCommand(a), newKernelCatalogCommand(a), newKernelDefaultCommand(a))
	return cmd
}

func newKernelImportCommand(a *app) *cobra.Command {
	var from string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "import NAME --from PATH",
		Short: "Import a kernel: a vmlinux, a bzImage/vmlinuz, a linux-image .deb or /boot/vmlinuz-VERSION",
		Long: `Import a kernel for VMs. PATH is an uncompressed vmlinux, a bzImage/vmlinuz
(the vmlinux is extracted), a Debian linux-image package (read, not
installed) or an installed kernel /boot/vmlinuz-VERSION (its modules come
from /lib/modules/VERSION). When the kernel keeps its virtio, vsock,
overlay or ext4 drivers in modules, banger packs them with their
dependencies into a small initramfs with the guest agent as /init.`,
		Example: "  banger kernel import cloud --from linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb\n  banger kernel import host --from /boot/vmlinuz-$(uname -r)",
		Args:    argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" {
				return fmt.Errorf("--from PATH is required\nSee '%s --help'", cmd.CommandPath())
			}
			abs, err := filepath.Abs(from)
			if err != nil {
				return err
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			start := time.Now()
			k, err := c.ImportKernel(cmd.Context(), api.KernelImportRequest{Name: args[0], From: abs})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%d modules\t%s\n", k.Name, k.Version, len(k.Modules), time.Since(start).Round(10*time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "kernel file to import")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newKernelPullCommand(a *app) *cobra.Command {
	var as string
	var o outputFlags
	cmd := &cobra.Command{
		Use:     "pull NAME",
		Short:   "Download a kernel from the catalog (`banger kernel catalog`) and import it",
		Example: "  banger kernel pull debian-12-cloud",
		Args:    argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			var onEvent func(api.Event)
			tty := isTerminal(cmd.ErrOrStderr())
			switch {
			case o.asJSON:
				enc := json.NewEncoder(cmd.OutOrStdout())
				onEvent = func(ev api.Event) { enc.Encode(ev) }
			case !o.quiet:
				stage := ""
				onEvent = func(ev api.Event) {
					if ev.Type == api.EventResult && ev.Message != "" {
						fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", args[0], ev.Message)
					}
					if ev.Type != api.EventProgress {
						return
					}
					if tty && ev.Stage == "download" && !ev.Cached {
						fmt.Fprintf(cmd.ErrOrStderr(), "\r\033[K%s: downloading %s / %s", args[0], humanBytes(ev.Current), humanBytes(ev.Total))
					} else if ev.Stage != stage || ev.Cached {
						if tty {
							fmt.Fprint(cmd.ErrOrStderr(), "\r\033[K")
						}
						line := ev.Stage
						if ev.Cached {
							line += " (cached, not downloaded again)"
						} else if ev.Message != "" && ev.Stage == "resolve" {
							line += " " + ev.Message
						}
						fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", args[0], line)
					}
					stage = ev.Stage
				}
			}
			k, err := c.PullKernel(cmd.Context(), api.KernelPullRequest{Name: args[0], As: as}, onEvent)
			if err != nil {
				if o.asJSON {
					return &exitError{code: 1}
				}
				return err
			}
			switch {
			case o.asJSON:
			case o.quiet:
				fmt.Fprintln(cmd.OutOrStdout(), k.Name)
			default:
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%d modules\n", k.Name, k.Version, len(k.Modules))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&as, "as", "", "name to store the kernel under (default: the catalog name)")
	o.bind(cmd, "print only the kernel name")
	return cmd
}

func newKernelListCommand(a *app) *cobra.Command {
	return newListCommand(a, listSpec[api.Kernel]{
		short: "List kernels, newest first",
		fetch: (*client.Client).Kernels,
		name:  func(k api.Kernel) string { return k.Name },
		head:  "NAME\tVERSION\tMODULES\tSOURCE\tCREATED",
		row: func(k api.Kernel) string {
			return fmt.Sprintf("%s\t%s\t%d\t%s\t%s", k.Name, k.Version, len(k.Modules), k.Source, humanAgo(k.CreatedAt))
		},
		empty: "no kernels yet: `banger kernel pull debian-12-cloud` or `banger kernel import NAME --from FILE`",
	})
}

func printKernel(cmd *cobra.Command, k *api.Kernel, asJSON bool) error {
	if asJSON {
		return printJSON(cmd.OutOrStdout(), k)
	}
	tw := newTable(cmd.OutOrStdout())
	fmt.Fprintf(tw, "name:\t%s\n", k.Name)
	fmt.Fprintf(tw, "version:\t%s\n", k.Version)
	fmt.Fprintf(tw, "vmlinux:\t%s\n", k.Vmlinux)
	initrd := k.Initrd
	if initrd == "" {
		initrd = "(none: drivers built in)"
	}
	fmt.Fprintf(tw, "initrd:\t%s\n", initrd)
	fmt.Fprintf(tw, "modules:\t%s\n", strings.Join(k.Modules, " "))
	fmt.Fprintf(tw, "source:\t%s\n", k.Source)
	fmt.Fprintf(tw, "created:\t%s (%s)\n", k.CreatedAt.Local().Format(time.RFC3339), humanAgo(k.CreatedAt))
	return tw.Flush()
}

func newKernelShowCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one kernel",
		Args:  argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			k, err := c.Kernel(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printKernel(cmd, k, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newKernelDefaultCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "default",
		Short: "Show the kernel new VMs get (importing the host's newest installed kernel on first use)",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			k, err := c.DefaultKernel(cmd.Context())
			if err != nil {
				return err
			}
			return printKernel(cmd, k, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newKernelRmCommand(a *app) *cobra.Command {
	return newRmCommand(a, "Remove kernels", func(ctx context.Context, c *client.Client, name string) error {
		_, err := c.RemoveKernel(ctx, name)
		return err
	})
}

func newKernelCatalogCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "List the kernels `kernel pull` can download",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			entries, err := c.KernelCatalog(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), entries)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tSIZE\tDESCRIPTION")
			for _, e := range entries {
				size := "-" // resolved from the archive at pull time
				if e.Size > 0 {
					size = humanBytes(e.Size)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Name, size, e.Description)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
