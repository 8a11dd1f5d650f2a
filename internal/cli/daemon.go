package cli

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"banger/client"
)

func newDaemonCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "daemon", Short: "Inspect and stop bangerd"}
	cmd.AddCommand(newDaemonStatusCommand(a), newDaemonStopCommand(a))
	return cmd
}

func newDaemonStatusCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether bangerd runs, and where",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintf(tw, "version:\t%s (%s)\n", st.Version, st.Commit)
			fmt.Fprintf(tw, "pid:\t%d\n", st.PID)
			fmt.Fprintf(tw, "uptime:\t%s\n", time.Since(st.StartedAt).Round(time.Second))
			fmt.Fprintf(tw, "socket:\t%s\n", st.Socket)
			fmt.Fprintf(tw, "state:\t%s\n", st.StateDir)
			fmt.Fprintf(tw, "cache:\t%s\n", st.CacheDir)
			fmt.Fprintf(tw, "log:\t%s\n", a.layout.DaemonLog())
			fmt.Fprintf(tw, "images:\t%d\n", st.Images)
			fmt.Fprintf(tw, "pulls:\t%d\n", st.Pulls)
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newDaemonStopCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "stop",
		Short: "Stop bangerd (it waits for nothing: running pulls are cancelled)",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			sock, _ := a.socket()
			c := client.New(sock)
			st, err := c.Status(cmd.Context())
			var de *client.DialError
			if errors.As(err, &de) {
				fmt.Fprintln(cmd.ErrOrStderr(), "bangerd is not running")
				return nil
			}
			if err != nil {
				return err
			}
			if err := c.StopDaemon(cmd.Context()); err != nil {
				return err
			}
			// Wait until the process is gone, not only its socket: it
			// holds its lock until its clean-up is done, and a following
			// command starts a fresh daemon.
			deadline := time.Now().Add(15 * time.Second)
			for time.Now().Before(deadline) {
				if syscall.Kill(st.PID, 0) != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "bangerd (pid %d) stopped\n", st.PID)
					return nil
				}
				time.Sleep(20 * time.Millisecond)
			}
			return fmt.Errorf("bangerd (pid %d) is still answering after 15s: kill it with `kill %d`", st.PID, st.PID)
		},
	}
}
