// Command banger-vsock-agent is banger's guest agent. It ships inside
// every image at /usr/local/bin/banger-vsock-agent and inside every
// initramfs banger builds as /init. As PID 1 it is the VM's init stage
// (package guestinit); `serve` is the agent service systemd starts.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"banger/internal/guestinit"
	"banger/internal/version"
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
		// Readiness only for now: the agent protocol (exec, files, ports)
		// comes with its own issue. It stays up so systemd reports the
		// service active, and says so on the console.
		fmt.Println("banger-vsock-agent", version.Version, "ready")
		if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
			fmt.Fprintln(f, "banger-vsock-agent: ready", version.Version)
			f.Close()
		}
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
	default:
		fmt.Fprintln(os.Stderr, "usage: banger-vsock-agent version|serve (as PID 1 it is the VM's init stage)")
		os.Exit(2)
	}
}
