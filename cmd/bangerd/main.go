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
	"syscall"

	"banger/internal/config"
	"banger/internal/consolelog"
	"banger/internal/daemon"
	"banger/internal/filesync"
	"banger/internal/hostnet"
	"banger/internal/paths"
	"banger/internal/version"
	"banger/internal/vmm/firecracker"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "filesync" {
		// The host side of a synced mount, which bangerd runs as the
		// mount's owner (see internal/filesync).
		os.Exit(filesync.HelperMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == consolelog.HelperCommand {
		// A VM's console log writer, which bangerd starts with each VMM
		// (see internal/consolelog).
		os.Exit(consolelog.HelperMain(os.Args[2:]))
	}
	home := flag.String("home", "", "instance directory (default $BANGER_HOME, else system paths)")
	group := flag.String("group", "banger", "group whose members may use the socket")
	debug := flag.Bool("debug", false, "log at debug level to stderr as well")
	catalog := flag.String("kernel-catalog", os.Getenv("BANGER_KERNEL_CATALOG"), "JSON file of extra kernel catalog entries (default $BANGER_KERNEL_CATALOG)")
	hostRoot := flag.String("host-root", envOr("BANGER_HOST_ROOT", "/"), "where installed kernels are looked for: ROOT/boot, ROOT/lib/modules (default $BANGER_HOST_ROOT or /)")
	netns := flag.String("netns", os.Getenv("BANGER_NETNS"), "named network namespace for the VM network (default $BANGER_NETNS, else the daemon's own)")
	cgroups := flag.Bool("cgroups", os.Getenv("BANGER_CGROUPS") != "off", "run each VM's processes in a cgroup of its own, with memory, CPU and pids limits, where the host allows (default true; $BANGER_CGROUPS=off turns it off)")
	// Settings of the config file: a flag wins over its variable, which
	// wins over the file, which wins over the default.
	settings := []struct{ flag, env, key, usage string }{
		{"bridge", "", "net.bridge", "bridge the VMs' TAPs attach to"},
		{"subnet", "BANGER_SUBNET", "net.subnet", "private IPv4 network of the VMs, /16 to /29; the bridge takes its first address"},
		{"dns-upstream", "BANGER_DNS_UPSTREAM", "net.dns_upstream", "comma-separated resolvers for names outside .vm (default: /etc/resolv.conf)"},
		{"firecracker", "BANGER_FIRECRACKER", "firecracker.binary", "the firecracker binary (default: firecracker on PATH)"},
		{"jailer", "BANGER_JAILER", "firecracker.jailer", "run Firecracker VMs under this jailer binary (default: unjailed)"},
		{"jailer-uid", "", "firecracker.jailer_uid", "unprivileged uid jailed Firecrackers run as"},
		{"jailer-gid", "", "firecracker.jailer_gid", "unprivileged gid jailed Firecrackers run as"},
	}
	vals := map[string]*string{}
	for _, st := range settings {
		usage := st.usage + " (config " + st.key
		if st.env != "" {
			usage += ", $" + st.env
		}
		vals[st.flag] = flag.String(st.flag, "", usage+")")
	}
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("bangerd", version.String())
		return
	}
	layout, err := paths.FromEnv(*home)
	if err != nil {
		fail(err)
	}
	cfg, err := config.Load(config.Path(layout.Home))
	if err != nil {
		fail(err)
	}
	explicit := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	for _, st := range settings {
		v, src := *vals[st.flag], "flag --"+st.flag
		if !explicit[st.flag] {
			if v, src = os.Getenv(st.env), "$"+st.env; st.env == "" || v == "" {
				continue
			}
		}
		if err := cfg.Set(st.key, v, src); err != nil {
			fail(fmt.Errorf("%s: %w", src, err))
		}
	}
	prefix, err := netip.ParsePrefix(cfg.Net.Subnet)
	if err != nil {
		fail(fmt.Errorf("subnet %q: %v: give a CIDR such as %s", cfg.Net.Subnet, err, hostnet.DefaultSubnet))
	}
	var jail *firecracker.Jailer
	if cfg.Firecracker.Jailer != "" {
		jail = &firecracker.Jailer{Bin: cfg.Firecracker.Jailer, UID: cfg.Firecracker.JailerUID, GID: cfg.Firecracker.JailerGID}
	}
	// Only tests set it: a lower overhead lets a guest push its VMM
	// past its cgroup's memory limit (test/integration).
	overhead, err := config.ParseSize(os.Getenv("BANGER_TEST_VM_MEMORY_OVERHEAD"))
	if err != nil {
		fail(fmt.Errorf("$BANGER_TEST_VM_MEMORY_OVERHEAD: %w", err))
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	d, err := daemon.New(layout, daemon.Options{
		Group:            *group,
		KernelCatalog:    *catalog,
		HostRoot:         *hostRoot,
		Network:          hostnet.Config{Bridge: cfg.Net.Bridge, Subnet: prefix, NetNS: *netns},
		DNSUpstreams:     cfg.Net.DNSUpstream,
		Jailer:           jail,
		Config:           cfg,
		NoCgroups:        !*cgroups,
		VMMemoryOverhead: overhead,
		Logger:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bangerd:", err)
	os.Exit(1)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
