// Command buildargs prints what `banger image build debian:bookworm`
// gives mmdebstrap on this host, so bench/build.sh runs mmdebstrap alone
// with exactly the same packages and mirrors: the packages
// comma-separated, or with -mirror the source lines, one per line.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"banger/internal/imagebuild"
)

func main() {
	mirror := flag.Bool("mirror", false, "print the source lines instead of the packages")
	flag.Parse()
	spec, err := imagebuild.ParseSpec("debian:bookworm", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	args := imagebuild.Args(spec, imagebuild.HostMirrors(spec.Distro, "/etc/apt"))
	for _, a := range args {
		switch {
		case *mirror && strings.HasPrefix(a, "deb "):
			fmt.Println(a)
		case !*mirror && strings.HasPrefix(a, "--include="):
			fmt.Println(strings.TrimPrefix(a, "--include="))
		}
	}
}
