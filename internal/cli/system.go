package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"banger/internal/paths"
	"banger/internal/system"
)

// unitTemplate is bangerd's systemd unit. KillMode=process: VMMs live
// in the service's cgroup, and stopping or restarting bangerd must not
// take the VMs with it (bangerd adopts them when it comes back).
const unitTemplate = `[Unit]
Description=banger daemon: development sandboxes on microVMs
Documentation=https://github.com/banger/banger
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=%s
Restart=on-failure
KillMode=process
RuntimeDirectory=banger
RuntimeDirectoryPreserve=yes
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
`

const unitPath = "/etc/systemd/system/bangerd.service"

// systemDirs are the system instance's directories.
var systemDirs = []string{"/var/lib/banger", "/var/cache/banger", "/run/banger"}

func newSystemCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "system", Short: "Install or remove bangerd as a system service"}
	var prefix string
	install := &cobra.Command{
		Use:   "install",
		Short: "Write and enable bangerd's systemd unit, create the banger group and the directories",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return systemInstall(cmd.Context(), cmd.OutOrStdout(), prefix)
		},
	}
	var purge bool
	uninstall := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop and remove bangerd's unit; --purge also removes images, kernels, VMs and the group",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return systemUninstall(cmd.Context(), cmd.OutOrStdout(), prefix, purge)
		},
	}
	for _, c := range []*cobra.Command{install, uninstall} {
		c.Flags().StringVar(&prefix, "prefix", "", "write below this directory instead of / (for packaging and tests; nothing is started)")
		c.Flags().Lookup("prefix").Hidden = true
	}
	uninstall.Flags().BoolVar(&purge, "purge", false, "also delete /var/lib/banger, /var/cache/banger and the banger group")
	cmd.AddCommand(install, uninstall)
	return cmd
}

// systemdRunning reports whether systemd is the init system here.
func systemdRunning(prefix string) bool {
	if prefix != "" {
		return false
	}
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}

func systemInstall(ctx context.Context, out io.Writer, prefix string) error {
	if os.Geteuid() != 0 {
		return errors.New("system install needs root: sudo banger system install")
	}
	bangerd, err := paths.CompanionBinaryPath("bangerd")
	if err != nil {
		return err
	}
	r := system.Runner{}
	gargs := []string{"--system", "-f", "banger"}
	if prefix != "" {
		gargs = append([]string{"-P", prefix}, gargs...)
	}
	if _, err := r.Run(ctx, "groupadd", gargs...); err != nil {
		return fmt.Errorf("creating group banger: %w", err)
	}
	for _, d := range systemDirs {
		if err := os.MkdirAll(filepath.Join(prefix, d), 0o755); err != nil {
			return err
		}
	}
	unit := filepath.Join(prefix, unitPath)
	if err := os.MkdirAll(filepath.Dir(unit), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(unit, []byte(fmt.Sprintf(unitTemplate, bangerd)), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s (ExecStart=%s), group banger, %s\n", unit, bangerd, strings.Join(systemDirs, ", "))
	if !systemdRunning(prefix) {
		fmt.Fprintln(out, "systemd is not running here: start bangerd yourself (as root: `bangerd &`)")
		return nil
	}
	for _, args := range [][]string{{"daemon-reload"}, {"enable", "--now", "bangerd.service"}} {
		if _, err := r.Run(ctx, "systemctl", args...); err != nil {
			return fmt.Errorf("systemctl %s: %w", strings.Join(args, " "), err)
		}
	}
	fmt.Fprintln(out, "bangerd is enabled and running; add users to the banger group to let them use it: sudo usermod -aG banger USER")
	return nil
}

func systemUninstall(ctx context.Context, out io.Writer, prefix string, purge bool) error {
	if os.Geteuid() != 0 {
		return errors.New("system uninstall needs root: sudo banger system uninstall")
	}
	r := system.Runner{}
	if systemdRunning(prefix) {
		r.Run(ctx, "systemctl", "disable", "--now", "bangerd.service")
	}
	unit := filepath.Join(prefix, unitPath)
	if err := os.Remove(unit); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if systemdRunning(prefix) {
		r.Run(ctx, "systemctl", "daemon-reload")
	}
	fmt.Fprintf(out, "removed %s\n", unit)
	if !purge {
		fmt.Fprintln(out, "images, kernels and VMs stay in /var/lib/banger (--purge deletes them)")
		return nil
	}
	for _, d := range systemDirs {
		if err := os.RemoveAll(filepath.Join(prefix, d)); err != nil {
			return err
		}
	}
	gargs := []string{"banger"}
	if prefix != "" {
		gargs = append([]string{"-P", prefix}, gargs...)
	}
	if _, err := r.Run(ctx, "groupdel", gargs...); err != nil {
		fmt.Fprintf(out, "group banger: %v\n", err)
	}
	fmt.Fprintf(out, "purged %s and the banger group\n", strings.Join(systemDirs, ", "))
	return nil
}
