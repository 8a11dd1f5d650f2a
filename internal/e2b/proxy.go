package e2b

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"banger/internal/vsockagent"
)

// The port relay: a request for any port of a sandbox other than
// envd's goes to that port on the guest's loopback, through the agent
// (a "dial" stream), as `banger vm forward` does: it needs no route to
// the guest and works for a VM without a network. Upgrades (websockets)
// pass through.

// proxyHost is the upstream host name the relay's transport dials:
// SANDBOXID.sandbox:PORT, which keeps one pool of connections per
// sandbox and port.
const proxyHost = ".sandbox"

func (s *Service) newProxy() *httputil.ReverseProxy {
	tr := &http.Transport{
		DialContext:         s.dialGuest,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
		// The guest's servers speak plain HTTP/1.1.
		ForceAttemptHTTP2: false,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			id, port, _ := target(pr.In)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = id + proxyHost + ":" + strconv.Itoa(port)
			// The guest's server sees the host name the client used.
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Del("E2b-Sandbox-Id")
			pr.Out.Header.Del("E2b-Sandbox-Port")
			pr.Out.Header.Del("E2b-Traffic-Access-Token")
			pr.SetXForwarded()
		},
		Transport:     tr,
		FlushInterval: -1, // stream (server-sent events, long polls)
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			id, port, _ := target(r)
			writeJSON(w, http.StatusBadGateway, map[string]any{"sandboxId": id, "port": port, "code": http.StatusBadGateway,
				"message": fmt.Sprintf("The sandbox is running but port %d is not open (or did not answer): %v", port, err)})
		},
	}
}

// dialGuest opens a connection to addr, SANDBOXID.sandbox:PORT, through
// the sandbox's agent.
func (s *Service) dialGuest(ctx context.Context, _, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	id, ok := strings.CutSuffix(host, proxyHost)
	if !ok {
		return nil, fmt.Errorf("no sandbox in %q", addr)
	}
	sb, ok := s.get(id)
	if !ok {
		return nil, notFound(id)
	}
	c, err := callerOf(sb.Owner)
	if err != nil {
		return nil, err
	}
	sess, err := s.vms.Agent(ctx, c, id)
	if err != nil {
		return nil, err
	}
	// The connection, not ctx, bounds the stream: the transport keeps
	// it for later requests.
	st, err := sess.Open(context.WithoutCancel(ctx), vsockagent.Request{Op: "dial", Addr: net.JoinHostPort("127.0.0.1", port)})
	if err != nil {
		return nil, err
	}
	return &streamConn{Stream: st}, nil
}

// serveProxy relays r to port of sandbox id.
func (s *Service) serveProxy(w http.ResponseWriter, r *http.Request, id string, port int) {
	sb, ok := s.get(id)
	if !ok || sb.Creating {
		gone(w, id, "The sandbox was not found")
		return
	}
	if sb.Network != nil && sb.Network.AllowPublicTraffic != nil && !*sb.Network.AllowPublicTraffic &&
		subtle.ConstantTimeCompare([]byte(r.Header.Get("E2b-Traffic-Access-Token")), []byte(sb.trafficToken())) != 1 {
		writeJSON(w, http.StatusForbidden, apiErr{Code: http.StatusForbidden, Message: "the sandbox's ports are private: send its traffic access token in e2b-traffic-access-token"})
		return
	}
	if _, err := s.running(r.Context(), sb); err != nil {
		gone(w, id, err.Error())
		return
	}
	s.proxyOnce.Do(func() { s.proxy = s.newProxy() })
	s.proxy.ServeHTTP(w, r)
}

// streamConn is an agent stream as a net.Conn.
type streamConn struct{ *vsockagent.Stream }

type guestAddr struct{}

func (guestAddr) Network() string { return "banger-agent" }
func (guestAddr) String() string  { return "guest" }

func (c *streamConn) LocalAddr() net.Addr                { return guestAddr{} }
func (c *streamConn) RemoteAddr() net.Addr               { return guestAddr{} }
func (c *streamConn) SetDeadline(t time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return nil }
