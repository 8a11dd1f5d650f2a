package vmm

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// DialVsock connects to port on the guest with context id cid over the
// host's vsock (vhost-vsock).
func DialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port}) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		unix.Close(fd)
		<-done
		return nil, context.Cause(ctx)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock connect to %d:%d: %w", cid, port, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &vsockConn{File: os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d:%d", cid, port)), cid: cid, port: port}, nil
}

// vsockConn is a vsock stream as a net.Conn (the net package has no
// vsock family).
type vsockConn struct {
	*os.File
	cid, port uint32
}

type vsockAddr struct{ cid, port uint32 }

func (a vsockAddr) Network() string { return "vsock" }
func (a vsockAddr) String() string  { return fmt.Sprintf("%d:%d", a.cid, a.port) }

func (c *vsockConn) LocalAddr() net.Addr  { return vsockAddr{unix.VMADDR_CID_HOST, 0} }
func (c *vsockConn) RemoteAddr() net.Addr { return vsockAddr{c.cid, c.port} }
func (c *vsockConn) SetDeadline(t time.Time) error {
	return c.File.SetDeadline(t)
}
