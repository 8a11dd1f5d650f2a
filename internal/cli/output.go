package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"banger/client"
)

// outputFlags are --json and -q, which list-like commands share.
type outputFlags struct {
	asJSON bool
	quiet  bool
}

func (o *outputFlags) bind(cmd *cobra.Command, quietHelp string) {
	cmd.Flags().BoolVar(&o.asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&o.quiet, "quiet", "q", false, quietHelp)
}

func (o *outputFlags) check() error {
	if o.asJSON && o.quiet {
		return errors.New("--json and --quiet do not go together: pick one")
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 3, ' ', 0) }

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanAgo(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return plural(int(d.Minutes()), "minute") + " ago"
	case d < 48*time.Hour:
		return plural(int(d.Hours()), "hour") + " ago"
	}
	return plural(int(d.Hours()/24), "day") + " ago"
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

func shortDigest(d string) string {
	if len(d) > 7+12 {
		return d[7 : 7+12]
	}
	return d
}

// newRmCommand is `rm NAME...` for one kind of object: it removes each,
// prints the names it removed, and reports every failure.
func newRmCommand(a *app, short string, remove func(context.Context, *client.Client, string) error) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   short,
		Args:    argsError(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			var errs []error
			for _, n := range args {
				if err := remove(cmd.Context(), c, n); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), n)
			}
			return errors.Join(errs...)
		},
	}
}

// listSpec describes `list` for one kind of object.
type listSpec[T any] struct {
	short string
	fetch func(*client.Client, context.Context) ([]T, error)
	name  func(T) string // for -q
	head  string         // table header, tab-separated
	row   func(T) string // one table row, tab-separated
	empty string         // hint on stderr when there are none
	// owner, when set, is the OWNER column root sees (everyone's
	// things are in root's lists; a user's are all their own).
	owner func(T) string
}

// newListCommand is `list` (alias ls) with --json, -q and a table.
func newListCommand[T any](a *app, spec listSpec[T]) *cobra.Command {
	var o outputFlags
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   spec.short,
		Args:    argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			items, err := spec.fetch(c, cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case o.asJSON:
				if items == nil {
					items = []T{}
				}
				return printJSON(out, items)
			case o.quiet:
				for _, it := range items {
					fmt.Fprintln(out, spec.name(it))
				}
				return nil
			}
			if len(items) == 0 {
				// Nothing to list: the hint alone (on stderr), not an
				// empty table whose header would run into it wherever
				// the two streams are shown together.
				fmt.Fprintln(cmd.ErrOrStderr(), spec.empty)
				return nil
			}
			tw := newTable(out)
			withOwner := spec.owner != nil && os.Geteuid() == 0
			if withOwner {
				fmt.Fprintln(tw, "OWNER\t"+spec.head)
			} else {
				fmt.Fprintln(tw, spec.head)
			}
			for _, it := range items {
				if withOwner {
					fmt.Fprintln(tw, spec.owner(it)+"\t"+spec.row(it))
				} else {
					fmt.Fprintln(tw, spec.row(it))
				}
			}
			return tw.Flush()
		},
	}
	o.bind(cmd, "print only names")
	return cmd
}
