package client

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"banger/internal/api"
	"banger/internal/vsockagent"
)

// api.AgentUpgrade must match the daemon's Upgrade token.

// Agent opens an agent session to the named VM through the daemon: an
// HTTP upgrade on the daemon's socket, after which the connection
// carries the agent protocol (docs/agent-protocol.md). Each stream
// opened on it is relayed to the VM's agent.
func (c *Client) Agent(ctx context.Context, vm string) (*vsockagent.Session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, &DialError{Socket: c.socket, Err: err}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://bangerd/v1/vms/"+url.PathEscape(vm)+"/agent", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", api.AgentUpgrade)
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("opening an agent session to %s: %w", vm, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, decodeError(resp)
	}
	s, err := vsockagent.Client(vsockagent.NewChannelReader(br, conn), vsockagent.Hello{}, conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("opening an agent session to %s: %w", vm, err)
	}
	return s, nil
}
