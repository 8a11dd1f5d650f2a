// Package config is banger's configuration file: every default in one
// documented TOML file ($BANGER_HOME/config.toml, else
// /etc/banger/config.toml), validated with errors that name the file and
// line, and an account of where each effective value came from.
package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Config is every setting, with its default until something sets it.
type Config struct {
	// VM defaults (banger vm run / create).
	DefaultImage  string `toml:"default_image"`
	DefaultKernel string `toml:"default_kernel"`
	VMM           string `toml:"vmm"`
	VCPU          int    `toml:"vcpu"`
	Memory        string `toml:"memory"`
	DiskSize      string `toml:"disk_size"`
	Network       string `toml:"network"`
	// Warm: vm run and vm create restore from a warm template of the
	// same image, kernel and VM shape instead of booting, and a cold
	// boot leaves one for the next.
	Warm bool `toml:"warm"`
	// ConsoleLogMax caps each VM's console log on disk (console.log
	// and its rotated half, console.log.1, together): what a guest
	// writes to its console cannot fill the host's disk.
	ConsoleLogMax string `toml:"console_log_max"`

	Net         Net         `toml:"net"`
	Firecracker Firecracker `toml:"firecracker"`
	Limits      Limits      `toml:"limits"`
	E2B         E2B         `toml:"e2b"`
}

// E2B is bangerd's E2B-compatible endpoint: E2B's control plane and
// envd's API on one listener, for the unmodified E2B SDKs. Off until
// Listen is set.
type E2B struct {
	// Listen is the TCP address to serve on ("127.0.0.1:3000"); ""
	// turns the endpoint off.
	Listen string `toml:"listen"`
	// Domain is the base of sandbox host names, PORT-SANDBOXID.DOMAIN
	// (what the SDK's getHost returns): a wildcard DNS name that
	// points at this host. "" tells the SDK nothing (it uses
	// $E2B_DOMAIN).
	Domain string `toml:"domain"`
	// TLSCert and TLSKey (PEM files) make the listener HTTPS, as the
	// SDK expects of a domain's host names.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// Aliases name images as templates, "TEMPLATE=IMAGE" each; the
	// SDK's default template, base, is default_image unless aliased.
	Aliases []string `toml:"aliases"`
}

// AliasMap is Aliases as a map from template to image.
func (e E2B) AliasMap() map[string]string {
	out := map[string]string{}
	for _, a := range e.Aliases {
		if k, v, ok := strings.Cut(a, "="); ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}

// Limits bound what each user other than root may have. Zero is no
// limit (the default).
type Limits struct {
	// VMs is how many VMs one user may have, in any state.
	VMs int `toml:"vms"`
	// VCPUs and Memory bound what one user's running VMs add up to.
	VCPUs  int    `toml:"vcpus"`
	Memory string `toml:"memory"`
	// PublicPorts lets users other than root publish ports on addresses
	// other than loopback (-p 0.0.0.0:H:G); LowPorts, host ports below
	// 1024.
	PublicPorts bool `toml:"public_ports"`
	LowPorts    bool `toml:"low_ports"`
}

// MemoryBytes is the memory limit in bytes, 0 for none.
func (l Limits) MemoryBytes() int64 {
	n, _ := ParseSize(l.Memory)
	return n
}

// Net is the VM network.
type Net struct {
	Bridge      string   `toml:"bridge"`
	Subnet      string   `toml:"subnet"`
	DNSUpstream []string `toml:"dns_upstream"`
	// SubnetUsers may set the subnet through the API (POST
	// /v1/network) besides root, while no VM holds an address:
	// banger-kubelet's user, which makes it its node's podCIDR.
	SubnetUsers []string `toml:"subnet_users"`
}

// Firecracker is where Firecracker and its jailer are.
type Firecracker struct {
	Binary    string `toml:"binary"`
	Jailer    string `toml:"jailer"`
	JailerUID int    `toml:"jailer_uid"`
	JailerGID int    `toml:"jailer_gid"`
}

// Defaults is the configuration with no file.
func Defaults() Config {
	return Config{DefaultImage: "debian", DefaultKernel: "debian-12-cloud", VMM: "auto", VCPU: 2, Memory: "1G", DiskSize: "8G", Network: "nat", Warm: true, ConsoleLogMax: "4M",
		Net:         Net{Bridge: "banger0", Subnet: "10.253.0.0/24"},
		Firecracker: Firecracker{JailerUID: 30000, JailerGID: 30000}}
}

// Source says where an effective value came from: "default", a file
// and line ("/etc/banger/config.toml:4"), or a flag or variable.
type Source map[string]string

// Loaded is a configuration and the sources of its values.
type Loaded struct {
	Config
	Path   string // the file read, "" when there was none
	Source Source
}

// Path is the config file for an instance home ("" for the system one).
func Path(home string) string {
	if home != "" {
		return home + "/config.toml"
	}
	return "/etc/banger/config.toml"
}

// Load reads path over the defaults. A missing file is the defaults;
// anything wrong in it is one error naming the file and line.
func Load(path string) (Loaded, error) {
	l := Loaded{Config: Defaults(), Source: Source{}}
	for _, k := range Keys() {
		l.Source[k] = "default"
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, fmt.Errorf("reading %s: %w", path, err)
	}
	l.Path = path
	md, err := toml.Decode(string(b), &l.Config)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return l, fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		// A type mismatch: say which key.
		return l, fmt.Errorf("%s: %v", path, err)
	}
	lines := keyLines(b)
	for _, k := range md.Undecoded() {
		return l, fmt.Errorf("%s:%d: unknown setting %q (known: %s)", path, lines[k.String()], k.String(), strings.Join(Keys(), ", "))
	}
	for _, k := range md.Keys() {
		if _, ok := l.Source[k.String()]; ok {
			l.Source[k.String()] = fmt.Sprintf("%s:%d", path, lines[k.String()])
		}
	}
	for key, err := range l.Config.validate() {
		line := lines[key]
		if line == 0 {
			return l, fmt.Errorf("%s: %s: %v", path, key, err)
		}
		return l, fmt.Errorf("%s:%d: %s: %v", path, line, key, err)
	}
	return l, nil
}

// Keys lists every setting's dotted name, in file order.
func Keys() []string {
	return []string{"default_image", "default_kernel", "vmm", "vcpu", "memory", "disk_size", "network", "warm", "console_log_max",
		"net.bridge", "net.subnet", "net.dns_upstream", "net.subnet_users",
		"firecracker.binary", "firecracker.jailer", "firecracker.jailer_uid", "firecracker.jailer_gid",
		"limits.vms", "limits.vcpus", "limits.memory", "limits.public_ports", "limits.low_ports",
		"e2b.listen", "e2b.domain", "e2b.tls_cert", "e2b.tls_key", "e2b.aliases"}
}

// Value is one setting's effective value as text.
func (c Config) Value(key string) string {
	switch key {
	case "default_image":
		return c.DefaultImage
	case "default_kernel":
		return c.DefaultKernel
	case "vmm":
		return c.VMM
	case "vcpu":
		return strconv.Itoa(c.VCPU)
	case "memory":
		return c.Memory
	case "disk_size":
		return c.DiskSize
	case "network":
		return c.Network
	case "warm":
		return strconv.FormatBool(c.Warm)
	case "console_log_max":
		return c.ConsoleLogMax
	case "net.bridge":
		return c.Net.Bridge
	case "net.subnet":
		return c.Net.Subnet
	case "net.dns_upstream":
		return strings.Join(c.Net.DNSUpstream, ",")
	case "net.subnet_users":
		return strings.Join(c.Net.SubnetUsers, ",")
	case "firecracker.binary":
		return c.Firecracker.Binary
	case "firecracker.jailer":
		return c.Firecracker.Jailer
	case "firecracker.jailer_uid":
		return strconv.Itoa(c.Firecracker.JailerUID)
	case "firecracker.jailer_gid":
		return strconv.Itoa(c.Firecracker.JailerGID)
	case "limits.vms":
		return strconv.Itoa(c.Limits.VMs)
	case "limits.vcpus":
		return strconv.Itoa(c.Limits.VCPUs)
	case "limits.memory":
		return c.Limits.Memory
	case "limits.public_ports":
		return strconv.FormatBool(c.Limits.PublicPorts)
	case "limits.low_ports":
		return strconv.FormatBool(c.Limits.LowPorts)
	case "e2b.listen":
		return c.E2B.Listen
	case "e2b.domain":
		return c.E2B.Domain
	case "e2b.tls_cert":
		return c.E2B.TLSCert
	case "e2b.tls_key":
		return c.E2B.TLSKey
	case "e2b.aliases":
		return strings.Join(c.E2B.Aliases, ",")
	}
	return ""
}

// validate returns the first problem of each bad setting, by key, in
// file order (a map iterated in Keys order by the caller).
func (c Config) validate() func(func(string, error) bool) {
	errs := map[string]error{}
	switch c.VMM {
	case "auto", "qemu", "firecracker":
	default:
		errs["vmm"] = fmt.Errorf("%q: use auto, qemu or firecracker", c.VMM)
	}
	if c.VCPU < 1 || c.VCPU > 32 {
		errs["vcpu"] = fmt.Errorf("%d: use 1 to 32", c.VCPU)
	}
	if n, err := ParseSize(c.Memory); err != nil || n < 128<<20 {
		errs["memory"] = fmt.Errorf("%q: a size of at least 128M, such as 1G", c.Memory)
	}
	if n, err := ParseSize(c.DiskSize); err != nil || n < 64<<20 {
		errs["disk_size"] = fmt.Errorf("%q: a size of at least 64M, such as 8G", c.DiskSize)
	}
	// Each half of the log keeps at least a few screens of boot
	// messages (consolelog.MinMax).
	if n, err := ParseSize(c.ConsoleLogMax); err != nil || n < 64<<10 {
		errs["console_log_max"] = fmt.Errorf("%q: a size of at least 64K, such as 4M", c.ConsoleLogMax)
	}
	switch c.Network {
	case "nat", "shared", "none":
	default:
		errs["network"] = fmt.Errorf("%q: use nat, shared or none", c.Network)
	}
	if _, err := netip.ParsePrefix(c.Net.Subnet); err != nil {
		errs["net.subnet"] = fmt.Errorf("%q: a CIDR such as 10.253.0.0/24", c.Net.Subnet)
	}
	if c.Net.Bridge == "" || len(c.Net.Bridge) > 15 {
		errs["net.bridge"] = fmt.Errorf("%q: an interface name of 1 to 15 characters", c.Net.Bridge)
	}
	for _, u := range c.Net.DNSUpstream {
		if _, err := netip.ParseAddr(u); err != nil {
			if _, err := netip.ParseAddrPort(u); err != nil {
				errs["net.dns_upstream"] = fmt.Errorf("%q: an IP address, or IP:PORT", u)
			}
		}
	}
	for _, u := range c.Net.SubnetUsers {
		if u == "" || strings.ContainsAny(u, " :,/") {
			errs["net.subnet_users"] = fmt.Errorf("%q: a user name", u)
		}
	}
	if c.Limits.VMs < 0 {
		errs["limits.vms"] = fmt.Errorf("%d: a number of VMs, 0 for no limit", c.Limits.VMs)
	}
	if c.Limits.VCPUs < 0 {
		errs["limits.vcpus"] = fmt.Errorf("%d: a number of vCPUs, 0 for no limit", c.Limits.VCPUs)
	}
	if c.Limits.Memory != "" {
		if n, err := ParseSize(c.Limits.Memory); err != nil || n < 128<<20 {
			errs["limits.memory"] = fmt.Errorf("%q: a size of at least 128M, such as 16G (or leave it out for no limit)", c.Limits.Memory)
		}
	}
	if c.E2B.Listen != "" {
		if _, port, err := net.SplitHostPort(c.E2B.Listen); err != nil || port == "" {
			errs["e2b.listen"] = fmt.Errorf("%q: HOST:PORT, such as 127.0.0.1:3000", c.E2B.Listen)
		}
	}
	if d := c.E2B.Domain; d != "" && (strings.ContainsAny(d, ":/ ") || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".")) {
		errs["e2b.domain"] = fmt.Errorf("%q: a DNS name such as e2b.example.com (its *.e2b.example.com pointing at this host)", d)
	}
	if (c.E2B.TLSCert == "") != (c.E2B.TLSKey == "") {
		errs["e2b.tls_cert"] = errors.New("give both tls_cert and tls_key, or neither")
	}
	for _, a := range c.E2B.Aliases {
		k, v, ok := strings.Cut(a, "=")
		if !ok || strings.TrimSpace(k) == "" || strings.TrimSpace(v) == "" {
			errs["e2b.aliases"] = fmt.Errorf("%q: TEMPLATE=IMAGE, such as \"base=debian\"", a)
		}
	}
	if c.Firecracker.JailerUID <= 0 || c.Firecracker.JailerGID <= 0 {
		errs["firecracker.jailer_uid"] = errors.New("the jailer's uid and gid must not be root (0)")
	}
	return func(yield func(string, error) bool) {
		for _, k := range Keys() {
			if err, ok := errs[k]; ok && !yield(k, err) {
				return
			}
		}
	}
}

var (
	tableRE = regexp.MustCompile(`^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]`)
	keyRE   = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+)\s*=`)
)

// keyLines finds the line of each top-level and table key: the TOML
// decoder keeps positions to itself.
func keyLines(b []byte) map[string]int {
	out := map[string]int{}
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		if m := tableRE.FindStringSubmatch(l); m != nil {
			table = m[1] + "."
			out[m[1]] = n
			continue
		}
		if m := keyRE.FindStringSubmatch(l); m != nil {
			out[table+m[1]] = n
		}
	}
	return out
}

// ParseSize reads sizes such as 512M, 8G (or 8Gi), 1T or plain bytes.
func ParseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	u := strings.TrimSuffix(strings.ToUpper(s), "I")
	mult := int64(1)
	switch u[len(u)-1:] {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	case "T":
		mult = 1 << 40
	}
	if mult > 1 {
		u = u[:len(u)-1]
	}
	n, err := strconv.ParseInt(u, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: use a number with K, M, G or T, e.g. 512M or 8G", s)
	}
	return n * mult, nil
}

// Set overrides one setting from a flag or variable (src says which),
// validating it as the file would.
func (l *Loaded) Set(key, value, src string) error {
	c := l.Config
	switch key {
	case "net.bridge":
		c.Net.Bridge = value
	case "net.subnet":
		c.Net.Subnet = value
	case "net.dns_upstream":
		c.Net.DNSUpstream = nil
		for _, u := range strings.Split(value, ",") {
			if u = strings.TrimSpace(u); u != "" {
				c.Net.DNSUpstream = append(c.Net.DNSUpstream, u)
			}
		}
	case "firecracker.binary":
		c.Firecracker.Binary = value
	case "firecracker.jailer":
		c.Firecracker.Jailer = value
	case "firecracker.jailer_uid", "firecracker.jailer_gid":
		n, err := strconv.Atoi(value)
		if err != nil {
			return fmt.Errorf("%q is not a number", value)
		}
		if key == "firecracker.jailer_uid" {
			c.Firecracker.JailerUID = n
		} else {
			c.Firecracker.JailerGID = n
		}
	default:
		return fmt.Errorf("%s cannot be set this way", key)
	}
	for k, err := range c.validate() {
		if k == key {
			return err
		}
	}
	l.Config = c
	l.Source[key] = src
	return nil
}
