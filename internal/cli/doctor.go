package cli

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/version"
)

func newDoctorCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host and banger: PASS, WARN or FAIL for each thing it needs, with a fix",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var checks []api.Check
			add := func(name, status, detail, fix string) {
				checks = append(checks, api.Check{Name: name, Status: status, Detail: detail, Fix: fix})
			}
			c, err := a.client(ctx)
			if err == nil {
				var st *api.DaemonStatus
				if st, err = c.Status(ctx); err == nil {
					add("daemon", api.Pass, fmt.Sprintf("bangerd %s (pid %d) on %s", st.Version, st.PID, st.Socket), "")
					if st.Version != version.Version || st.Commit != version.Commit {
						add("versions", api.Warn, fmt.Sprintf("banger %s (%s), bangerd %s (%s)", version.Version, version.Commit, st.Version, st.Commit), "restart bangerd so both run the installed version: `banger daemon stop`")
					} else {
						add("versions", api.Pass, "banger and bangerd are both "+version.Version+" ("+version.Commit+")", "")
					}
					var more []api.Check
					if more, err = c.Doctor(ctx); err == nil {
						checks = append(checks, more...)
					}
					a.checkHostResolution(ctx, add)
				}
			}
			if err != nil {
				add("daemon", api.Fail, err.Error(), "start it: `sudo systemctl start bangerd` (after `sudo banger system install`), or set BANGER_HOME for a per-user instance")
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), checks); err != nil {
					return err
				}
			} else {
				for _, ch := range checks {
					fmt.Fprintf(cmd.OutOrStdout(), "%-4s  %-15s %s\n", ch.Status, ch.Name, ch.Detail)
					if ch.Fix != "" && ch.Status != api.Pass {
						fmt.Fprintf(cmd.OutOrStdout(), "      %-15s fix: %s\n", "", ch.Fix)
					}
				}
			}
			for _, ch := range checks {
				if ch.Status == api.Fail {
					return &exitError{code: 1}
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// checkHostResolution resolves a running VM's NAME.vm as this host does.
func (a *app) checkHostResolution(ctx context.Context, add func(name, status, detail, fix string)) {
	c, err := a.client(ctx)
	if err != nil {
		return
	}
	vms, err := c.VMs(ctx)
	if err != nil {
		return
	}
	for _, v := range vms {
		if v.State != "running" || v.IP == "" {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		addrs, err := net.DefaultResolver.LookupHost(rctx, v.Name+".vm")
		cancel()
		if err == nil && len(addrs) > 0 && addrs[0] == v.IP {
			add(".vm names", api.Pass, v.Name+".vm resolves to "+v.IP+" on this host", "")
		} else {
			add(".vm names", api.Warn, v.Name+".vm does not resolve on this host (VMs resolve each other)", "with systemd-resolved bangerd sets it up; otherwise point .vm at the bridge address, e.g. dnsmasq `server=/vm/GATEWAY`, or use `banger ssh-config --install` for ssh")
		}
		return
	}
	add(".vm names", api.Pass, "no running VM to resolve yet", "")
}
