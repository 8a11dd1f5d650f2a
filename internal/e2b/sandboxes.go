package e2b

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vsockagent"
)

// The control plane: E2B's /sandboxes endpoints over the VM service.

// call is a control-plane handler, run for an authenticated key.
type call func(w http.ResponseWriter, r *http.Request, k api.E2BKey, c vm.Caller) error

func (s *Service) controlPlane() http.Handler {
	mux := http.NewServeMux()
	h := func(fn call) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			k, c, err := s.authenticate(r)
			if err == nil {
				err = fn(w, r, k, c)
			}
			if err != nil {
				writeErr(w, err)
			}
			if r.Method != http.MethodGet || err != nil {
				result := "ok"
				if err != nil {
					result = strconv.Itoa(statusOf(err))
				}
				s.log.Info("e2b audit", "key", k.ID, "uid", c.UID, "method", r.Method, "path", r.URL.Path, "result", result, "err", err)
			}
		})
	}
	mux.Handle("POST /v2/sandboxes", h(s.create))
	mux.Handle("POST /sandboxes", h(s.create))
	mux.Handle("GET /v2/sandboxes", h(s.list))
	mux.Handle("GET /sandboxes", h(s.listRunning))
	mux.Handle("GET /sandboxes/{id}", h(s.info))
	mux.Handle("DELETE /sandboxes/{id}", h(s.kill))
	mux.Handle("POST /sandboxes/{id}/timeout", h(s.setTimeout))
	mux.Handle("POST /sandboxes/{id}/refreshes", h(s.refresh))
	mux.Handle("POST /sandboxes/{id}/pause", h(s.pause))
	mux.Handle("POST /sandboxes/{id}/resume", h(s.resume))
	mux.Handle("POST /sandboxes/{id}/connect", h(s.connect))
	mux.Handle("POST /v2/sandboxes/{id}/connect", h(s.connect))
	mux.Handle("GET /sandboxes/{id}/metrics", h(s.metrics))
	mux.Handle("PUT /sandboxes/{id}/network", h(s.network))
	mux.Handle("POST /sandboxes/{id}/fork", h(s.fork))
	mux.Handle("POST /sandboxes/{id}/snapshots", h(s.snapshot))
	mux.Handle("GET /snapshots", h(s.listSnapshots))
	mux.Handle("GET /templates", h(s.templates))
	mux.Handle("GET /templates/aliases/{alias}", h(s.alias))
	mux.Handle("DELETE /templates/{id}", h(s.deleteTemplate))
	for _, p := range []string{"POST /v3/templates", "POST /v2/templates", "POST /templates", "POST /templates/{id}",
		"POST /templates/{id}/builds/{build}", "POST /v2/templates/{id}/builds/{build}", "GET /templates/{id}/files/{hash}"} {
		mux.Handle(p, h(refuseBuild))
	}
	mux.Handle("GET /health", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	mux.Handle("/", h(func(w http.ResponseWriter, r *http.Request, _ api.E2BKey, _ vm.Caller) error {
		return fmt.Errorf("%w: banger's E2B endpoint has no %s %s", store.ErrNotFound, r.Method, r.URL.Path)
	}))
	return mux
}

// decode reads a JSON body; an empty one leaves v as it is. Unknown
// fields are ignored: newer SDKs send more.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%w: reading the request: %v", api.ErrInvalid, err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: decoding the request body: %v", api.ErrInvalid, err)
	}
	return nil
}

// newSandbox is POST /v2/sandboxes's body.
type newSandbox struct {
	TemplateID    string                  `json:"templateID"`
	Timeout       *int64                  `json:"timeout"`
	AutoPause     bool                    `json:"autoPause"`
	AutoResume    *struct{ Enabled bool } `json:"autoResume"`
	Metadata      map[string]string       `json:"metadata"`
	EnvVars       map[string]string       `json:"envVars"`
	AllowInternet *bool                   `json:"allow_internet_access"`
	Network       *networkConfig          `json:"network"`
	VolumeMounts  []any                   `json:"volumeMounts"`
	Mcp           map[string]any          `json:"mcp"`
}

// sandboxJSON is E2B's Sandbox.
type sandboxJSON struct {
	SandboxID          string  `json:"sandboxID"`
	TemplateID         string  `json:"templateID"`
	Alias              string  `json:"alias,omitempty"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken,omitempty"`
	Domain             *string `json:"domain"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
}

// defaultTimeout is E2B's: a sandbox created without a timeout lives
// 15 s unless something extends it.
const defaultTimeout = 15 * time.Second

// maxTimeout bounds a sandbox's life without a renewal.
const maxTimeout = 30 * 24 * time.Hour

func timeoutOf(secs *int64, def time.Duration) (time.Duration, error) {
	if secs == nil {
		return def, nil
	}
	if *secs < 0 {
		return 0, fmt.Errorf("%w: timeout %d: seconds, 0 or more", api.ErrInvalid, *secs)
	}
	d := time.Duration(*secs) * time.Second
	if d > maxTimeout {
		return 0, fmt.Errorf("%w: timeout %d s: at most %d (30 days)", api.ErrInvalid, *secs, int64(maxTimeout/time.Second))
	}
	return d, nil
}

func (s *Service) sandboxJSON(sb *sandbox) sandboxJSON {
	out := sandboxJSON{SandboxID: sb.ID, TemplateID: sb.TemplateID, Alias: sb.Alias, ClientID: "banger",
		EnvdVersion: EnvdVersion, EnvdAccessToken: sb.AccessToken}
	if s.cfg.Domain != "" {
		d := s.cfg.Domain
		out.Domain = &d
	}
	if sb.Network != nil && sb.Network.AllowPublicTraffic != nil && !*sb.Network.AllowPublicTraffic {
		t := sb.trafficToken()
		out.TrafficAccessToken = &t
	}
	return out
}

// trafficToken is what a sandbox's ports ask for when they are not
// public: derived from the access token, so it needs no record of its
// own.
func (sb *sandbox) trafficToken() string { return hashKey("traffic:" + sb.AccessToken)[:32] }

// create is POST /v2/sandboxes: a VM from the template, running, with
// the user "user" made, answered within the SDK's 60 s.
func (s *Service) create(w http.ResponseWriter, r *http.Request, k api.E2BKey, c vm.Caller) error {
	var req newSandbox
	if err := decode(r, &req); err != nil {
		return err
	}
	if len(req.VolumeMounts) > 0 {
		return fmt.Errorf("%w: volumes are not supported by banger: leave out volumeMounts", api.ErrInvalid)
	}
	if len(req.Mcp) > 0 {
		return fmt.Errorf("%w: the MCP gateway is not supported by banger: leave out mcp", api.ErrInvalid)
	}
	if err := req.Network.check(); err != nil {
		return err
	}
	ttl, err := timeoutOf(req.Timeout, defaultTimeout)
	if err != nil {
		return err
	}
	if req.Timeout != nil && *req.Timeout == 0 {
		return fmt.Errorf("%w: timeout must be greater than 0", api.ErrInvalid)
	}
	allow, deny, err := policyFor(req.Network, req.AllowInternet)
	if err != nil {
		return err
	}
	sb := &sandbox{ID: newID(), Owner: c.UID, KeyID: k.ID, TemplateID: req.TemplateID, AccessToken: newToken(24),
		OnTimeout: "kill", Metadata: req.Metadata, EnvVars: req.EnvVars, Network: req.Network, Creating: true}
	if sb.TemplateID == "" {
		sb.TemplateID = "base"
	}
	if req.AutoPause {
		sb.OnTimeout = "pause"
	}
	sb.AutoResume = req.AutoResume != nil && req.AutoResume.Enabled
	if req.AllowInternet != nil && !*req.AllowInternet {
		if sb.Network == nil {
			sb.Network = &networkConfig{}
		}
		sb.Network.DenyOut = append(sb.Network.DenyOut, "0.0.0.0/0")
	}
	ctx := r.Context()
	snap, img, err := s.resolveTemplate(ctx, c, sb.TemplateID)
	if err != nil {
		return err
	}
	sb.Image = img
	if alias, ok := s.aliases[sb.TemplateID]; ok && alias == img {
		sb.Alias = sb.TemplateID
	}
	// The record first, with its end: a client that gives up while the
	// VM boots, or a daemon that dies meanwhile, leaves a sandbox that
	// expires like any other, never a VM nobody knows of.
	sb.StartedAt = time.Now().UTC()
	sb.EndAt = sb.StartedAt.Add(ttl + createGrace)
	if err := s.put(ctx, sb); err != nil {
		return err
	}
	// The VM's making is not the request's: it goes on (and is
	// recorded) if the client disconnects.
	bg := context.WithoutCancel(ctx)
	if err := s.makeVM(bg, c, sb, snap, allow, deny); err != nil {
		s.drop(bg, sb.ID)
		return err
	}
	sb.Creating = false
	sb.StartedAt = time.Now().UTC()
	sb.EndAt = sb.StartedAt.Add(ttl)
	if err := s.put(bg, sb); err != nil {
		s.vms.Remove(bg, c, sb.ID, true)
		s.drop(bg, sb.ID)
		return err
	}
	s.log.Info("e2b sandbox created", "sandbox", sb.ID, "template", sb.TemplateID, "uid", c.UID, "ttl", ttl)
	writeJSON(w, http.StatusCreated, s.sandboxJSON(sb))
	return nil
}

// createGrace is how long a sandbox being created may take before the
// reaper treats it as expired.
const createGrace = 5 * time.Minute

// makeVM makes sandbox sb's VM (booted from its image, or restored from
// snapshot snap) and its default user. On error no VM is left.
func (s *Service) makeVM(ctx context.Context, c vm.Caller, sb *sandbox, snap string, allow, deny []string) error {
	if snap != "" {
		vms, err := s.vms.Fork(ctx, c, api.ForkRequest{Source: snap, Name: sb.ID})
		if err != nil {
			return err
		}
		if len(vms) != 1 {
			return fmt.Errorf("forking snapshot %q made %d VMs", snap, len(vms))
		}
		if allow != nil || deny != nil {
			if _, err := s.vms.SetPolicy(ctx, c, sb.ID, api.PolicyRequest{AllowOut: allow, DenyOut: deny}); err != nil {
				s.vms.Remove(ctx, c, sb.ID, true)
				return err
			}
		}
		return nil
	}
	req := api.VMCreateRequest{Name: sb.ID, Image: sb.Image, Labels: sb.Metadata, AllowOut: allow, DenyOut: deny}
	if len(sb.EnvVars) > 0 {
		req.Run = &api.Run{Env: envList(sb.EnvVars)}
	}
	t0 := time.Now()
	v, err := s.vms.Create(ctx, c, req, nil)
	if err != nil {
		return err
	}
	t1 := time.Now()
	if err := s.ensureUser(ctx, c, sb.ID); err != nil {
		s.vms.Remove(ctx, c, sb.ID, true)
		return err
	}
	s.log.Info("e2b sandbox's VM made", "sandbox", sb.ID, "origin", v.Origin, "vm_ms", t1.Sub(t0).Milliseconds(), "user_ms", time.Since(t1).Milliseconds())
	return nil
}

// ensureUser makes E2B's user in the sandbox's guest if it has none.
func (s *Service) ensureUser(ctx context.Context, c vm.Caller, id string) error {
	sess, err := s.vms.Agent(ctx, c, id)
	if err != nil {
		return err
	}
	if _, err := vsockagent.EnsureUser(ctx, sess, DefaultUser, ""); err != nil {
		return fmt.Errorf("making the user %q in sandbox %s: %w", DefaultUser, id, err)
	}
	return nil
}

// resolveTemplate is what templateID makes a sandbox from: one of c's
// snapshots (by name), else an image (an alias's, or by name).
func (s *Service) resolveTemplate(ctx context.Context, c vm.Caller, tpl string) (snap, image string, err error) {
	if sn, err := s.vms.GetSnapshot(ctx, c, tpl); err == nil && sn.Kind == api.SnapshotKindSnapshot {
		return sn.Name, sn.Image, nil
	}
	name := tpl
	if img, ok := s.aliases[tpl]; ok {
		name = img
	}
	img, err := s.images.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return "", "", &e2bError{http.StatusNotFound, fmt.Sprintf("template '%s' not found: a template is a banger image (`banger image ls`), an alias of one (config e2b.aliases) or a snapshot", tpl), store.ErrNotFound}
	}
	if err != nil {
		return "", "", err
	}
	return "", img.Name, nil
}

func envList(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+m[k])
	}
	return out
}

// view is a sandbox with its VM: what list and info answer.
type view struct {
	sb *sandbox
	vm api.VM
}

// state is E2B's state of the sandbox: running, or paused (a stopped
// VM too: connect starts it again).
func (v view) state() string {
	if v.vm.State == "running" {
		return "running"
	}
	return "paused"
}

// listed is E2B's ListedSandbox.
type listed struct {
	SandboxID   string            `json:"sandboxID"`
	TemplateID  string            `json:"templateID"`
	Alias       string            `json:"alias,omitempty"`
	ClientID    string            `json:"clientID"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	State       string            `json:"state"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int               `json:"memoryMB"`
	DiskSizeMB  int64             `json:"diskSizeMB"`
	EnvdVersion string            `json:"envdVersion"`
	Metadata    map[string]string `json:"metadata"`
}

func (v view) listed() listed {
	md := v.sb.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return listed{SandboxID: v.sb.ID, TemplateID: v.sb.TemplateID, Alias: v.sb.Alias, ClientID: "banger", StartedAt: v.sb.StartedAt,
		EndAt: v.sb.EndAt, State: v.state(), CPUCount: v.vm.VCPU, MemoryMB: v.vm.MemoryMiB, DiskSizeMB: v.vm.DiskBytes >> 20,
		EnvdVersion: EnvdVersion, Metadata: md}
}

// view reads c's sandbox id with its VM; a sandbox whose VM was removed
// (banger vm rm) is forgotten.
func (s *Service) view(ctx context.Context, c vm.Caller, id string) (view, error) {
	sb, ok := s.lookup(c, id)
	if !ok || sb.Creating {
		return view{}, notFound(id)
	}
	v, err := s.vms.Get(ctx, c, id)
	if errors.Is(err, store.ErrNotFound) {
		s.drop(ctx, id)
		return view{}, notFound(id)
	}
	if err != nil {
		return view{}, err
	}
	return view{sb, v}, nil
}

// views is every sandbox of c's, newest first.
func (s *Service) views(ctx context.Context, c vm.Caller) ([]view, error) {
	var out []view
	for _, sb := range s.records() {
		if sb.Owner != c.UID || sb.Creating {
			continue
		}
		v, err := s.view(ctx, c, sb.ID)
		if errors.Is(err, errGone) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].sb.StartedAt.Equal(out[j].sb.StartedAt) {
			return out[i].sb.StartedAt.After(out[j].sb.StartedAt)
		}
		return out[i].sb.ID < out[j].sb.ID
	})
	return out, nil
}

// parseMetadata reads the list's metadata filter as the SDK sends it:
// key=value pairs joined by &, each key and value URL-encoded, the
// whole encoded once more as one query value.
func parseMetadata(q string) (map[string]string, error) {
	if q == "" {
		return nil, nil
	}
	raw, err := url.QueryUnescape(q)
	if err != nil {
		return nil, fmt.Errorf("%w: Error parsing metadata: %v", api.ErrInvalid, err)
	}
	out := map[string]string{}
	for _, pair := range strings.Split(raw, "&") {
		kv := strings.Split(pair, "=")
		if len(kv) != 2 {
			return nil, fmt.Errorf("%w: Error parsing metadata: %q is not key=value", api.ErrInvalid, pair)
		}
		k, err1 := url.QueryUnescape(kv[0])
		v, err2 := url.QueryUnescape(kv[1])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("%w: Error parsing metadata: %v", api.ErrInvalid, err)
		}
		out[k] = v
	}
	return out, nil
}

// matches reports whether md has every pair of want.
func matches(md, want map[string]string) bool {
	for k, v := range want {
		if got, ok := md[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// list is GET /v2/sandboxes: filtered by metadata, state and template,
// in pages of limit (at most 100) with X-Next-Token.
func (s *Service) list(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	q := r.URL.Query()
	md, err := parseMetadata(q.Get("metadata"))
	if err != nil {
		return err
	}
	states := []string{"running", "paused"}
	if st := q.Get("state"); st != "" {
		states = strings.Split(st, ",")
		for _, x := range states {
			if x != "running" && x != "paused" {
				return fmt.Errorf("%w: state %q: running or paused", api.ErrInvalid, x)
			}
		}
	}
	limit := 100
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 100 {
			return fmt.Errorf("%w: limit %q: 1 to 100", api.ErrInvalid, l)
		}
		limit = n
	}
	var after time.Time
	if sa := q.Get("startedAfter"); sa != "" {
		if after, err = time.Parse(time.RFC3339Nano, sa); err != nil {
			return fmt.Errorf("%w: startedAfter %q: an RFC 3339 time", api.ErrInvalid, sa)
		}
	}
	vs, err := s.views(r.Context(), c)
	if err != nil {
		return err
	}
	if q.Get("order") == "asc" {
		slices.Reverse(vs)
	}
	tpl := q.Get("template")
	out := []listed{}
	token := q.Get("nextToken")
	started := token == ""
	for _, v := range vs {
		if !started {
			started = v.sb.ID == token
			if !started {
				continue
			}
		}
		if (md != nil && !matches(v.sb.Metadata, md)) || !slices.Contains(states, v.state()) ||
			(tpl != "" && tpl != v.sb.TemplateID && tpl != v.sb.Image) || v.sb.StartedAt.Before(after) {
			continue
		}
		if len(out) == limit {
			w.Header().Set("X-Next-Token", v.sb.ID)
			break
		}
		out = append(out, v.listed())
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// listRunning is the deprecated GET /sandboxes: running ones, no pages.
func (s *Service) listRunning(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	md, err := parseMetadata(r.URL.Query().Get("metadata"))
	if err != nil {
		return err
	}
	vs, err := s.views(r.Context(), c)
	if err != nil {
		return err
	}
	out := []listed{}
	for _, v := range vs {
		if v.state() == "running" && (md == nil || matches(v.sb.Metadata, md)) {
			out = append(out, v.listed())
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// detail is E2B's SandboxDetail.
type detail struct {
	listed
	EnvdAccessToken     string         `json:"envdAccessToken,omitempty"`
	Domain              *string        `json:"domain"`
	AllowInternetAccess *bool          `json:"allowInternetAccess"`
	Network             *networkConfig `json:"network,omitempty"`
	Lifecycle           struct {
		OnTimeout  string `json:"onTimeout"`
		AutoResume bool   `json:"autoResume"`
	} `json:"lifecycle"`
}

func (s *Service) info(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	v, err := s.view(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	d := detail{listed: v.listed(), EnvdAccessToken: v.sb.AccessToken, Network: v.sb.Network}
	d.Domain = s.sandboxJSON(v.sb).Domain
	d.Lifecycle.OnTimeout, d.Lifecycle.AutoResume = v.sb.OnTimeout, v.sb.AutoResume
	writeJSON(w, http.StatusOK, d)
	return nil
}

// kill is DELETE /sandboxes/{id}: the VM removed at once.
func (s *Service) kill(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	id := r.PathValue("id")
	if _, err := s.view(r.Context(), c, id); err != nil {
		return err
	}
	if err := s.remove(context.WithoutCancel(r.Context()), c, id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// remove removes sandbox id's VM and record. The sandbox is gone to
// every request from the start.
func (s *Service) remove(ctx context.Context, c vm.Caller, id string) error {
	s.setDying(id, true)
	if _, err := s.vms.Remove(ctx, c, id, true); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.setDying(id, false)
		return fmt.Errorf("removing sandbox %s: %w", id, err)
	}
	s.drop(ctx, id)
	s.log.Info("e2b sandbox removed", "sandbox", id)
	return nil
}

type timeoutBody struct {
	Timeout *int64 `json:"timeout"`
}

// setTimeout is POST /sandboxes/{id}/timeout: it expires timeout s from
// now (sooner or later than before).
func (s *Service) setTimeout(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	var b timeoutBody
	if err := decode(r, &b); err != nil {
		return err
	}
	if b.Timeout == nil {
		return fmt.Errorf("%w: timeout is required (seconds)", api.ErrInvalid)
	}
	ttl, err := timeoutOf(b.Timeout, 0)
	if err != nil {
		return err
	}
	v, err := s.view(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	v.sb.EndAt = time.Now().UTC().Add(ttl)
	if err := s.put(r.Context(), v.sb); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// refresh is POST /sandboxes/{id}/refreshes: at least duration s more.
func (s *Service) refresh(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	var b struct {
		Duration *int64 `json:"duration"`
	}
	if err := decode(r, &b); err != nil {
		return err
	}
	ttl, err := timeoutOf(b.Duration, defaultTimeout)
	if err != nil {
		return err
	}
	v, err := s.view(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if end := time.Now().UTC().Add(ttl); end.After(v.sb.EndAt) {
		v.sb.EndAt = end
		if err := s.put(r.Context(), v.sb); err != nil {
			return err
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// pause is POST /sandboxes/{id}/pause: the guest frozen; 409 when it
// is already.
func (s *Service) pause(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	v, err := s.view(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if v.state() == "paused" {
		return fmt.Errorf("%w: sandbox %s is already paused", api.ErrConflict, v.sb.ID)
	}
	if _, err := s.vms.Pause(context.WithoutCancel(r.Context()), c, v.sb.ID); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// wake makes a paused (or stopped) sandbox run again with ttl to live.
func (s *Service) wakeUp(ctx context.Context, c vm.Caller, v view, ttl time.Duration) error {
	var err error
	if v.vm.State == "paused" {
		_, err = s.vms.Resume(ctx, c, v.sb.ID)
	} else {
		_, err = s.vms.Start(ctx, c, v.sb.ID, nil)
	}
	if err != nil {
		return fmt.Errorf("resuming sandbox %s: %w", v.sb.ID, err)
	}
	v.sb.EndAt = time.Now().UTC().Add(ttl)
	return s.put(ctx, v.sb)
}

// resume is the deprecated POST /sandboxes/{id}/resume: 409 when it
// runs.
func (s *Service) resume(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	var b timeoutBody
	if err := decode(r, &b); err != nil {
		return err
	}
	ttl, err := timeoutOf(b.Timeout, defaultTimeout)
	if err != nil {
		return err
	}
	v, err := s.view(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if v.state() == "running" {
		return fmt.Errorf("%w: sandbox %s is already running", api.ErrConflict, v.sb.ID)
	}
	if err := s.wakeUp(context.WithoutCancel(r.Context()), c, v, ttl); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, s.sandboxJSON(v.sb))
	return nil
}

// connect is POST /v2/sandboxes/{id}/connect: a running sandbox's end
// is only ever extended (200); a paused one is resumed (201).
func (s *Service) connect(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	var b timeoutBody
	if err := decode(r, &b); err != nil {
		return err
	}
	ttl, err := timeoutOf(b.Timeout, defaultTimeout)
	if err != nil {
		return err
	}
	v, err := s.view(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if v.state() == "running" {
		if end := time.Now().UTC().Add(ttl); end.After(v.sb.EndAt) {
			v.sb.EndAt = end
			if err := s.put(r.Context(), v.sb); err != nil {
				return err
			}
		}
		writeJSON(w, http.StatusOK, s.sandboxJSON(v.sb))
		return nil
	}
	if err := s.wakeUp(context.WithoutCancel(r.Context()), c, v, ttl); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, s.sandboxJSON(v.sb))
	return nil
}

// metric is E2B's SandboxMetric.
type metric struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       uint64    `json:"memUsed"`
	MemTotal      uint64    `json:"memTotal"`
	MemCache      uint64    `json:"memCache"`
	DiskUsed      uint64    `json:"diskUsed"`
	DiskTotal     uint64    `json:"diskTotal"`
}

// metrics is GET /sandboxes/{id}/metrics: banger keeps no history, so
// a running sandbox answers one sample taken now, a paused one none.
func (s *Service) metrics(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	v, err := s.view(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	out := []metric{}
	if v.state() == "running" {
		sess, err := s.vms.Agent(r.Context(), c, v.sb.ID)
		if err != nil {
			return err
		}
		m, err := vsockagent.GetMetrics(r.Context(), sess)
		if err != nil {
			return fmt.Errorf("reading sandbox %s's metrics: %w", v.sb.ID, err)
		}
		now := time.Now().UTC()
		out = append(out, metric{Timestamp: now, TimestampUnix: now.Unix(), CPUCount: m.CPUCount, CPUUsedPct: m.CPUUsedPct,
			MemUsed: m.MemUsed, MemTotal: m.MemTotal, MemCache: m.MemCache, DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// network is PUT /sandboxes/{id}/network: the egress rules replaced
// (omitted fields cleared), at once on the running VM.
func (s *Service) network(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	var b struct {
		networkConfig
		AllowInternet *bool `json:"allow_internet_access"`
	}
	if err := decode(r, &b); err != nil {
		return err
	}
	n := b.networkConfig
	if err := n.check(); err != nil {
		return err
	}
	allow, deny, err := policyFor(&n, b.AllowInternet)
	if err != nil {
		return err
	}
	v, err := s.view(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	req := api.PolicyRequest{AllowOut: allow, DenyOut: deny, Reset: allow == nil && deny == nil}
	if _, err := s.vms.SetPolicy(r.Context(), c, v.sb.ID, req); err != nil {
		return err
	}
	if b.AllowInternet != nil && !*b.AllowInternet {
		n.DenyOut = append(n.DenyOut, "0.0.0.0/0")
	}
	// Whether its ports are public is a create-time choice in E2B.
	n.AllowPublicTraffic = nil
	if v.sb.Network != nil {
		n.AllowPublicTraffic = v.sb.Network.AllowPublicTraffic
	}
	v.sb.Network = &n
	if err := s.put(r.Context(), v.sb); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
