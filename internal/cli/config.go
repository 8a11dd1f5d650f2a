package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newConfigCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Show banger's configuration"}
	var asJSON bool
	show := &cobra.Command{
		Use:   "show",
		Short: "Print every effective setting and where it came from (default, FILE:LINE, flag, variable)",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			cfg, err := c.Config(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), cfg)
			}
			if cfg.Path == "" {
				fmt.Fprintln(cmd.OutOrStdout(), "# no config file: defaults (see docs/config.md)")
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "# %s\n", cfg.Path)
			}
			tw := newTable(cmd.OutOrStdout())
			for _, s := range cfg.Settings {
				fmt.Fprintf(tw, "%s = %q\t# %s\n", s.Key, s.Value, s.Source)
			}
			return tw.Flush()
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(show)
	return cmd
}
