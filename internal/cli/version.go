package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"banger/client"
	"banger/internal/version"
)

type versionInfo struct {
	Client struct {
		Version string `json:"version"`
		Commit  string `json:"commit"`
		Date    string `json:"date"`
	} `json:"client"`
	Daemon *struct {
		Version string `json:"version"`
		Commit  string `json:"commit"`
		Date    string `json:"date"`
	} `json:"daemon,omitempty"`
	DaemonError string `json:"daemon_error,omitempty"`
}

func newVersionCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the CLI's and the daemon's versions",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v versionInfo
			v.Client.Version, v.Client.Commit, v.Client.Date = version.Version, version.Commit, version.Date
			// Never start a daemon just to ask its version.
			sock, _ := a.socket()
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
			defer cancel()
			if st, err := client.New(sock).Status(ctx); err == nil {
				v.Daemon = &struct {
					Version string `json:"version"`
					Commit  string `json:"commit"`
					Date    string `json:"date"`
				}{st.Version, st.Commit, st.Date}
			} else {
				v.DaemonError = err.Error()
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "banger  %s (%s, %s)\n", v.Client.Version, v.Client.Commit, v.Client.Date)
			if v.Daemon != nil {
				fmt.Fprintf(out, "bangerd %s (%s, %s)\n", v.Daemon.Version, v.Daemon.Commit, v.Daemon.Date)
				if v.Daemon.Version != v.Client.Version || v.Daemon.Commit != v.Client.Commit {
					fmt.Fprintln(cmd.ErrOrStderr(), "warning: CLI and daemon differ: restart the daemon (`banger daemon stop`) to run the new one")
				}
			} else {
				fmt.Fprintln(out, "bangerd not running")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
