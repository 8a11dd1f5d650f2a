// Command banger-vsock-agent is banger's guest agent. It ships inside
// every image at /usr/local/bin/banger-vsock-agent and inside every
// initramfs banger builds as /init. As PID 1 it is the VM's init stage
// (package guestinit); `serve` is the agent service systemd starts.

// Go's own DNS resolver, even in a cgo build: a static binary's libc
// resolver would need the guest's NSS libraries of the exact glibc it was
// linked with.
//
//go:debug netdns=go
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"banger/internal/guestinit"
	"banger/internal/version"
	"banger/internal/vsockagent"
)

func main() {
	if os.Getpid() == 1 {
		guestinit.Main()
		os.Exit(1)
	}
	cmd := ""
	if len(os.Args) > 1 {
		cmd = os.Args[1]
	}
	switch cmd {
	case "version", "--version":
		fmt.Println("banger-vsock-agent", version.String())
	case "serve":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		vsockagent.Serve(ctx, guestinit.AgentOptions(guestinit.ReadAgentRunSpec(), nil), os.Stdout)
	default:
		fmt.Fprintln(os.Stderr, "usage: banger-vsock-agent version|serve (as PID 1 it is the VM's init stage)")
		os.Exit(2)
	}
}
