package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"banger/client"
	"banger/internal/api"
	"banger/internal/config"
)

func newVMCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Aliases: []string{"vms"}, Short: "Create and run VMs"}
	cmd.AddCommand(newVMCreateCommand(a), newVMListCommand(a), newVMShowCommand(a), newVMLogsCommand(a),
		newVMRmCommand(a), newVMPruneCommand(a), newVMExecCommand(a), newVMShellCommand(a), newVMCopyCommand(a),
		newVMPortsCommand(a), newVMForwardCommand(a), newVMSSHCommand(a), newVMSSHProxyCommand(a), newVMKnownHostsCommand(a),
		newVMRunCommand(a), newVMWorkspaceCommand(a), newVMSnapshotCommand(a), newVMForkCommand(a), newVMPolicyCommand(a))
	for _, action := range []struct{ name, short string }{
		{"start", "Start a VM and wait until it is ready"},
		{"stop", "Shut a VM down gracefully (killed after 30 s)"},
		{"restart", "Stop a VM, then start it"},
		{"kill", "Stop a VM at once"},
		{"pause", "Freeze a running VM: its VMM keeps its memory, the guest stops running"},
		{"resume", "Thaw a paused VM"},
	} {
		cmd.AddCommand(newVMActionCommand(a, action.name, action.short))
	}
	return cmd
}

func newVMCreateCommand(a *app) *cobra.Command {
	var req api.VMCreateRequest
	var spec vmSpecFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create [flags] [-- COMMAND [ARG...]]",
		Short: "Create a VM from an image and start it (unless --no-start)",
		Example: "  banger vm create --image alpine:3.20\n" +
			"  banger vm create --name dev --image debian --vcpu 4 --memory 4G --disk-size 20G --vmm qemu\n" +
			"  banger vm create --name web --image nginx -p 8080:80      # http://localhost:8080, http://web.vm\n" +
			"  banger vm create --image alpine --network none            # no network device at all\n" +
			"  banger vm create --image python -e PORT=80 -- python -m http.server 80   # the image with another command",
		Args: argsError(func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && cmd.ArgsLenAtDash() != 0 {
				return errors.New("the VM's command goes after `--` (vm create takes no other arguments)")
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := spec.finish(&req); err != nil {
				return err
			}
			if err := spec.run(&req, args); err != nil {
				return err
			}
			a.subject = req.Name
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			var onEvent func(api.Event)
			var prog *vmProgress
			if !asJSON && isTerminal(cmd.ErrOrStderr()) && !req.NoStart {
				name := req.Name
				if name == "" {
					name = "new VM from " + req.Image
				}
				prog = newVMProgress(cmd.ErrOrStderr(), name)
				onEvent = prog.event
			} else if !asJSON {
				fmt.Fprintf(cmd.ErrOrStderr(), "creating VM from %s…\n", req.Image)
			}
			start := time.Now()
			v, err := c.CreateVM(cmd.Context(), req, onEvent)
			prog.finish()
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s\t%s\n", v.Name, v.State, orDash(v.IP), time.Since(start).Round(10*time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	spec.bind(f, &req)
	f.BoolVar(&req.NoStart, "no-start", false, "create the VM without starting it")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// policyText says what a VM may reach, as vm show prints it.
func policyText(v api.VM) string {
	if v.Network == "none" {
		return "none (no network)"
	}
	if v.Policy == nil {
		return "default: the internet; not the host (but DNS), link-local or private ranges"
	}
	var parts []string
	if len(v.Policy.AllowOut) > 0 {
		parts = append(parts, "only "+strings.Join(v.Policy.AllowOut, ", "))
	} else {
		parts = append(parts, "default")
	}
	if len(v.Policy.DenyOut) > 0 {
		parts = append(parts, "denied "+strings.Join(v.Policy.DenyOut, ", "))
	}
	return strings.Join(parts, "; ")
}

// quoteArgs shows a command line as words, quoting those that need it.
func quoteArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n\"'\\$`;&|<>()*?[]{}#~") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newVMActionCommand(a *app, action, short string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   action + " NAME",
		Short: short,
		Args:  argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			a.subject = args[0]
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			var onEvent func(api.Event)
			var prog *vmProgress
			if !asJSON && isTerminal(cmd.ErrOrStderr()) && (action == "start" || action == "restart") {
				prog = newVMProgress(cmd.ErrOrStderr(), args[0])
				onEvent = prog.event
			}
			v, err := c.VMAction(cmd.Context(), args[0], action, onEvent)
			prog.finish()
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", v.Name, v.State)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVMListCommand(a *app) *cobra.Command {
	return newListCommand(a, listSpec[api.VM]{
		short: "List VMs",
		fetch: (*client.Client).VMs,
		name:  func(v api.VM) string { return v.Name },
		head:  "NAME\tSTATE\tIP\tIMAGE\tKERNEL\tVMM\tVCPU\tMEMORY\tCREATED",
		row: func(v api.VM) string {
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s", v.Name, v.State, orDash(v.IP), v.Image, v.Kernel, v.VMM, v.VCPU, humanBytes(int64(v.MemoryMiB)<<20), humanAgo(v.CreatedAt))
		},
		empty: "no VMs yet: `banger vm create --image IMAGE`",
		owner: func(v api.VM) string { return orDash(v.OwnerName) },
	})
}

func newVMShowCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one VM",
		Args:  argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			v, err := c.VM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			tw := newTable(cmd.OutOrStdout())
			for _, kv := range [][2]string{
				{"name", v.Name}, {"state", v.State}, {"image", v.Image}, {"kernel", v.Kernel}, {"vmm", v.VMM},
				{"vcpu", strconv.Itoa(v.VCPU)}, {"memory", humanBytes(int64(v.MemoryMiB) << 20)}, {"disk", humanBytes(v.DiskBytes)},
				{"network", v.Network}, {"ip", orDash(v.IP)}, {"ports", orDash(strings.Join(v.Ports, " "))},
				{"pid", strconv.Itoa(v.PID)}, {"origin", orDash(v.Origin)}, {"dir", v.Dir}, {"created", v.CreatedAt.Local().Format(time.RFC3339)},
				{"owner", fmt.Sprintf("%s (uid %d)", orDash(v.OwnerName), v.Owner)}, {"egress", policyText(*v)},
			} {
				fmt.Fprintf(tw, "%s:\t%s\n", kv[0], safeText(kv[1]))
			}
			if m := v.Memory; m != nil {
				fmt.Fprintf(tw, "host memory:\t%s\n", safeText(memoryText(m)))
				if m.CgroupLimitBytes > 0 {
					fmt.Fprintf(tw, "cgroup:\t%s of %s, %d OOM kills\n", humanBytes(m.CgroupBytes), humanBytes(m.CgroupLimitBytes), m.OOMKills)
				}
			}
			for _, m := range v.Mounts {
				line := fmt.Sprintf("%s -> %s (%s", m.Host, m.Guest, m.Kind)
				if m.ReadOnly {
					line += ", ro"
				}
				line += ")"
				if m.Error != "" {
					line += ": " + m.Error
				}
				fmt.Fprintf(tw, "mount:\t%s\n", safeText(line))
			}
			for _, k := range sortedKeys(v.Labels) {
				fmt.Fprintf(tw, "label:\t%s=%s\n", safeText(k), safeText(v.Labels[k]))
			}
			if r := v.Run; r != nil {
				for _, kv := range [][2]string{
					{"entrypoint", quoteArgs(r.Entrypoint)}, {"cmd", quoteArgs(r.Cmd)}, {"workdir", r.WorkingDir}, {"user", r.User},
				} {
					if kv[1] != "" {
						fmt.Fprintf(tw, "%s:\t%s (over the image's)\n", kv[0], safeText(kv[1]))
					}
				}
				for _, e := range r.Env {
					fmt.Fprintf(tw, "env:\t%s\n", safeText(e))
				}
			}
			if v.Error != "" {
				// It may quote the guest's console.
				fmt.Fprintf(tw, "error:\t%s\n", safeText(v.Error))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newVMLogsCommand(a *app) *cobra.Command {
	var follow, raw bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's console (-f to follow)",
		Long: "Print the VM's serial console. The guest writes it, so terminal escape\n" +
			"sequences in it (colours, titles, cursor moves) are dropped and other\n" +
			"control characters shown as \\xHH; --raw prints the bytes as they are.",
		Args: argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			if raw {
				return c.VMLogs(cmd.Context(), args[0], follow, cmd.OutOrStdout())
			}
			sw := newSafeWriter(cmd.OutOrStdout())
			err = c.VMLogs(cmd.Context(), args[0], follow, sw)
			if ferr := sw.Flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the console's bytes as they are, escape sequences included")
	return cmd
}

func newVMRmCommand(a *app) *cobra.Command {
	var force bool
	cmd := newRmCommand(a, "Remove VMs and their disks (-f: kill running ones first)",
		func(ctx context.Context, c *client.Client, name string) error {
			_, err := c.RemoveVM(ctx, name, force)
			return err
		})
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running VM first")
	return cmd
}

func newVMPruneCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove every VM that is not running (created, stopped, error)",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			names, err := c.PruneVMs(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), names)
			}
			for _, n := range names {
				fmt.Fprintln(cmd.OutOrStdout(), n)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// vmSpecFlags are the flags that describe a new VM, shared by create
// and run; sizes are parsed by finish.
type vmSpecFlags struct {
	memory, disk string
	labels       []string
	// What the VM runs over its image's config (api.Run).
	entrypoint, workdir, user string
	env                       []string
}

func (v *vmSpecFlags) bind(f *pflag.FlagSet, req *api.VMCreateRequest) {
	f.StringVar(&req.Name, "name", "", "VM name, a DNS label (default: generated)")
	f.StringVar(&req.Image, "image", "", "image name (`banger vm run` also takes catalog names and references, and pulls them; default: config default_image)")
	f.StringVar(&req.Kernel, "kernel", "", "kernel name (default: config default_kernel)")
	f.StringVar(&req.VMM, "vmm", "", "firecracker, qemu or auto (default: config vmm)")
	f.IntVar(&req.VCPU, "vcpu", 0, "virtual CPUs (default: config vcpu)")
	f.StringVar(&v.memory, "memory", "", "memory, e.g. 512M or 2G (default: config memory)")
	f.StringVar(&v.disk, "disk-size", "", "size of the writable disk (sparse), e.g. 20G (default: config disk_size)")
	f.StringVar(&req.Network, "network", "", "nat (outside through NAT, isolated from other VMs), shared (nat, and reachable by other shared VMs) or none (default: config network)")
	f.StringArrayVarP(&req.Ports, "publish", "p", nil, "publish a guest TCP port on the host, [IP:]HOSTPORT:GUESTPORT[/tcp] (IP defaults to 127.0.0.1); repeatable")
	f.BoolVar(&req.Cold, "cold", false, "boot, even when a warm template of this image and shape could be restored")
	f.StringArrayVarP(&req.Mounts, "mount", "v", nil, "share a host directory, HOST:GUEST[:OPTIONS], OPTIONS ro, rw, sync comma-separated (HOST relative to here): QEMU shares it live (virtio-fs); Firecracker, or the sync option, keeps a two-way synced copy; repeatable")
	bindPolicy(f, &req.AllowOut, &req.DenyOut)
	f.StringArrayVar(&v.labels, "label", nil, "a KEY=VALUE note kept with the VM (`vm show` lists them); repeatable")
	f.StringVar(&v.entrypoint, "entrypoint", "", "run this instead of the image's entrypoint (and its cmd): words, or a JSON array")
	f.StringArrayVarP(&v.env, "env", "e", nil, "set an environment variable for the image's command and every exec, KEY=VALUE (KEY alone: its value here); repeatable")
	f.StringVarP(&v.workdir, "workdir", "w", "", "working directory of the image's command and every exec (absolute)")
	f.StringVarP(&v.user, "user", "u", "", "user the image's command runs as (NAME, UID or UID:GID)")
}

// run puts the run flags and cmd (nil: the image's) into req.Run.
func (v *vmSpecFlags) run(req *api.VMCreateRequest, cmd []string) error {
	entry, err := parseCommandFlag("--entrypoint", v.entrypoint)
	if err != nil {
		return err
	}
	var env []string
	for _, e := range v.env {
		if !strings.Contains(e, "=") {
			val, ok := os.LookupEnv(e)
			if !ok {
				return fmt.Errorf("--env %s: %s is not set here; give %s=VALUE", e, e, e)
			}
			e += "=" + val
		}
		env = append(env, e)
	}
	if len(entry) == 0 && len(cmd) == 0 && len(env) == 0 && v.workdir == "" && v.user == "" {
		return nil
	}
	req.Run = &api.Run{Entrypoint: entry, Cmd: cmd, Env: env, WorkingDir: v.workdir, User: v.user}
	return nil
}

// bindPolicy binds the egress-rule flags of vm create, run and policy.
func bindPolicy(f *pflag.FlagSet, allow, deny *[]string) {
	f.StringArrayVar(allow, "allow-out", nil, "let the VM reach only these (and deny the rest): domain names (example.com, *.example.com), IPs and CIDRs, comma-separated; repeatable")
	f.StringArrayVar(deny, "deny-out", nil, "deny these CIDRs on top of the other rules, comma-separated; repeatable")
}

// finish puts the parsed sizes into req.
func (v *vmSpecFlags) finish(req *api.VMCreateRequest) error {
	mem, err := config.ParseSize(v.memory)
	if err != nil {
		return err
	}
	req.MemoryMiB = int(mem >> 20)
	if req.DiskBytes, err = config.ParseSize(v.disk); err != nil {
		return err
	}
	for _, l := range v.labels {
		k, val, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return fmt.Errorf("--label %q: want KEY=VALUE", l)
		}
		if req.Labels == nil {
			req.Labels = map[string]string{}
		}
		req.Labels[k] = val
	}
	// The daemon does not share the CLI's working directory.
	for i, m := range req.Mounts {
		host, rest, ok := strings.Cut(m, ":")
		if !ok || host == "" {
			return fmt.Errorf("-v %q: want HOST:GUEST or HOST:GUEST:ro", m)
		}
		abs, err := filepath.Abs(host)
		if err != nil {
			return err
		}
		req.Mounts[i] = abs + ":" + rest
	}
	return nil
}

func newVMPolicyCommand(a *app) *cobra.Command {
	var req api.PolicyRequest
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "policy NAME",
		Short: "Change what a VM may reach (at once when it runs)",
		Long: "Replace a VM's egress rules. By default a VM reaches the internet, but not the\n" +
			"host (except banger's DNS), link-local or private addresses, nor other VMs.\n" +
			"--allow-out lets it reach only what it lists (domain names, *.domain, IPs,\n" +
			"CIDRs; private ones included); --deny-out denies CIDRs on top; --reset goes\n" +
			"back to the default. A running VM gets the rules at once: connections to what\n" +
			"is now denied are cut. Domain names work through banger's DNS: a name not\n" +
			"allowed gets NXDOMAIN, and only addresses allowed names resolved to are let\n" +
			"through (two names on one address cannot be told apart).",
		Example: "  banger vm policy dev --allow-out pypi.org,*.pythonhosted.org,10.0.0.5\n" +
			"  banger vm policy dev --deny-out 203.0.113.0/24\n" +
			"  banger vm policy dev --reset",
		Args: argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Reset && (len(req.AllowOut) > 0 || len(req.DenyOut) > 0) {
				return errors.New("--reset goes back to the default rules: give it alone")
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			v, err := c.SetPolicy(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", v.Name, policyText(*v))
			return nil
		},
	}
	f := cmd.Flags()
	bindPolicy(f, &req.AllowOut, &req.DenyOut)
	f.BoolVar(&req.Reset, "reset", false, "go back to the default rules")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// memoryText says where a running VM's host memory goes.
func memoryText(m *api.VMMemory) string {
	own := fmt.Sprintf("%s own (guest %s, VMM %s)", humanBytes(m.OwnBytes), humanBytes(m.GuestOwnBytes), humanBytes(m.OwnBytes-m.GuestOwnBytes))
	if m.Snapshot == "" {
		return own
	}
	return fmt.Sprintf("%s shared with snapshot %s, %s", humanBytes(m.SharedBytes), m.Snapshot, own)
}
