// Package vmdns is banger's DNS server: it answers NAME.vm (A, and PTR
// for the VM subnet) for every running VM from memory and forwards every
// other question to the host's resolvers. The daemon serves it on the
// bridge address over UDP and TCP; guests use it as their resolver and
// the host reaches it through systemd-resolved's per-link configuration.
//
// A Filter (WithFilter) decides, per client address, which names a
// VM may resolve: a name it may not is NXDOMAIN and never goes
// upstream; the addresses of one it may are handed to the filter before
// the answer goes back. It knows nothing of nftables or of policies'
// syntax.
package vmdns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Domain is the zone VMs live in.
const Domain = "vm"

// TTL of local answers: short, since VMs come and go.
const TTL = 5

// maxInFlight bounds concurrent forwarded questions: a flood from a
// guest must not turn into unbounded goroutines and upstream sockets.
const maxInFlight = 256

// Verdict is what a Filter decides about a question.
type Verdict int

const (
	// Open: the client has no restriction (the host, a VM without an
	// allow-list): forward as for anyone.
	Open Verdict = iota
	// Allow: the client may resolve the name: forward, and hand the
	// answer's addresses to Filter.Learned before answering.
	Allow
	// Deny: NXDOMAIN, and the question never leaves the server.
	Deny
)

// Filter decides what each client may resolve. Its methods are called
// from the server's goroutines, concurrently.
type Filter interface {
	// Check decides about a question for name (lower case, with the
	// final dot) from client. Questions about NAME.vm and the VM
	// subnet's reverse names are answered before it is asked.
	Check(client netip.Addr, name string) Verdict
	// Learned is called, for an Allow verdict, with the IPv4
	// addresses of the answer (its A records, CNAME targets' included)
	// and the longest TTL among them, before the answer is sent. It
	// returns the longest TTL the answer may then carry (the guest
	// must not keep an address longer than it may reach it); an error
	// makes the answer SERVFAIL.
	Learned(client netip.Addr, name string, addrs []netip.Addr, ttl time.Duration) (time.Duration, error)
}

// Option tunes a Server.
type Option func(*Server)

// WithFilter has f decide what each client may resolve (default: every
// client resolves everything).
func WithFilter(f Filter) Option { return func(s *Server) { s.filter = f } }

// Server answers for the VMs and forwards the rest.
type Server struct {
	subnet    netip.Prefix
	upstreams []string // host:port
	timeout   time.Duration
	filter    Filter

	mu      sync.RWMutex
	byName  map[string]netip.Addr // "name.vm." → address
	byAddr  map[netip.Addr]string
	servers []*dns.Server
	sem     chan struct{}
	udp     *dns.Client
	tcp     *dns.Client
	idle    map[string]chan *dns.Conn // per upstream: UDP sockets to reuse
}

// idleConns bounds the UDP sockets kept open per upstream. Reusing them
// saves a socket, a bind and a connect per forwarded question (3× the
// cost of the question itself on loopback); the random message ID still
// guards each answer.
const idleConns = 16

// New makes a server for VMs in subnet that forwards to upstreams
// (host:port, or bare addresses meaning port 53).
func New(subnet netip.Prefix, upstreams []string, opts ...Option) *Server {
	s := &Server{subnet: subnet.Masked(), timeout: 2 * time.Second, byName: map[string]netip.Addr{}, byAddr: map[netip.Addr]string{},
		sem: make(chan struct{}, maxInFlight)}
	for _, o := range opts {
		o(s)
	}
	for _, u := range upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			u = net.JoinHostPort(u, "53")
		}
		s.upstreams = append(s.upstreams, u)
	}
	s.idle = map[string]chan *dns.Conn{}
	for _, u := range s.upstreams {
		s.idle[u] = make(chan *dns.Conn, idleConns)
	}
	s.udp = &dns.Client{Net: "udp", Timeout: s.timeout, UDPSize: dns.DefaultMsgSize}
	s.tcp = &dns.Client{Net: "tcp", Timeout: s.timeout}
	return s
}

// HostResolvers reads the nameservers of a resolv.conf; servers in
// exclude (the bridge address: never forward to ourselves) are left out.
func HostResolvers(path string, exclude ...netip.Addr) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the host's resolvers: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		skip := false
		for _, x := range exclude {
			skip = skip || a.Unmap() == x
		}
		if !skip {
			out = append(out, net.JoinHostPort(a.String(), "53"))
		}
	}
	return out, sc.Err()
}

// Set makes name.vm answer addr (replacing what it answered before).
func (s *Server) Set(name string, addr netip.Addr) {
	fq := dns.Fqdn(strings.ToLower(name) + "." + Domain)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.byName[fq]; ok {
		delete(s.byAddr, old)
	}
	s.byName[fq] = addr
	s.byAddr[addr] = fq
}

// Remove forgets name.vm.
func (s *Server) Remove(name string) {
	fq := dns.Fqdn(strings.ToLower(name) + "." + Domain)
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.byName[fq]; ok {
		delete(s.byAddr, a)
		delete(s.byName, fq)
	}
}

// Serve answers on a UDP socket and a TCP listener until Close. The
// caller opens them (in whatever network namespace it needs).
func (s *Server) Serve(pc net.PacketConn, ln net.Listener) {
	udp := &dns.Server{PacketConn: pc, Handler: s}
	tcp := &dns.Server{Listener: ln, Handler: s}
	s.mu.Lock()
	s.servers = append(s.servers, udp, tcp)
	s.mu.Unlock()
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
}

// Close stops serving.
func (s *Server) Close() error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.mu.Unlock()
	var errs []error
	for _, srv := range servers {
		errs = append(errs, srv.Shutdown())
	}
	for _, ch := range s.idle {
		for len(ch) > 0 {
			(<-ch).Close()
		}
	}
	return errors.Join(errs...)
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeNotImplemented)
		w.WriteMsg(m)
		return
	}
	if m := s.local(req); m != nil {
		w.WriteMsg(m)
		return
	}
	client, verdict := netip.Addr{}, Open
	if s.filter != nil {
		client = clientAddr(w.RemoteAddr())
		verdict = s.filter.Check(client, strings.ToLower(dns.Fqdn(req.Question[0].Name)))
	}
	if verdict == Deny {
		// Never forwarded: a name under a domain the VM may not
		// resolve would otherwise carry data to that domain's servers.
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeNameError)
		m.RecursionAvailable = true
		w.WriteMsg(m)
		return
	}
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	default:
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeRefused)
		w.WriteMsg(m)
		return
	}
	resp := s.forward(req, w.LocalAddr().Network())
	if verdict == Allow {
		resp = s.learn(client, req, resp)
	}
	w.WriteMsg(resp)
}

// learn hands the addresses of resp, the answer to an allowed question,
// to the filter, and caps its TTLs at what the filter returns; if the
// filter fails the answer is SERVFAIL, since the guest could not reach
// the addresses it would carry.
func (s *Server) learn(client netip.Addr, req, resp *dns.Msg) *dns.Msg {
	var addrs []netip.Addr
	var ttl uint32
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
				addrs = append(addrs, ip)
				ttl = max(ttl, a.Hdr.Ttl)
			}
		}
	}
	if len(addrs) == 0 {
		return resp
	}
	name := strings.ToLower(dns.Fqdn(req.Question[0].Name))
	limit, err := s.filter.Learned(client, name, addrs, time.Duration(ttl)*time.Second)
	if err != nil {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeServerFailure)
		return m
	}
	capTTL := uint32(limit / time.Second)
	for _, rr := range resp.Answer {
		if h := rr.Header(); h.Ttl > capTTL {
			h.Ttl = capTTL
		}
	}
	return resp
}

// clientAddr is the address a question came from.
func clientAddr(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// local answers questions about the VM zone and the VM subnet's reverse
// zone, or returns nil for everything else.
func (s *Server) local(req *dns.Msg) *dns.Msg {
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case name == Domain+"." || strings.HasSuffix(name, "."+Domain+"."):
		addr, ok := s.byName[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{s.soa()}
			return m
		}
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL}, A: addr.AsSlice()})
		} else {
			m.Ns = []dns.RR{s.soa()} // the name exists: NODATA for AAAA and the rest
		}
		return m
	case strings.HasSuffix(name, ".in-addr.arpa."):
		addr, ok := reverseAddr(name)
		if !ok || !s.subnet.Contains(addr) {
			return nil
		}
		fq, ok := s.byAddr[addr]
		if !ok {
			m.Rcode = dns.RcodeNameError
			return m
		}
		if q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, &dns.PTR{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: TTL}, Ptr: fq})
		}
		return m
	}
	return nil
}

func (s *Server) soa() dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: Domain + ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: TTL},
		Ns: "ns." + Domain + ".", Mbox: "hostmaster." + Domain + ".", Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: TTL}
}

// reverseAddr turns d.c.b.a.in-addr.arpa. into a.b.c.d.
func reverseAddr(name string) (netip.Addr, bool) {
	parts := strings.Split(strings.TrimSuffix(name, ".in-addr.arpa."), ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(parts[3] + "." + parts[2] + "." + parts[1] + "." + parts[0])
	return a, err == nil
}

// exchangeUDP asks upstream u over a pooled UDP socket. A socket that
// saw an error (a timeout, a stray answer) is closed, not reused.
func (s *Server) exchangeUDP(ctx context.Context, req *dns.Msg, u string) (*dns.Msg, error) {
	var conn *dns.Conn
	select {
	case conn = <-s.idle[u]:
	default:
		var err error
		if conn, err = s.udp.DialContext(ctx, u); err != nil {
			return nil, err
		}
	}
	resp, _, err := s.udp.ExchangeWithConnContext(ctx, req, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	select {
	case s.idle[u] <- conn:
	default:
		conn.Close()
	}
	return resp, nil
}

// forward asks each upstream in turn over UDP, as stub resolvers do,
// and over TCP only when the answer was truncated and the client can
// take a long one (it asked over TCP); a client on UDP gets the
// truncated answer and retries over TCP itself. None answering is
// SERVFAIL.
func (s *Server) forward(req *dns.Msg, network string) *dns.Msg {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout+time.Second)
	defer cancel()
	for _, u := range s.upstreams {
		resp, err := s.exchangeUDP(ctx, req, u)
		if err != nil || resp == nil {
			continue
		}
		if resp.Truncated && network == "tcp" {
			if full, _, err := s.tcp.ExchangeContext(ctx, req, u); err == nil && full != nil {
				resp = full
			}
		}
		resp.Id = req.Id
		return resp
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	return m
}
