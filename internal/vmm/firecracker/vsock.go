package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// ErrVsockRefused means the guest did not accept a vsock connection on
// the port (nothing listens there yet, or the agent is not up).
var ErrVsockRefused = errors.New("guest refused the vsock connection")

// DialVsock connects to a guest vsock port through Firecracker's hybrid
// vsock: the host connects to the VM's Unix socket, writes
// "CONNECT <port>\n" and reads "OK <hostport>\n". The reply is read a
// byte at a time so nothing that follows it is swallowed, and the
// connection is closed on every failure.
func DialVsock(ctx context.Context, udsPath string, port uint32) (_ net.Conn, err error) {
	var d net.Dialer
	// A local, not the named result: `return nil, err` would nil the
	// result before the deferred Close sees it.
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("dialing vsock socket %s: %w", udsPath, err)
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	if _, err = fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return nil, fmt.Errorf("vsock handshake: %w", err)
	}
	var line []byte
	b := make([]byte, 1)
	for len(line) < 64 {
		if _, err = conn.Read(b); err != nil {
			if len(line) == 0 {
				// Firecracker closes the connection when the guest
				// refuses it.
				return nil, fmt.Errorf("%w: port %d", ErrVsockRefused, port)
			}
			return nil, fmt.Errorf("vsock handshake: %w", err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	fields := strings.Fields(string(line))
	if len(fields) != 2 || fields[0] != "OK" {
		return nil, fmt.Errorf("vsock handshake: unexpected reply %q", line)
	}
	if _, err = strconv.ParseUint(fields[1], 10, 32); err != nil {
		return nil, fmt.Errorf("vsock handshake: unexpected reply %q", line)
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}
