package hostnet

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Port is a published port: HostIP:Host on the host forwards to Guest
// on the VM. TCP only.
type Port struct {
	HostIP netip.Addr
	Host   uint16
	Guest  uint16
}

func (p Port) String() string {
	return fmt.Sprintf("%s:%d:%d/tcp", p.HostIP, p.Host, p.Guest)
}

// ParsePort reads -p [IP:]HOST:GUEST[/tcp]. Without an IP the port is
// published on 127.0.0.1 only: a sandbox's services are the developer's,
// not the network's; 0.0.0.0: publishes it on every address.
func ParsePort(s string) (Port, error) {
	bad := func(why string) (Port, error) {
		return Port{}, fmt.Errorf("-p %q: %s; use [IP:]HOSTPORT:GUESTPORT[/tcp], e.g. -p 8080:80", s, why)
	}
	spec, proto, _ := strings.Cut(s, "/")
	if proto != "" && proto != "tcp" {
		return bad("only tcp ports can be published")
	}
	p := Port{HostIP: netip.AddrFrom4([4]byte{127, 0, 0, 1})}
	i := strings.LastIndexByte(spec, ':')
	if i < 0 {
		return bad("HOSTPORT:GUESTPORT needed")
	}
	hostPart, guest := spec[:i], spec[i+1:]
	if j := strings.LastIndexByte(hostPart, ':'); j >= 0 {
		a, err := netip.ParseAddr(strings.Trim(hostPart[:j], "[]"))
		if err != nil {
			return bad("bad host address")
		}
		p.HostIP, hostPart = a, hostPart[j+1:]
	}
	h, err1 := strconv.ParseUint(hostPart, 10, 16)
	g, err2 := strconv.ParseUint(guest, 10, 16)
	if err1 != nil || err2 != nil || h == 0 || g == 0 {
		return bad("ports are numbers from 1 to 65535")
	}
	p.Host, p.Guest = uint16(h), uint16(g)
	return p, nil
}

// ErrPortInUse means a published port's host address is taken.
var ErrPortInUse = errors.New("host port in use")

// Forwarder relays one published port to a VM: a userspace proxy in
// the daemon. It binds the host port itself, so a port that is taken is
// refused at once with a clear error, it works for 127.0.0.1 (which
// DNAT cannot reach without route_localnet), and it is gone the moment
// the VM stops.
type Forwarder struct {
	n      *Net
	port   Port
	target string
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// PortFree reports ErrPortInUse when p's host address cannot be bound
// now (a check before a VM is created; Forward binds for real).
func (n *Net) PortFree(p Port) error {
	ln, err := n.listen(p)
	if err == nil {
		ln.Close()
	}
	return err
}

func (n *Net) listen(p Port) (net.Listener, error) {
	addr := net.JoinHostPort(p.HostIP.String(), strconv.Itoa(int(p.Host)))
	var ln net.Listener
	err := n.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return })
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%w: %s is already taken on the host: publish another port (-p OTHER:%d)", ErrPortInUse, addr, p.Guest)
	}
	if err != nil {
		return nil, fmt.Errorf("publishing %s: %w", addr, err)
	}
	return ln, nil
}

// Forward starts relaying p to guest.
func (n *Net) Forward(p Port, guest netip.Addr) (*Forwarder, error) {
	ln, err := n.listen(p)
	if err != nil {
		return nil, err
	}
	f := &Forwarder{n: n, port: p, target: net.JoinHostPort(guest.String(), strconv.Itoa(int(p.Guest))), ln: ln, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.accept()
	return f, nil
}

// Addr is where the forwarder listens.
func (f *Forwarder) Addr() net.Addr { return f.ln.Addr() }

func (f *Forwarder) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.track(c, true) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go f.relay(c)
	}
}

func (f *Forwarder) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if add {
		if f.closed {
			return false
		}
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
	return true
}

// relay copies both ways, passing each side's half-close on, so
// request/response protocols that shut down writing still work.
func (f *Forwarder) relay(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	defer f.track(c, false)
	var g net.Conn
	err := f.n.Do(func() (err error) { g, err = net.DialTimeout("tcp", f.target, 5*time.Second); return })
	if err != nil {
		return
	}
	if !f.track(g, true) {
		g.Close()
		return
	}
	defer f.track(g, false)
	defer g.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(g, c)
		closeWrite(g)
		close(done)
	}()
	io.Copy(c, g)
	closeWrite(c)
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

// Close stops listening and ends every relayed connection.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	err := f.ln.Close()
	f.wg.Wait()
	return err
}
