package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"banger/internal/version"
)

func newRootCommand(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "banger",
		Short: "Disposable Linux sandboxes on microVMs",
		Long: `banger gives you a fresh, disposable Linux machine built from any OCI image.

bangerd owns images, kernels, VMs and the network; this command asks it.
Set BANGER_HOME=DIR (or --home) for a self-contained per-user instance.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return a.init()
		},
	}
	root.PersistentFlags().StringVar(&a.home, "home", "", "instance directory (default $BANGER_HOME, else system paths)")
	root.PersistentFlags().StringVar(&a.host, "host", "", "daemon socket (default $BANGER_HOST, else the instance's socket)")
	root.PersistentFlags().BoolVar(&a.debug, "debug", false, "show more detail")
	root.AddGroup(&cobra.Group{ID: "main", Title: "Commands:"}, &cobra.Group{ID: "admin", Title: "Administration:"})
	for _, c := range []*cobra.Command{newVMCommand(a), newImageCommand(a), newKernelCommand(a), newSnapshotCommand(a), newSSHConfigCommand(a), newE2BCommand(a)} {
		c.GroupID = "main"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{newDoctorCommand(a), newDaemonCommand(a), newConfigCommand(a), newSystemCommand(a), newVersionCommand(a)} {
		c.GroupID = "admin"
		root.AddCommand(c)
	}
	root.SetHelpCommandGroupID("admin")
	root.SetCompletionCommandGroupID("admin")
	completeNames(a, root)
	root.Version = version.String()
	root.SetVersionTemplate(fmt.Sprintf("banger %s\n", version.String()))
	return root
}
