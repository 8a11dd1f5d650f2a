package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"banger/client"
	"banger/internal/api"
	"banger/internal/config"
)

func newSnapshotCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Aliases: []string{"snapshots"}, Short: "List and remove VM snapshots and warm templates"}
	cmd.AddCommand(
		newListCommand(a, listSpec[api.Snapshot]{
			short: "List snapshots and warm templates",
			fetch: (*client.Client).Snapshots,
			name:  func(s api.Snapshot) string { return s.Name },
			head:  "NAME\tKIND\tSTATE\tVM\tIMAGE\tVMM\tMEMORY\tSIZE\tIN USE\tCREATED",
			row: func(s api.Snapshot) string {
				return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s %s\t%s\t%s\t%d\t%s", s.Name, s.Kind, s.State, s.SourceVM, s.Image, s.VMM, s.VMMVersion,
					humanBytes(int64(s.MemoryMiB)<<20), humanBytes(s.SizeBytes), s.InUse, humanAgo(s.CreatedAt))
			},
			empty: "no snapshots yet: `banger vm snapshot VM`; a cold `banger vm run` leaves a warm template",
			owner: func(s api.Snapshot) string { return orDash(s.OwnerName) },
		}),
		newSnapshotShowCommand(a),
		newSnapshotRmCommand(a),
	)
	return cmd
}

// newSnapshotRmCommand removes snapshots; for one that running VMs
// still map, it says where the space goes.
func newSnapshotRmCommand(a *app) *cobra.Command {
	var rm *cobra.Command
	rm = newRmCommand(a, "Remove snapshots or templates (VMs restored from them keep running)", func(ctx context.Context, c *client.Client, name string) error {
		s, err := c.RemoveSnapshot(ctx, name)
		if err == nil && s.InUse > 0 {
			fmt.Fprintf(rm.ErrOrStderr(), "%s: removed; %s still map its memory file (copy-on-write): its %s on disk come back when they stop\n",
				name, usersText(*s), humanBytes(memoryFileBytes(*s)))
		}
		return err
	})
	rm.Long = "Remove snapshots or templates. VMs restored from one keep running: their\n" +
		"memory maps its memory file copy-on-write, which the kernel keeps until\n" +
		"the last of them stops; its disk space comes back then."
	return rm
}

// usersText is "2 running VMs (f-1, f-2)".
func usersText(s api.Snapshot) string {
	n := fmt.Sprintf("%d running VM", s.InUse)
	if s.InUse != 1 {
		n += "s"
	}
	if len(s.UsedBy) > 0 {
		n += " (" + strings.Join(s.UsedBy, ", ") + ")"
	}
	return n
}

func memoryFileBytes(s api.Snapshot) int64 {
	for _, f := range s.Files {
		if f.Role == "memory" {
			return f.DiskBytes
		}
	}
	return 0
}

func newSnapshotShowCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one snapshot or template",
		Args:  argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := c.Snapshot(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), s)
			}
			tw := newTable(cmd.OutOrStdout())
			rows := [][2]string{
				{"name", s.Name}, {"kind", s.Kind}, {"state", s.State}, {"source vm", s.SourceVM},
				{"image", s.Image + " (" + shortDigest(s.ImageDigest) + ")"}, {"kernel", s.Kernel}, {"vmm", s.VMM + " " + s.VMMVersion},
				{"vcpu", strconv.Itoa(s.VCPU)}, {"memory", humanBytes(int64(s.MemoryMiB) << 20)}, {"disk", humanBytes(s.DiskBytes)},
				{"network", s.Network}, {"size on disk", humanBytes(s.SizeBytes)}, {"guest frozen", (time.Duration(s.PausedMs) * time.Millisecond).String()},
				{"in use", inUseText(*s)},
			}
			for _, f := range s.Files {
				rows = append(rows, [2]string{f.Role + " file", fmt.Sprintf("%s: %s, %s on disk", f.Name, humanBytes(f.SizeBytes), humanBytes(f.DiskBytes))})
			}
			rows = append(rows, [2]string{"dir", s.Dir}, [2]string{"created", s.CreatedAt.Local().Format(time.RFC3339)})
			for _, kv := range rows {
				fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVMSnapshotCommand(a *app) *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "snapshot NAME",
		Short: "Snapshot a running VM: memory, devices and disk at one instant (it runs on)",
		Example: "  banger vm snapshot dev --name dev-clean\n" +
			"  banger vm fork dev-clean -n 3            # three VMs restored from it",
		Args: argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			s, err := c.SnapshotVM(cmd.Context(), args[0], name)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), s)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s on disk\tguest frozen %s\n", s.Name, humanBytes(s.SizeBytes), time.Duration(s.PausedMs)*time.Millisecond)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "snapshot name (default: VM-YYYYMMDD-HHMMSS)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVMForkCommand(a *app) *cobra.Command {
	var req api.ForkRequest
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "fork VM|SNAPSHOT",
		Short: "New VMs restored from a snapshot, or from a running VM (snapshotted first)",
		Long: `Fork makes new running VMs from a snapshot's memory and disk: what the
source had written and was running is in every fork; what a fork writes is
in no other. Each fork gets its own name, MAC, address, SSH host key,
clock and randomness before it counts as ready.`,
		Example: "  banger vm fork dev --name try -n 2      # try-1 and try-2, from dev as it is now\n" +
			"  banger vm fork dev-clean                # one VM from a snapshot",
		Args: argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			req.Source = args[0]
			start := time.Now()
			vms, err := c.ForkVM(cmd.Context(), req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), vms)
			}
			for _, v := range vms {
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s\n", v.Name, v.State, orDash(v.IP))
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%d VM(s) forked in %s\n", len(vms), time.Since(start).Round(10*time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Name, "name", "", "name of the new VM; with -n, NAME-1 … NAME-N (default: generated)")
	cmd.Flags().IntVarP(&req.Count, "count", "n", 1, "how many VMs")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newImageWarmCommand(a *app) *cobra.Command {
	var req api.WarmRequest
	var memory, disk string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "warm IMAGE",
		Short: "Make the warm template of an image now, so even the first `vm run` of it restores instead of booting",
		Example: "  banger image warm debian\n" +
			"  banger image warm alpine --vcpu 1 --memory 512M --network none",
		Args: argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			mem, err := config.ParseSize(memory)
			if err != nil {
				return err
			}
			req.MemoryMiB = int(mem >> 20)
			if req.DiskBytes, err = config.ParseSize(disk); err != nil {
				return err
			}
			req.Image = args[0]
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			start := time.Now()
			s, err := c.WarmImage(cmd.Context(), req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), s)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s on disk\t%s\n", s.Name, humanBytes(s.SizeBytes), time.Since(start).Round(10*time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Kernel, "kernel", "", "kernel name (default: config default_kernel)")
	f.StringVar(&req.VMM, "vmm", "", "qemu, firecracker or auto (default: config vmm)")
	f.IntVar(&req.VCPU, "vcpu", 0, "virtual CPUs (default: config vcpu)")
	f.StringVar(&memory, "memory", "", "memory (default: config memory)")
	f.StringVar(&disk, "disk-size", "", "writable disk size (default: config disk_size)")
	f.StringVar(&req.Network, "network", "", "nat, shared or none (default: config network)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// inUseText says which running VMs map a snapshot's memory.
func inUseText(s api.Snapshot) string {
	if s.InUse == 0 {
		return "no running VM maps its memory"
	}
	return usersText(s) + " map its memory copy-on-write"
}
