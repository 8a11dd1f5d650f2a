package e2b

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"banger/internal/api"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vsockagent"
)

// Creating a sandbox: the template resolved, the record made first, the
// VM booted (or restored) and E2B's user made.

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
