// Command banger-vsock-agent is banger's guest agent. It ships inside every
// image at /usr/local/bin/banger-vsock-agent. At this stage it reports its
// version; the init stage and the agent server come with later issues.
package main

import (
	"fmt"
	"os"

	"banger/internal/version"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("banger-vsock-agent", version.String())
		return
	}
	fmt.Fprintln(os.Stderr, "banger-vsock-agent", version.String()+": the agent server is not built yet; run `banger-vsock-agent version`")
	os.Exit(2)
}
