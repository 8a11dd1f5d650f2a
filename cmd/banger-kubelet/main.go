// Command banger-kubelet makes this banger host a Kubernetes node: pods
// scheduled to it run as microVMs of the local bangerd (package
// internal/kubelet). Its flags keep the kubelet's names.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"banger/internal/kubelet"
	"banger/internal/version"
)

func main() {
	var cfg kubelet.Config
	flag.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "the node's kubeconfig (user system:node:NAME, group system:nodes)")
	flag.StringVar(&cfg.NodeName, "node-name", "", "the Node's name (default: the host name)")
	flag.StringVar(&cfg.NodeIP, "node-ip", "", "the Node's InternalIP, where the apiserver dials the kubelet port (default: the default route's address)")
	flag.IntVar(&cfg.Port, "port", 10250, "the kubelet port (TLS)")
	flag.StringVar(&cfg.ClientCAFile, "client-ca-file", "", "CA of the client certificates the kubelet port accepts (the apiserver's --kubelet-client-certificate); required")
	flag.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "the kubelet port's certificate (default: self-signed for --node-ip)")
	flag.StringVar(&cfg.TLSKeyFile, "tls-private-key-file", "", "its key")
	flag.StringVar(&cfg.Host, "host", "", "bangerd's socket (default: $BANGER_HOST, else $BANGER_HOME's, else the system's)")
	flag.StringVar(&cfg.PodCIDR, "pod-cidr", "", "this node's pod network when the cluster assigns none (default: the Node's spec.podCIDR)")
	flag.StringVar(&cfg.ClusterCIDR, "cluster-cidr", "", "the cluster's pod network, which pods reach with their own addresses (default: the podCIDR's /16)")
	flag.Float64Var(&cfg.APIQPS, "kube-api-qps", 50, "requests per second to the apiserver, as the kubelet's flag (status updates, events, secrets)")
	flag.IntVar(&cfg.APIBurst, "kube-api-burst", 100, "requests allowed in a burst above --kube-api-qps")
	flag.Int64Var(&cfg.MaxPods, "max-pods", 110, "pods this node takes at most")
	flag.StringVar(&cfg.RootDir, "root-dir", "", "pods' logs and records (default: /var/lib/banger-kubelet/NODE as root, else ~/.local/state/banger-kubelet/NODE)")
	backoff := flag.Duration("restart-backoff", 10*time.Second, "the first wait before a command is restarted or an image pulled again (doubles to 5m)")
	verbose := flag.Bool("v", false, "debug logs")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("banger-kubelet", version.String())
		return
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.Backoff = *backoff
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := kubelet.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "banger-kubelet:", err)
		os.Exit(1)
	}
}
