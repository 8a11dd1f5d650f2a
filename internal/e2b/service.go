// Package e2b is bangerd's E2B-compatible endpoint: E2B's control plane
// (sandboxes, timeouts, pause and connect, snapshots and forks, as the
// e2b SDK 2.51 calls them) and envd's API (the Connect-RPC process and
// filesystem services, /files, /health, /envs) on one HTTP listener, so
// code written for E2B runs unchanged against a banger host.
//
// It is a transport over the VM service, as the daemon's own API is: a
// sandbox is a VM of the same name, made and changed only through
// vm.Service, owned by the host user whose API key made it. envd's
// calls are translated into the guest agent's operations (detached
// processes, file system ops, metrics, ensure_user); nothing of envd
// runs in the guest. Traffic for any other port of a sandbox is
// relayed to that port inside the guest through the agent.
//
// It does not build templates (a template is a banger image), keep
// sandboxes' logs, or serve volumes.
package e2b

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os/user"
	"strconv"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vsockagent"
)

// EnvdVersion is the envd version the endpoint answers as. The SDK turns
// features on by it: 0.6.1 has everything translated here (closeStdin,
// octet-stream uploads, recursive watches) and nothing it is not (file
// metadata, 0.6.2; entries in watch events, 0.6.3).
const EnvdVersion = "0.6.1"

// EnvdPort is envd's port in every sandbox: E2b-Sandbox-Port or the
// PORT of a PORT-ID.DOMAIN host naming it reaches envd's API; any other
// port is relayed into the guest.
const EnvdPort = 49983

// DefaultUser is who envd runs commands and touches files as when the
// caller names nobody: E2B templates' user, made on first use.
const DefaultUser = "user"

// VMs is what the endpoint asks of the VM service (*vm.Service).
type VMs interface {
	Create(ctx context.Context, c vm.Caller, req api.VMCreateRequest, progress func(string)) (*api.VM, error)
	Get(ctx context.Context, c vm.Caller, name string) (api.VM, error)
	Start(ctx context.Context, c vm.Caller, name string, progress func(string)) (*api.VM, error)
	Remove(ctx context.Context, c vm.Caller, name string, force bool) (api.VM, error)
	Pause(ctx context.Context, c vm.Caller, name string) (*api.VM, error)
	Resume(ctx context.Context, c vm.Caller, name string) (*api.VM, error)
	SetPolicy(ctx context.Context, c vm.Caller, name string, req api.PolicyRequest) (*api.VM, error)
	Snapshot(ctx context.Context, c vm.Caller, name string, req api.SnapshotRequest) (api.Snapshot, error)
	GetSnapshot(ctx context.Context, c vm.Caller, name string) (api.Snapshot, error)
	Snapshots(ctx context.Context, c vm.Caller) ([]api.Snapshot, error)
	RemoveSnapshot(ctx context.Context, c vm.Caller, name string) (api.Snapshot, error)
	Fork(ctx context.Context, c vm.Caller, req api.ForkRequest) ([]api.VM, error)
	Agent(ctx context.Context, c vm.Caller, name string) (*vsockagent.Session, error)
}

// Images is what the endpoint asks of the image service: templates are
// images.
type Images interface {
	Get(ctx context.Context, name string) (api.Image, error)
	List(ctx context.Context) ([]api.Image, error)
}

// Deps are the endpoint's dependencies, given once by the daemon's
// wiring.
type Deps struct {
	VMs    VMs
	Images Images
	Store  *store.Store
	Log    *slog.Logger
	// Config is the [e2b] section; DefaultImage is what template
	// "base" stands for unless an alias says otherwise.
	Config       config.E2B
	DefaultImage string
	// Allowed says why uid may not use bangerd ("" when it may): a
	// key's owner who has left the banger group can no longer use it.
	// Nil: everyone may.
	Allowed func(uid, gid int) string
}

// Service is the E2B endpoint: the sandbox records, the keys, the
// expiry of sandboxes and the HTTP handler. Safe for concurrent use.
type Service struct {
	vms     VMs
	images  Images
	store   *store.Store
	log     *slog.Logger
	cfg     config.E2B
	aliases map[string]string
	allowed func(uid, gid int) string

	mu   sync.Mutex
	sbx  map[string]*sandbox // the records, by id; the store's copy
	rt   map[string]*runtime // what lives only while the daemon runs
	wake chan struct{}       // an end time changed: the reaper looks again

	handler   http.Handler
	proxyOnce sync.Once
	proxy     *httputil.ReverseProxy
}

// New loads the sandbox records and returns the endpoint. Nothing
// listens until Serve.
func New(ctx context.Context, d Deps) (*Service, error) {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	s := &Service{vms: d.VMs, images: d.Images, store: d.Store, log: d.Log, cfg: d.Config, aliases: d.Config.AliasMap(),
		allowed: d.Allowed, sbx: map[string]*sandbox{}, rt: map[string]*runtime{}, wake: make(chan struct{}, 1)}
	if _, ok := s.aliases["base"]; !ok {
		s.aliases["base"] = d.DefaultImage
	}
	recs, err := d.Store.E2BSandboxes(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading E2B sandboxes: %w", err)
	}
	for _, r := range recs {
		var sb sandbox
		if err := json.Unmarshal(r.Data, &sb); err != nil {
			s.log.Warn("unreadable E2B sandbox record: dropped", "sandbox", r.ID, "err", err)
			continue
		}
		sb.Owner = r.Owner
		s.sbx[r.ID] = &sb
	}
	s.handler = s.routes()
	return s, nil
}

// Handler is the endpoint's HTTP handler (control plane, envd and port
// relay on one listener).
func (s *Service) Handler() http.Handler { return s.handler }

// Serve serves the endpoint on ln until ctx ends, then shuts it down
// (streams under way get 5 s). With certFile and keyFile it serves
// HTTPS.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		// Commands and watches stream for as long as they run; the SDK
		// keeps connections for minutes between calls.
		IdleTimeout: 640 * time.Second,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	if s.cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("e2b: loading tls_cert %s and tls_key %s: %w", s.cfg.TLSCert, s.cfg.TLSKey, err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving the E2B endpoint: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}

// Listen opens the configured listener, or says why it cannot (nil
// listener, nil error: the endpoint is off).
func (s *Service) Listen() (net.Listener, error) {
	if s.cfg.Listen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("e2b: listening on %s (config e2b.listen): %w", s.cfg.Listen, err)
	}
	return ln, nil
}

// APIURL is the endpoint's URL for E2B_API_URL, "" while it is off.
func (s *Service) APIURL() string {
	if s.cfg.Listen == "" {
		return ""
	}
	scheme := "http"
	if s.cfg.TLSCert != "" {
		scheme = "https"
	}
	host, port, _ := net.SplitHostPort(s.cfg.Listen)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// sandbox is one sandbox's record: what E2B says of it beyond its VM
// (which has the same name).
type sandbox struct {
	ID    string `json:"id"`
	Owner int    `json:"-"` // the store's column
	KeyID string `json:"key_id"`
	// TemplateID is what the sandbox was created from (an image's name,
	// an alias, or a snapshot's); Image the image it runs.
	TemplateID string `json:"template_id"`
	Alias      string `json:"alias,omitempty"`
	Image      string `json:"image"`
	// AccessToken is envd's X-Access-Token for this sandbox; the SDK
	// gets it at create and connect.
	AccessToken string    `json:"access_token"`
	StartedAt   time.Time `json:"started_at"`
	// EndAt is when it expires (while it runs); OnTimeout what happens
	// then: kill (the VM is removed) or pause.
	EndAt      time.Time         `json:"end_at"`
	OnTimeout  string            `json:"on_timeout"`
	AutoResume bool              `json:"auto_resume,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	EnvVars    map[string]string `json:"env_vars,omitempty"`
	// Network is the egress rules as E2B states them (the VM has them
	// translated, see policyFor).
	Network *networkConfig `json:"network,omitempty"`
	// Creating: the VM is being made; a record left so by a crash is
	// removed at expiry like any other.
	Creating bool `json:"creating,omitempty"`
	// dying: its VM is being removed. From the moment its removal
	// starts the sandbox is gone to everyone (its commands' streams
	// break as the VM dies; nothing may see it half removed).
	dying bool
}

// runtime is what the endpoint keeps of a sandbox while it runs: the
// shell it runs commands with and its polled watchers.
type runtime struct {
	mu       sync.Mutex
	shell    string // "" until known: /bin/bash, or /bin/sh for an image without bash
	watchers map[string]*pollWatcher
	// caller is the owner as the VM service takes it (a user database
	// lookup, once).
	caller   vm.Caller
	callerOK bool
}

func (s *Service) runtime(id string) *runtime {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rt[id]
	if r == nil {
		r = &runtime{watchers: map[string]*pollWatcher{}}
		s.rt[id] = r
	}
	return r
}

// lookup is the record of id if c may see it.
func (s *Service) lookup(c vm.Caller, id string) (*sandbox, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.sbx[id]
	if sb == nil || sb.Owner != c.UID || sb.dying {
		return nil, false
	}
	cp := *sb
	return &cp, true
}

// get is the record of id, whoever owns it.
func (s *Service) get(id string) (*sandbox, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.sbx[id]
	if sb == nil || sb.dying {
		return nil, false
	}
	cp := *sb
	return &cp, true
}

// dying marks sandbox id as being removed (or, with false, as not after
// all: its removal failed).
func (s *Service) setDying(id string, dying bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sb := s.sbx[id]; sb != nil {
		sb.dying = dying
	}
}

// put writes sb to the store and the cache.
func (s *Service) put(ctx context.Context, sb *sandbox) error {
	data, err := json.Marshal(sb)
	if err != nil {
		return err
	}
	if err := s.store.PutE2BSandbox(ctx, store.E2BRecord{ID: sb.ID, Owner: sb.Owner, Data: data}); err != nil {
		return err
	}
	cp := *sb
	s.mu.Lock()
	if old := s.sbx[sb.ID]; old != nil {
		cp.dying = old.dying
	}
	s.sbx[sb.ID] = &cp
	s.mu.Unlock()
	s.poke()
	return nil
}

// drop forgets sandbox id: its record, watchers and runtime.
func (s *Service) drop(ctx context.Context, id string) {
	if err := s.store.DeleteE2BSandbox(ctx, id); err != nil {
		s.log.Warn("removing an E2B sandbox record", "sandbox", id, "err", err)
	}
	s.mu.Lock()
	delete(s.sbx, id)
	r := s.rt[id]
	delete(s.rt, id)
	s.mu.Unlock()
	if r != nil {
		r.mu.Lock()
		for _, w := range r.watchers {
			w.close()
		}
		r.mu.Unlock()
	}
}

// records is a copy of every record but those being removed.
func (s *Service) records() []sandbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]sandbox, 0, len(s.sbx))
	for _, sb := range s.sbx {
		if !sb.dying {
			out = append(out, *sb)
		}
	}
	return out
}

// poke wakes the reaper: an end time changed.
func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// callerOf is the host user uid as the VM service takes it. A key acts
// as its owner and never as an admin, root's included: a key sees its
// owner's sandboxes only.
func callerOf(uid int) (vm.Caller, error) {
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return vm.Caller{}, fmt.Errorf("the key's owner, uid %d, is no longer a user of this host", uid)
	}
	gid, _ := strconv.Atoi(u.Gid)
	return vm.Caller{UID: uid, GID: gid, Groups: vm.GroupsOf(uid)}, nil
}

// newID is a sandbox id: E2B's shape (lower-case letters and digits, no
// dash), also a valid VM name, 20 characters (~103 random bits).
func newID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 20)
	rand.Read(b)
	out := make([]byte, 20)
	out[0] = 'i'
	for i := 1; i < len(b); i++ {
		out[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(out)
}

// newToken is a random secret of n bytes, hex.
func newToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	const hexd = "0123456789abcdef"
	out := make([]byte, 2*n)
	for i, c := range b {
		out[2*i], out[2*i+1] = hexd[c>>4], hexd[c&15]
	}
	return string(out)
}

// errGone is a sandbox that is not (or no longer) there.
var errGone = errors.New("sandbox not found")
