package e2b

import (
	"context"
	"errors"
	"fmt"
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
)

// Reading sandboxes: lists with E2B's filters and pages, and one
// sandbox's detail.

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

// runningView is view, or ErrConflict when the sandbox is paused: what
// needs its guest running (a snapshot, forks) asks the SDK to connect.
func (s *Service) runningView(ctx context.Context, c vm.Caller, id string) (view, error) {
	v, err := s.view(ctx, c, id)
	if err == nil && v.state() != "running" {
		err = fmt.Errorf("%w: sandbox %s is paused: connect to it first", api.ErrConflict, v.sb.ID)
	}
	return v, err
}

// pageLimit is a listing's ?limit: 1 to 100, 100 when absent.
func pageLimit(q url.Values) (int, error) {
	l := q.Get("limit")
	if l == "" {
		return 100, nil
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 1 || n > 100 {
		return 0, fmt.Errorf("%w: limit %q: 1 to 100", api.ErrInvalid, l)
	}
	return n, nil
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
	limit, err := pageLimit(q)
	if err != nil {
		return err
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
