package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"banger/internal/hostnet"
	"banger/internal/imagepull/imagetest"
	"banger/internal/testenv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// netScript is the command of the network test image. The VM named srv
// runs a TCP echo server on 8080; every other VM resolves srv.vm through
// banger's DNS, talks to it, and asks a server outside for the address
// it sees.
const netScript = `B=/bin/busybox
case $($B hostname) in
srv) echo GUEST-SRV-UP; exec $B nc -ll -p 8080 -e /bin/cat ;;
*) A=""
   for i in 1 2 3 4 5 6; do
     A=$($B nslookup srv.vm 2>/dev/null | $B awk '/^Address/ {a=$2} END {print a}')
     case "$A" in *:*|"") $B sleep 1 ;; *) break ;; esac
   done
   echo "RESOLVED srv.vm $A"
   echo "PEER $( (echo hi-from-$($B hostname); $B sleep 2) | $B nc -w 3 $A 8080)"
   echo "OUTSIDE $($B sleep 2 | $B nc -w 3 198.51.100.2 7000)"
   echo NET-DONE ;;
esac`

// inNS runs fn with its sockets in the instance's network namespace.
func (in *instance) inNS(fn func() error) error {
	return hostnet.InNetNS(in.netns, fn)
}

func (in *instance) dial(addr string) (net.Conn, error) {
	var c net.Conn
	err := in.inNS(func() (err error) { c, err = net.DialTimeout("tcp", addr, 3*time.Second); return })
	return c, err
}

// echoes checks a TCP round trip through addr to an echo server, from
// the instance's namespace.
func (in *instance) echoes(addr, msg string) error {
	return in.inNS(func() error { return echoOnce(addr, msg) })
}

// lookup asks the VM DNS server (on the bridge, in the namespace).
func (in *instance) lookup(network, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	var r *dns.Msg
	err := in.inNS(func() (err error) {
		r, _, err = (&dns.Client{Net: network, Timeout: 3 * time.Second}).Exchange(m, "10.253.0.1:53")
		return
	})
	return r, err
}

func (in *instance) nft() string {
	out, err := exec.Command("ip", "netns", "exec", in.netns, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		in.t.Fatalf("nft list ruleset: %v %s", err, out)
	}
	return string(out)
}

// guard lists the set of VM addresses the bridge admits from each TAP.
func (in *instance) guard() string {
	out, err := exec.Command("ip", "netns", "exec", in.netns, "nft", "list", "set", "bridge", hostnet.TableName, hostnet.AddrSet).CombinedOutput()
	if err != nil {
		in.t.Fatalf("nft list set: %v %s", err, out)
	}
	return string(out)
}

// neighbours is the namespace's IPv4 neighbour table on the bridge:
// address to "MAC STATE".
func (in *instance) neighbours() map[string]string {
	var list []struct {
		Dst    string   `json:"dst"`
		LLAddr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	out := testenv.IP(in.t, "-j", "-4", "-n", in.netns, "neigh", "show", "dev", hostnet.DefaultBridge)
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		in.t.Fatalf("ip neigh: %v: %s", err, out)
	}
	m := map[string]string{}
	for _, e := range list {
		if strings.HasPrefix(e.Dst, "10.253.") {
			m[e.Dst] = e.LLAddr + " " + strings.Join(e.State, ",")
		}
	}
	return m
}

func (in *instance) taps() []string {
	var out []string
	for _, l := range strings.Split(testenv.IP(in.t, "-n", in.netns, "-o", "link"), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], hostnet.TAPPrefix) {
			out = append(out, strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
		}
	}
	return out
}

// upstreamDNS is the "host resolver" the daemon forwards to: a real DNS
// server on loopback that knows one name.
func upstreamDNS(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Name == "example.test." {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)})
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// outside is a network beyond the host: a namespace behind a veth from
// the instance's namespace, with a server that tells each client the
// address it came from.
func (in *instance) outside() {
	t := in.t
	out := testenv.NetNS(t)
	testenv.IP(t, "-n", in.netns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", out)
	testenv.IP(t, "-n", in.netns, "addr", "add", "198.51.100.1/24", "dev", "up0")
	testenv.IP(t, "-n", in.netns, "link", "set", "up0", "up")
	testenv.IP(t, "-n", out, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	testenv.IP(t, "-n", out, "link", "set", "eth0", "up")
	var ln net.Listener
	if err := hostnet.InNetNS(out, func() (err error) { ln, err = net.Listen("tcp", "198.51.100.2:7000"); return }); err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, testenv.TellRemoteIP)
}

func TestVMNetwork(t *testing.T) {
	testenv.RequireBinary(t, "nft", "apt-get install nftables")
	in := newInstance(t)
	in.env = append(in.env, "BANGER_DNS_UPSTREAM="+upstreamDNS(t))
	vmFixtures(t, in)
	reg := imagetest.StartRegistry(t)
	netImg := reg.Push(t, "test/net:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{busyboxLayer(t)},
		Config: v1.Config{Cmd: []string{"/bin/busybox", "sh", "-c", netScript}}}))
	in.ok("image", "pull", "-q", netImg, "--name", "net")
	in.outside()
	create := func(name string, extra ...string) []string {
		return append([]string{"vm", "create", "--name", name, "--image", "net", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu"}, extra...)
	}

	// A subnet the host already routes is refused before anything exists.
	testenv.IP(t, "-n", in.netns, "link", "add", "corp0", "type", "veth", "peer", "name", "corp1")
	testenv.IP(t, "-n", in.netns, "addr", "add", "10.253.128.1/16", "dev", "corp0")
	in.fails("overlaps a host network", create("early")...)
	testenv.IP(t, "-n", in.netns, "link", "del", "corp0")
	in.fails("--network \"bogus\"", create("bad", "--network", "bogus")...)
	in.fails("-p 8080:80", create("bad", "-p", "80")...)

	var srv, cli, iso vmJSON
	in.jsonOut(&srv, append(create("srv", "--network", "shared", "-p", "18080:8080"), "--json")...)
	if srv.IP != "10.253.0.2" || srv.Network != "shared" || len(srv.Ports) != 1 || srv.Ports[0] != "127.0.0.1:18080:8080/tcp" {
		t.Fatalf("srv = %+v", srv)
	}
	in.waitLogs("srv", "GUEST-SRV-UP")
	in.fails("already taken", create("dup", "-p", "18080:80")...)
	in.jsonOut(&cli, append(create("cli", "--network", "shared"), "--json")...)
	in.jsonOut(&iso, append(create("iso"), "--json")...)
	if iso.Network != "nat" || cli.IP == srv.IP || iso.IP == cli.IP || iso.IP == "" {
		t.Fatalf("addresses: srv %s, cli %s, iso %s (%s)", srv.IP, cli.IP, iso.IP, iso.Network)
	}
	var list []vmJSON
	in.jsonOut(&list, "vm", "ls", "--json")
	if len(list) != 3 {
		t.Errorf("refused creates left VMs behind: %+v", list)
	}

	// The host reaches a guest directly and through its published port.
	for _, addr := range []string{srv.IP + ":8080", "127.0.0.1:18080"} {
		if err := in.echoes(addr, "hello "+addr); err != nil {
			t.Error(err)
		}
	}
	// DNS on the bridge: VM names, reverse names, everything else forwarded.
	for _, network := range []string{"udp", "tcp"} {
		r, err := in.lookup(network, "srv.vm.", dns.TypeA)
		if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != srv.IP {
			t.Errorf("%s srv.vm: %v %v", network, r, err)
		}
		r, err = in.lookup(network, "2.0.253.10.in-addr.arpa.", dns.TypePTR)
		if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "srv.vm." {
			t.Errorf("%s PTR: %v %v", network, r, err)
		}
		r, err = in.lookup(network, "example.test.", dns.TypeA)
		if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
			t.Errorf("%s forwarded example.test: %v %v", network, r, err)
		}
	}
	// Guests: shared VMs reach each other by name, the NAT (isolated) one
	// does not; both reach the outside through NAT.
	in.waitLogs("cli", "NET-DONE")
	in.waitLogs("iso", "NET-DONE")
	cliLog, isoLog := in.ok("vm", "logs", "cli"), in.ok("vm", "logs", "iso")
	for _, want := range []string{"RESOLVED srv.vm " + srv.IP, "PEER hi-from-cli", "OUTSIDE 198.51.100.1"} {
		if !strings.Contains(cliLog, want) {
			t.Errorf("cli's console lacks %q:\n%s", want, cliLog)
		}
	}
	for _, want := range []string{"RESOLVED srv.vm " + srv.IP, "PEER \n", "OUTSIDE 198.51.100.1"} {
		if !strings.Contains(strings.ReplaceAll(isoLog, "\r", ""), want) {
			t.Errorf("iso's console lacks %q:\n%s", want, isoLog)
		}
	}
	rules := in.nft()
	for _, want := range []string{`ip saddr ` + srv.IP + ` oifname != "banger0" masquerade comment "vm srv ` + srv.IP + `"`, `comment "vm cli `, `comment "vm iso `} {
		if !strings.Contains(rules, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rules)
		}
	}
	if strings.Count(rules, "masquerade") != 3 || strings.Count(rules, "jump shared") != 2 {
		t.Errorf("ruleset:\n%s", rules)
	}
	if taps := in.taps(); len(taps) != 3 {
		t.Errorf("TAPs = %v, want 3", taps)
	}
	// Each VM's TAP is pinned to its MAC and address, and so is the
	// host's neighbour entry for it.
	guard, neigh := in.guard(), in.neighbours()
	for _, v := range []vmJSON{srv, cli, iso} {
		id := vmID(t, v)
		if want := fmt.Sprintf("%q . %s . %s", hostnet.TAPName(id), hostnet.MAC(id), v.IP); !strings.Contains(guard, want) {
			t.Errorf("the guard lacks %s:\n%s", want, guard)
		}
		if want := hostnet.MAC(id).String() + " PERMANENT"; neigh[v.IP] != want {
			t.Errorf("the host's entry for %s = %q, want %q", v.IP, neigh[v.IP], want)
		}
	}

	// A guest cannot pass as another: iso claims srv's address (an
	// unsolicited ARP), then sends with srv's MAC (which would teach the
	// bridge that srv is behind iso's TAP), then with an address that is
	// no VM's. The host still reaches srv, and iso reaches the host as
	// itself only. What reaching the host means here is a question to
	// banger's DNS on the bridge address: the one service of the host a
	// VM may use (a ping, or any other port, is refused by design). The
	// forged address's ARP requests for the gateway go unanswered, and
	// the guest's neighbour entry stays in that state for up to three
	// seconds, holding back the next question: it is flushed first.
	srvMAC, isoMAC := hostnet.MAC(vmID(t, srv)).String(), hostnet.MAC(vmID(t, iso)).String()
	spoof := strings.NewReplacer("SRVIP", srv.IP, "SRVMAC", srvMAC, "ISOMAC", isoMAC).Replace(`B=/bin/busybox
Q="$B nslookup -timeout=2 -retry=1 srv.vm 10.253.0.1"
$B ping -c 1 -W 2 10.253.0.1 >/dev/null || echo HOST-PING-REFUSED
$Q >/dev/null && echo OWN-PASSED
$B ip addr add SRVIP/32 dev eth0
$B arping -U -c 2 -w 2 -I eth0 -s SRVIP SRVIP >/dev/null
$B ip addr del SRVIP/32 dev eth0
$B ip link set eth0 address SRVMAC
$Q >/dev/null && echo FORGED-MAC-PASSED
$B ip link set eth0 address ISOMAC
$B ip addr add 10.253.0.77/24 dev eth0
$B ip route add 10.253.0.1/32 dev eth0 src 10.253.0.77
$Q >/dev/null && echo FORGED-IP-PASSED
$B ip route del 10.253.0.1/32 dev eth0
$B ip addr del 10.253.0.77/24 dev eth0
$B ip neigh flush dev eth0 >/dev/null
$Q >/dev/null && echo OWN-STILL-PASSES
true`)
	if out := in.ok("vm", "exec", "iso", "--", "/bin/busybox", "sh", "-c", spoof); out != "HOST-PING-REFUSED\nOWN-PASSED\nOWN-STILL-PASSES\n" {
		t.Errorf("from iso, want the host refused but for DNS, and its own address only to reach that:\n%s", out)
	}
	if got := in.neighbours()[srv.IP]; got != srvMAC+" PERMANENT" {
		t.Errorf("after iso's ARP, the host's entry for srv = %q, want %s PERMANENT", got, srvMAC)
	}
	if err := in.echoes(srv.IP+":8080", "still srv"); err != nil {
		t.Errorf("the host no longer reaches srv after iso claimed its addresses: %v", err)
	}

	// kill -9 of the daemon; meanwhile a VM dies and a stray TAP appears.
	// The restarted daemon restores DNS and ports, drops the dead VM's
	// rules and removes what belongs to no VM.
	syscall.Kill(in.daemonPID(), syscall.SIGKILL)
	syscall.Kill(iso.PID, syscall.SIGKILL)
	testenv.IP(t, "-n", in.netns, "tuntap", "add", "dev", "bg-stray0", "mode", "tap")
	for i := 0; i < 100 && processAlive(iso.PID); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	in.jsonOut(&iso, "vm", "show", "iso", "--json")
	if iso.State != "stopped" {
		t.Errorf("iso after its VMM died = %s", iso.State)
	}
	if taps := in.taps(); len(taps) != 3 || strings.Contains(strings.Join(taps, " "), "stray") {
		t.Errorf("TAPs after restart = %v: want srv's, cli's and the stopped iso's", taps)
	}
	rules = in.nft()
	if strings.Count(rules, "masquerade") != 2 || strings.Contains(rules, "vm iso") {
		t.Errorf("ruleset after restart:\n%s", rules)
	}
	if e := in.neighbours()[iso.IP]; strings.Contains(e, "PERMANENT") {
		t.Errorf("the dead VM's neighbour entry survived the restart: %s", e)
	}
	if err := in.echoes("127.0.0.1:18080", "after restart"); err != nil {
		t.Errorf("published port after a daemon restart: %v", err)
	}
	if r, err := in.lookup("udp", "srv.vm.", dns.TypeA); err != nil || len(r.Answer) != 1 {
		t.Errorf("srv.vm after a daemon restart: %v %v", r, err)
	}
	if r, err := in.lookup("udp", "iso.vm.", dns.TypeA); err != nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("a stopped VM still resolves: %v %v", r, err)
	}

	// Stop and start keep the address; rm leaves nothing.
	in.ok("vm", "stop", "srv")
	if _, err := in.dial("127.0.0.1:18080"); err == nil {
		t.Error("a stopped VM's port is still published")
	}
	var again vmJSON
	in.jsonOut(&again, "vm", "start", "srv", "--json")
	if again.IP != srv.IP {
		t.Errorf("address changed across stop/start: %s then %s", srv.IP, again.IP)
	}
	in.ok("vm", "rm", "-f", "srv", "cli", "iso")
	if rules := in.nft(); rules != "" {
		t.Errorf("ruleset after every VM is gone:\n%s", rules)
	}
	if taps := in.taps(); len(taps) != 0 {
		t.Errorf("TAPs after every VM is gone: %v", taps)
	}
	for a, e := range in.neighbours() {
		if strings.Contains(e, "PERMANENT") {
			t.Errorf("neighbour entry %s %s left after every VM is gone", a, e)
		}
	}
	if out, _ := exec.Command("ip", "netns", "exec", in.netns, "cat", "/proc/sys/net/ipv4/ip_forward").Output(); strings.TrimSpace(string(out)) != "0" {
		t.Errorf("ip_forward after every VM is gone = %s, want 0", out)
	}
}

// TestVMAddressPool fills a small subnet and checks the next VM is
// refused with nothing left behind, and that concurrent creates never
// share an address.
func TestVMAddressPool(t *testing.T) {
	in := newInstance(t)
	in.env = append(in.env, "BANGER_SUBNET=10.253.0.0/29")
	vmFixtures(t, in)
	errs := make(chan string, 5)
	for i := 0; i < 5; i++ {
		go func(i int) {
			r := in.run("vm", "create", "--name", fmt.Sprintf("p%d", i), "--image", "bb", "--kernel", "k", "--no-start", "--vmm", "qemu")
			errs <- r.stderr
		}(i)
	}
	for i := 0; i < 5; i++ {
		if e := <-errs; e != "" && !strings.Contains(e, "creating VM") {
			t.Errorf("create: %s", e)
		}
	}
	var list []vmJSON
	in.jsonOut(&list, "vm", "ls", "--json")
	seen := map[string]bool{}
	for _, v := range list {
		if seen[v.IP] || v.IP == "" {
			t.Errorf("address %q given twice or not at all: %+v", v.IP, list)
		}
		seen[v.IP] = true
	}
	if len(list) != 5 {
		t.Fatalf("%d VMs, want 5", len(list))
	}
	entries, _ := os.ReadDir(in.path("state", "vms"))
	in.fails("all 5 addresses of 10.253.0.0/29 are taken", "vm", "create", "--name", "p5", "--image", "bb", "--kernel", "k", "--no-start", "--vmm", "qemu")
	if after, _ := os.ReadDir(in.path("state", "vms")); len(after) != len(entries) {
		t.Errorf("a refused create left a VM directory")
	}
	// A removed VM's address is free again; --network none needs none.
	in.ok("vm", "rm", "p2")
	in.ok("vm", "create", "--name", "p5", "--image", "bb", "--kernel", "k", "--no-start", "--vmm", "qemu")
	var none vmJSON
	in.jsonOut(&none, "vm", "create", "--name", "p6", "--image", "bb", "--kernel", "k", "--no-start", "--network", "none", "--json")
	if none.IP != "" || none.Network != "none" {
		t.Errorf("--network none VM = %+v", none)
	}
	in.fails("needs a network", "vm", "create", "--name", "p7", "--image", "bb", "--network", "none", "-p", "8080:80")
}
