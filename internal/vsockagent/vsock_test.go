package vsockagent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/testenv"
	"banger/internal/vmm"
)

// TestVsockLoopback serves the agent on a real vsock listener and dials
// it through the host's vsock (the local context id, 1): the transport
// of Firecracker and vhost-vsock guests, on hosts with vsock_loopback.
func TestVsockLoopback(t *testing.T) {
	ln, err := listenVsock(0x4000 + uint32(time.Now().UnixNano()%1000))
	if err != nil {
		testenv.SkipExpected(t, "vsock-loopback", fmt.Sprintf("no vsock listener here: %v", err))
	}
	var port uint32
	if sa, err := getsockname(ln); err == nil {
		port = sa
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go serveVsock(ctx, ln, func() Hello { return Hello{Agent: "loop"} }, NewAgent(Options{Version: "loop"}))
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	defer dcancel()
	conn, err := vmm.DialVsock(dctx, 1, port)
	if err != nil {
		testenv.SkipExpected(t, "vsock-loopback", fmt.Sprintf("dialing the local context id: %v (modprobe vsock_loopback)", err))
	}
	s, err := Client(NewChannel(conn), Hello{}, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r := run(s, Request{Op: "exec", Argv: []string{"echo", "over vsock"}}, strings.NewReader("")); r.stdout != "over vsock\n" {
		t.Errorf("exec over vsock = %+v", r)
	}
}

// getsockname returns the port a vsock listener is bound to.
func getsockname(ln *vsockListener) (uint32, error) {
	sa, err := unix.Getsockname(ln.fd)
	if err != nil {
		return 0, err
	}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		return vm.Port, nil
	}
	return 0, fmt.Errorf("not a vsock address")
}
