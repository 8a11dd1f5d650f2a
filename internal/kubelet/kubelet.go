package kubelet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"banger/client"
	"banger/internal/paths"
)

// Config is what banger-kubelet runs with; the flags keep the kubelet's
// names.
type Config struct {
	Kubeconfig string // --kubeconfig: the node's credentials
	NodeName   string // --node-name (default: the host name)
	// NodeIP is the node's InternalIP, where the apiserver dials the
	// kubelet port (default: the address of the default route's
	// interface).
	NodeIP string
	Port   int // --port, 10250
	// ClientCAFile: only clients with certificates it signed may use
	// the kubelet port (the apiserver's --kubelet-client-certificate).
	ClientCAFile string
	// TLSCertFile and TLSKeyFile serve the kubelet port (default: a
	// self-signed certificate for NodeIP).
	TLSCertFile, TLSKeyFile string
	// Host is bangerd's socket (default: $BANGER_HOST, else
	// $BANGER_HOME's, else the system daemon's).
	Host string
	// PodCIDR is the node's pod network when the cluster assigns none
	// (default: the Node's spec.podCIDR, as kube-controller-manager
	// --allocate-node-cidrs sets it).
	PodCIDR string
	// ClusterCIDR is the whole cluster's pod network, which pods reach
	// with their own addresses (default: the podCIDR's /16).
	ClusterCIDR string
	MaxPods     int64 // --max-pods, 110
	// APIQPS and APIBurst bound the requests to the apiserver
	// (--kube-api-qps 50, --kube-api-burst 100, the kubelet's defaults):
	// client-go's own 5 and 10 hold a pod's Running back by up to
	// 200 ms once a few pods start together.
	APIQPS   float64
	APIBurst int
	RootDir  string // --root-dir: pods' logs and records
	Log      *slog.Logger
	// Backoff is the first wait before a command restarts or a pull is
	// tried again (the kubelet's 10 s), doubling to 5 minutes.
	Backoff time.Duration
	// StatusInterval is how often bangerd is checked (5 s).
	StatusInterval time.Duration
}

// socket is bangerd's socket as the CLI finds it.
func (c Config) socket() (string, error) {
	if c.Host != "" {
		return c.Host, nil
	}
	if h := os.Getenv(paths.EnvHost); h != "" {
		return h, nil
	}
	l, err := paths.FromEnv("")
	if err != nil {
		return "", err
	}
	return l.Socket(), nil
}

func (c *Config) defaults() error {
	if c.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		c.NodeName = h
	}
	if c.Port == 0 {
		c.Port = 10250
	}
	if c.MaxPods == 0 {
		c.MaxPods = 110
	}
	if c.APIQPS == 0 {
		c.APIQPS = 50
	}
	if c.APIBurst == 0 {
		c.APIBurst = 100
	}
	if c.Backoff == 0 {
		c.Backoff = 10 * time.Second
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = 5 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.NodeIP == "" {
		c.NodeIP = defaultIP()
	}
	if c.RootDir == "" {
		c.RootDir = defaultRootDir(c.NodeName)
	}
	return nil
}

// Validate reports every problem of c.
func (c Config) Validate() error {
	var errs []error
	if c.Kubeconfig == "" {
		errs = append(errs, errors.New("--kubeconfig: the node's kubeconfig is required (its user: system:node:NAME in group system:nodes)"))
	}
	if c.ClientCAFile == "" {
		errs = append(errs, errors.New("--client-ca-file is required: the CA that signed the apiserver's kubelet client certificate (exec is never anonymous)"))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("--tls-cert-file and --tls-private-key-file go together"))
	}
	if _, err := netip.ParseAddr(c.NodeIP); err != nil {
		errs = append(errs, fmt.Errorf("--node-ip %q: an IP address", c.NodeIP))
	}
	for flag, v := range map[string]string{"--pod-cidr": c.PodCIDR, "--cluster-cidr": c.ClusterCIDR} {
		if v == "" {
			continue
		}
		if p, err := netip.ParsePrefix(v); err != nil || p != p.Masked() || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("%s %q: an IPv4 network such as 10.244.0.0/16", flag, v))
		}
	}
	if c.Port <= 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d: a TCP port", c.Port))
	}
	if c.APIQPS < 0 || c.APIBurst < 0 {
		errs = append(errs, fmt.Errorf("--kube-api-qps %g, --kube-api-burst %d: neither may be negative (0 takes the defaults, 50 and 100)", c.APIQPS, c.APIBurst))
	}
	return errors.Join(errs...)
}

func defaultRootDir(node string) string {
	if os.Geteuid() == 0 {
		return filepath.Join("/var/lib/banger-kubelet", node)
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "banger-kubelet", node)
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "banger-kubelet", node)
}

// defaultIP is the address the host sends from by default (a UDP
// "connection" sends nothing), else 127.0.0.1.
func defaultIP() string {
	c, err := net.Dial("udp4", "192.0.2.1:9")
	if err != nil {
		return "127.0.0.1"
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}

// Run is banger-kubelet: it registers the node, adopts the VMs it made
// before a restart, serves the kubelet port and runs pods until ctx
// ends. VMs keep running when it stops: a restarted banger-kubelet
// adopts them.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Log
	// virtual-kubelet's own logs (its controllers, the kubelet port)
	// into ours.
	vklog.L = vkslog.FromSlog(log.With("from", "virtual-kubelet"))
	ctx = vklog.WithLogger(ctx, vklog.L)
	// client-go's own (klog) only from warnings up: at info it says
	// "caches are synced" at every pod status update.
	klog.SetSlogLogger(slog.New(minLevel{log.With("from", "client-go").Handler(), slog.LevelWarn}))
	sock, err := cfg.socket()
	if err != nil {
		return err
	}
	bc := client.New(sock)
	rest, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("--kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	rest.QPS, rest.Burst = float32(cfg.APIQPS), cfg.APIBurst
	k8s, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return fmt.Errorf("--kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	tlsCfg, err := serverTLS(cfg)
	if err != nil {
		return err
	}
	host, err := hostCapacity()
	if err != nil {
		return err
	}
	vmm := "qemu"
	if c, err := bc.Config(ctx); err == nil {
		for _, s := range c.Settings {
			if s.Key == "vmm" && s.Value != "auto" {
				vmm = s.Value
			}
		}
	}
	spec := nodeSpec(cfg.NodeName, cfg.NodeIP, int32(cfg.Port), vmm)
	if cfg.PodCIDR != "" {
		spec.Spec.PodCIDR, spec.Spec.PodCIDRs = cfg.PodCIDR, []string{cfg.PodCIDR}
	}

	eb := record.NewBroadcaster()
	eb.StartRecordingToSink(&corev1client.EventSinkImpl{Interface: k8s.CoreV1().Events("")})
	defer eb.Shutdown()
	recorder := eb.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "banger-kubelet", Host: cfg.NodeName})

	p := &Provider{bc: bc, node: cfg.NodeName, nodeIP: cfg.NodeIP, k8s: k8s, recorder: recorder, log: log,
		stateDir: cfg.RootDir, maxLog: 10 << 20, backoff: cfg.Backoff, backoffMax: 5 * time.Minute,
		started: time.Now(), netReady: make(chan struct{}), runs: map[string]*podRun{}}
	if err := p.ensureDirs(); err != nil {
		return fmt.Errorf("--root-dir %s: %w", cfg.RootDir, err)
	}
	var readyOnce sync.Once
	subnet := func(ctx context.Context) (string, error) {
		cidr := cfg.PodCIDR
		if cidr == "" {
			n, err := k8s.CoreV1().Nodes().Get(ctx, cfg.NodeName, metav1.GetOptions{})
			if err != nil || n.Spec.PodCIDR == "" {
				return "", nil
			}
			cidr = n.Spec.PodCIDR
		}
		n, err := bc.Network(ctx)
		if err != nil {
			return "", err
		}
		if n.Subnet != cidr {
			if _, err := bc.SetSubnet(ctx, cidr); err != nil {
				return "", fmt.Errorf("bangerd's VM subnet is %s and this node's podCIDR %s: it cannot change: %v", n.Subnet, cidr, err)
			}
			log.Info("VM subnet set to the node's podCIDR", "subnet", cidr)
		}
		readyOnce.Do(func() {
			cluster := cfg.ClusterCIDR
			if cluster == "" {
				pfx := netip.MustParsePrefix(cidr)
				cluster = netip.PrefixFrom(pfx.Addr(), min(16, pfx.Bits())).Masked().String()
			}
			p.direct = []string{cluster}
			close(p.netReady)
		})
		return cidr, nil
	}
	health := &nodeHealth{bc: bc, socket: sock, name: cfg.NodeName, host: host, maxPods: cfg.MaxPods, root: os.Geteuid() == 0,
		interval: cfg.StatusInterval, subnet: subnet, node: spec}

	auth, err := nodeutil.WebhookAuth(k8s, cfg.NodeName, func(c *nodeutil.WebhookAuthConfig) error {
		ca, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", cfg.ClientCAFile)
		if err != nil {
			return fmt.Errorf("--client-ca-file %s: %w", cfg.ClientCAFile, err)
		}
		c.AuthnConfig.ClientCertificateCAContentProvider = ca
		return nil
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	// NewNode makes a client from $KUBECONFIG before it takes ours, and
	// warns when it cannot: point it at the same file.
	os.Setenv("KUBECONFIG", cfg.Kubeconfig)
	n, err := nodeutil.NewNode(cfg.NodeName,
		func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
			p.pods = pc.Pods
			return p, health, nil
		},
		nodeutil.WithClient(k8s),
		func(c *nodeutil.NodeConfig) error {
			c.NodeSpec = spec
			c.HTTPListenAddr = net.JoinHostPort(cfg.NodeIP, strconv.Itoa(cfg.Port))
			c.TLSConfig = tlsCfg
			c.EventRecorder = recorder
			c.Handler = nodeutil.WithAuth(auth, mux)
			c.StreamIdleTimeout = 4 * time.Hour
			c.StreamCreationTimeout = 30 * time.Second
			// podEnv resolves environments: virtual-kubelet refuses
			// status.podIP, known here once the VM exists.
			c.SkipDownwardAPIResolution = true
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
	)
	if err != nil {
		return err
	}
	if err := p.adopt(ctx); err != nil {
		return err
	}
	log.Info("banger-kubelet starting", "node", cfg.NodeName, "ip", cfg.NodeIP, "port", cfg.Port, "bangerd", sock, "root", cfg.RootDir)
	err = n.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// serverTLS is the kubelet port's TLS: the given certificate or a
// self-signed one, and client certificates required, signed by the
// client CA.
func serverTLS(cfg Config) (*tls.Config, error) {
	pem, err := os.ReadFile(cfg.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("--client-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--client-ca-file %s holds no PEM certificate", cfg.ClientCAFile)
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	if cfg.TLSCertFile != "" {
		c, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert-file %s, --tls-private-key-file %s: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
		}
		t.Certificates = []tls.Certificate{c}
		return t, nil
	}
	c, err := selfSigned(cfg.NodeName, cfg.NodeIP)
	if err != nil {
		return nil, err
	}
	t.Certificates = []tls.Certificate{c}
	return t, nil
}

// selfSigned is a serving certificate for the node's address, valid a
// year: for clusters whose apiserver does not check kubelets'
// certificates (no --kubelet-certificate-authority).
func selfSigned(node, ip string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP(ip)}, DNSNames: []string{node}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// minLevel is a handler that drops records below min.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(a), h.min}
}
func (h minLevel) WithGroup(g string) slog.Handler { return minLevel{h.Handler.WithGroup(g), h.min} }
