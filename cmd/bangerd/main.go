// Command bangerd is banger's daemon: it owns images, kernels, VMs and
// the network of one host (or of one BANGER_HOME) and serves the API the
// banger CLI talks to.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"banger/internal/daemon"
	"banger/internal/hostnet"
	"banger/internal/paths"
	"banger/internal/version"
	"banger/internal/vmm/firecracker"
)

func main() {
	home := flag.String("home", "", "instance directory (default $BANGER_HOME, else system paths)")
	group := flag.String("group", "banger", "group whose members may use the socket")
	debug := flag.Bool("debug", false, "log at debug level to stderr as well")
	catalog := flag.String("kernel-catalog", os.Getenv("BANGER_KERNEL_CATALOG"), "JSON file of extra kernel catalog entries (default $BANGER_KERNEL_CATALOG)")
	hostRoot := flag.String("host-root", envOr("BANGER_HOST_ROOT", "/"), "where installed kernels are looked for: ROOT/boot, ROOT/lib/modules (default $BANGER_HOST_ROOT or /)")
	bridge := flag.String("bridge", hostnet.DefaultBridge, "bridge the VMs' TAPs attach to")
	subnet := flag.String("subnet", envOr("BANGER_SUBNET", hostnet.DefaultSubnet), "private IPv4 network of the VMs, /16 to /29; the bridge takes its first address (default $BANGER_SUBNET or "+hostnet.DefaultSubnet+")")
	netns := flag.String("netns", os.Getenv("BANGER_NETNS"), "named network namespace for the VM network (default $BANGER_NETNS, else the daemon's own)")
	upstream := flag.String("dns-upstream", os.Getenv("BANGER_DNS_UPSTREAM"), "comma-separated resolvers for names outside .vm (default $BANGER_DNS_UPSTREAM, else /etc/resolv.conf)")
	jailer := flag.String("jailer", os.Getenv("BANGER_JAILER"), "run Firecracker VMs under this jailer binary (default $BANGER_JAILER; none: unjailed)")
	jailUID := flag.Int("jailer-uid", 30000, "unprivileged uid jailed Firecrackers run as")
	jailGID := flag.Int("jailer-gid", 30000, "unprivileged gid jailed Firecrackers run as")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("bangerd", version.String())
		return
	}
	layout, err := paths.FromEnv(*home)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		os.Exit(1)
	}
	prefix, err := netip.ParsePrefix(*subnet)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: --subnet %q: %v: give a CIDR such as %s\n", *subnet, err, hostnet.DefaultSubnet)
		os.Exit(2)
	}
	var upstreams []string
	for _, u := range strings.Split(*upstream, ",") {
		if u = strings.TrimSpace(u); u != "" {
			upstreams = append(upstreams, u)
		}
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	var jail *firecracker.Jailer
	if *jailer != "" {
		jail = &firecracker.Jailer{Bin: *jailer, UID: *jailUID, GID: *jailGID}
	}
	d, err := daemon.New(layout, daemon.Options{
		Group:         *group,
		KernelCatalog: *catalog,
		HostRoot:      *hostRoot,
		Network:       hostnet.Config{Bridge: *bridge, Subnet: prefix, NetNS: *netns},
		DNSUpstreams:  upstreams,
		Jailer:        jail,
		Logger:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
