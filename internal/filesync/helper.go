package filesync

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
)

// HelperMain is `bangerd filesync --root DIR [--ro]`, the host side of
// one synced mount. bangerd runs it as the mount's owner, so the sync
// reads and writes exactly what they may. Descriptor 3 is the stream to
// the guest's agent (bangerd relays it), descriptor 4 the file that
// keeps the base between sessions. It prints "ready SENT RECEIVED
// BYTES" on stdout when the initial sync is done, and log lines on
// stderr, the last one "error: ..." when it fails.
func HelperMain(args []string) int {
	fs := flag.NewFlagSet("bangerd filesync", flag.ContinueOnError)
	root := fs.String("root", "", "the host directory")
	ro := fs.Bool("ro", false, "the guest gets a read-only copy")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "error: "+err.Error())
		return 1
	}
	if *root == "" {
		return fail(fmt.Errorf("bangerd filesync needs --root: bangerd runs it for a synced mount (-v), it is not for direct use"))
	}
	stream, err := net.FileConn(os.NewFile(3, "stream"))
	if err != nil {
		return fail(fmt.Errorf("descriptor 3 is not the guest's stream (%v): bangerd runs this for a synced mount, it is not for direct use", err))
	}
	state := os.NewFile(4, "state")
	var base map[string]Entry
	if state != nil {
		base = ReadBase(io.NewSectionReader(state, 0, 1<<40))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = Host(ctx, stream, *root, HostOptions{
		ReadOnly: *ro,
		Base:     base,
		Save: func(b map[string]Entry) error {
			if state == nil {
				return nil
			}
			return WriteBase(state, b)
		},
		Log:   func(s string) { fmt.Fprintln(os.Stderr, s) },
		Ready: func(st Stats) { fmt.Printf("ready %d %d %d\n", st.Sent, st.Received, st.Bytes) },
	})
	if ctx.Err() != nil {
		return 0
	}
	return fail(err)
}
