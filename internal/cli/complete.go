package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// completeNames gives every command whose first argument is a VM, image
// or kernel name a completion of the live names (asked of bangerd, with
// a short timeout so a missing daemon never hangs the shell).
func completeNames(a *app, root *cobra.Command) {
	var walk func(*cobra.Command)
	walk = func(cmd *cobra.Command) {
		for _, c := range cmd.Commands() {
			walk(c)
		}
		if cmd.ValidArgsFunction != nil || !cmd.HasParent() {
			return
		}
		fields := strings.Fields(cmd.Use)
		if len(fields) < 2 {
			return
		}
		arg, kind := fields[1], cmd.Parent().Name()
		many := strings.HasSuffix(arg, "...")
		switch {
		case strings.HasPrefix(arg, "VM") || (kind == "vm" && strings.HasPrefix(arg, "NAME")):
			kind = "vm"
		case (kind == "image" || kind == "kernel") && strings.HasPrefix(arg, "NAME") && fields[0] != "import":
		case kind == "vm" && fields[0] == "cp":
			kind = "vm:"
		default:
			return
		}
		cmd.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 && !many && kind != "vm:" {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return a.liveNames(cmd.Context(), kind), cobra.ShellCompDirectiveNoFileComp
		}
	}
	walk(root)
}

func (a *app) liveNames(ctx context.Context, kind string) []string {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.init(); err != nil {
		return nil
	}
	c, err := a.client(ctx)
	if err != nil {
		return nil
	}
	var names []string
	switch kind {
	case "vm", "vm:":
		vms, _ := c.VMs(ctx)
		for _, v := range vms {
			if kind == "vm:" {
				names = append(names, v.Name+":")
			} else {
				names = append(names, v.Name)
			}
		}
	case "image":
		imgs, _ := c.Images(ctx)
		for _, i := range imgs {
			names = append(names, i.Name)
		}
	case "kernel":
		ks, _ := c.Kernels(ctx)
		for _, k := range ks {
			names = append(names, k.Name)
		}
	}
	return names
}
