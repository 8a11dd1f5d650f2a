// Command bangerd is banger's daemon: it owns images, kernels, VMs and
// the network of one host (or of one BANGER_HOME) and serves the API the
// banger CLI talks to.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"banger/internal/daemon"
	"banger/internal/paths"
	"banger/internal/version"
)

func main() {
	home := flag.String("home", "", "instance directory (default $BANGER_HOME, else system paths)")
	group := flag.String("group", "banger", "group whose members may use the socket")
	debug := flag.Bool("debug", false, "log at debug level to stderr as well")
	catalog := flag.String("kernel-catalog", os.Getenv("BANGER_KERNEL_CATALOG"), "JSON file of extra kernel catalog entries (default $BANGER_KERNEL_CATALOG)")
	hostRoot := flag.String("host-root", envOr("BANGER_HOST_ROOT", "/"), "where installed kernels are looked for: ROOT/boot, ROOT/lib/modules (default $BANGER_HOST_ROOT or /)")
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
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	d, err := daemon.New(layout, daemon.Options{
		Group:         *group,
		KernelCatalog: *catalog,
		HostRoot:      *hostRoot,
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
