package e2b

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"banger/internal/api"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vsockagent"
)

// Acting on one sandbox: kill, timeouts, pause, resume and connect,
// metrics and its network.

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
	if err := s.extend(r.Context(), &v, ttl); err != nil {
		return err
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

// extend makes v's sandbox live at least ttl from now; never shorter.
func (s *Service) extend(ctx context.Context, v *view, ttl time.Duration) error {
	end := time.Now().UTC().Add(ttl)
	if !end.After(v.sb.EndAt) {
		return nil
	}
	v.sb.EndAt = end
	return s.put(ctx, v.sb)
}

// wakeUp makes a paused (or stopped) sandbox run again with ttl to live.
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

// timedView is the sandbox the path names and the timeout its request's
// body asks for (E2B's default when none).
func (s *Service) timedView(r *http.Request, c vm.Caller) (view, time.Duration, error) {
	var b timeoutBody
	if err := decode(r, &b); err != nil {
		return view{}, 0, err
	}
	ttl, err := timeoutOf(b.Timeout, defaultTimeout)
	if err != nil {
		return view{}, 0, err
	}
	v, err := s.view(r.Context(), c, r.PathValue("id"))
	return v, ttl, err
}

// resume is the deprecated POST /sandboxes/{id}/resume: 409 when it
// runs.
func (s *Service) resume(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	v, ttl, err := s.timedView(r, c)
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
	v, ttl, err := s.timedView(r, c)
	if err != nil {
		return err
	}
	if v.state() == "running" {
		if err := s.extend(r.Context(), &v, ttl); err != nil {
			return err
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
