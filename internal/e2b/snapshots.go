package e2b

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"banger/internal/api"
	"banger/internal/store"
	"banger/internal/vm"
)

// Forks, snapshots and templates: banger's snapshots and forks behind
// E2B's names, images behind its templates.

// fork is POST /sandboxes/{id}/fork: the sandbox snapshotted once (its
// guest frozen for it, then running on), count new sandboxes restored
// from that snapshot, and the snapshot dropped. Each fork succeeds or
// fails on its own.
func (s *Service) fork(w http.ResponseWriter, r *http.Request, k api.E2BKey, c vm.Caller) error {
	var b struct {
		Timeout *int64 `json:"timeout"`
		Count   *int   `json:"count"`
	}
	if err := decode(r, &b); err != nil {
		return err
	}
	count := 1
	if b.Count != nil {
		count = *b.Count
	}
	if count < 1 || count > 100 {
		return fmt.Errorf("%w: count %d: 1 to 100", api.ErrInvalid, count)
	}
	ttl, err := timeoutOf(b.Timeout, defaultTimeout)
	if err != nil {
		return err
	}
	v, err := s.runningView(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	ctx := context.WithoutCancel(r.Context())
	snapName := "fork-" + newID()
	if _, err := s.vms.Snapshot(ctx, c, v.sb.ID, api.SnapshotRequest{Name: snapName}); err != nil {
		return fmt.Errorf("snapshotting sandbox %s for its forks: %w", v.sb.ID, err)
	}
	defer func() {
		if _, err := s.vms.RemoveSnapshot(ctx, c, snapName); err != nil {
			s.log.Warn("removing a fork's snapshot", "snapshot", snapName, "err", err)
		}
	}()
	type result struct {
		Sandbox *sandboxJSON `json:"sandbox,omitempty"`
		Error   *apiErr      `json:"error,omitempty"`
	}
	out := make([]result, 0, count)
	for range count {
		sb := &sandbox{ID: newID(), Owner: c.UID, KeyID: k.ID, TemplateID: v.sb.TemplateID, Alias: v.sb.Alias, Image: v.sb.Image,
			AccessToken: newToken(24), OnTimeout: v.sb.OnTimeout, AutoResume: v.sb.AutoResume, Metadata: v.sb.Metadata,
			EnvVars: v.sb.EnvVars, Network: v.sb.Network, Creating: true, StartedAt: time.Now().UTC()}
		sb.EndAt = sb.StartedAt.Add(ttl + createGrace)
		err := s.put(ctx, sb)
		if err == nil {
			if err = s.makeVM(ctx, c, sb, snapName, nil, nil); err != nil {
				s.drop(ctx, sb.ID)
			}
		}
		if err == nil {
			sb.Creating, sb.StartedAt = false, time.Now().UTC()
			sb.EndAt = sb.StartedAt.Add(ttl)
			if err = s.put(ctx, sb); err != nil {
				s.remove(ctx, c, sb.ID)
			}
		}
		if err != nil {
			st := statusOf(err)
			out = append(out, result{Error: &apiErr{Code: st, Message: err.Error()}})
			continue
		}
		j := s.sandboxJSON(sb)
		out = append(out, result{Sandbox: &j})
		s.log.Info("e2b sandbox forked", "sandbox", sb.ID, "from", v.sb.ID)
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

// snapshotInfo is E2B's SnapshotInfo: a snapshot is known by its
// banger name, which Sandbox.create takes as its template.
type snapshotInfo struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

// snapshot is POST /sandboxes/{id}/snapshots: a banger snapshot of the
// sandbox (its guest frozen for it), named name or generated, that
// outlives the sandbox and creates sandboxes as a template.
func (s *Service) snapshot(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	var b struct {
		Name string `json:"name"`
	}
	if err := decode(r, &b); err != nil {
		return err
	}
	v, err := s.runningView(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	name := b.Name
	if name == "" {
		name = "snap-" + newID()
	}
	sn, err := s.vms.Snapshot(context.WithoutCancel(r.Context()), c, v.sb.ID, api.SnapshotRequest{Name: name})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, snapshotInfo{SnapshotID: sn.Name, Names: []string{sn.Name}})
	return nil
}

// listSnapshots is GET /snapshots: c's snapshots, by source sandbox or
// name, in pages.
func (s *Service) listSnapshots(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	q := r.URL.Query()
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	all, err := s.vms.Snapshots(r.Context(), c)
	if err != nil {
		return err
	}
	out := []snapshotInfo{}
	token := q.Get("nextToken")
	started := token == ""
	for _, sn := range all {
		if sn.Kind != api.SnapshotKindSnapshot || sn.Owner != c.UID || sn.State != "ready" {
			continue
		}
		if id := q.Get("sandboxID"); id != "" && sn.SourceVM != id {
			continue
		}
		if n := q.Get("name"); n != "" && sn.Name != n {
			continue
		}
		if !started {
			if started = sn.Name == token; !started {
				continue
			}
		}
		if len(out) == limit {
			w.Header().Set("X-Next-Token", sn.Name)
			break
		}
		out = append(out, snapshotInfo{SnapshotID: sn.Name, Names: []string{sn.Name}})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// deleteTemplate is DELETE /templates/{id}: one of c's snapshots
// removed. Images are not removed through E2B.
func (s *Service) deleteTemplate(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	id := r.PathValue("id")
	if sn, err := s.vms.GetSnapshot(r.Context(), c, id); err == nil && sn.Kind == api.SnapshotKindSnapshot && sn.Owner == c.UID {
		if _, err := s.vms.RemoveSnapshot(r.Context(), c, id); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	if _, err := s.images.Get(r.Context(), id); err == nil {
		return fmt.Errorf("%w: template %q is a banger image: remove it with `banger image rm %s`", api.ErrInvalid, id, id)
	}
	return &e2bError{http.StatusNotFound, fmt.Sprintf("template '%s' not found", id), store.ErrNotFound}
}

// template is E2B's Template (images, and the aliases naming them).
type template struct {
	TemplateID    string     `json:"templateID"`
	BuildID       string     `json:"buildID"`
	CPUCount      int        `json:"cpuCount"`
	MemoryMB      int        `json:"memoryMB"`
	DiskSizeMB    int64      `json:"diskSizeMB"`
	Public        bool       `json:"public"`
	Aliases       []string   `json:"aliases"`
	Names         []string   `json:"names"`
	CreatedAt     time.Time  `json:"createdAt"`
	UpdatedAt     time.Time  `json:"updatedAt"`
	CreatedBy     any        `json:"createdBy"`
	LastSpawnedAt *time.Time `json:"lastSpawnedAt"`
	SpawnCount    int        `json:"spawnCount"`
	BuildCount    int        `json:"buildCount"`
	EnvdVersion   string     `json:"envdVersion"`
	BuildStatus   string     `json:"buildStatus"`
}

// templates is GET /templates: every image, with its aliases.
func (s *Service) templates(w http.ResponseWriter, r *http.Request, _ api.E2BKey, _ vm.Caller) error {
	imgs, err := s.images.List(r.Context())
	if err != nil {
		return err
	}
	out := []template{}
	for _, img := range imgs {
		aliases := []string{}
		for a, name := range s.aliases {
			if name == img.Name {
				aliases = append(aliases, a)
			}
		}
		out = append(out, template{TemplateID: img.Name, BuildID: img.ID, Public: true, Aliases: aliases, Names: append([]string{img.Name}, aliases...),
			CreatedAt: img.CreatedAt, UpdatedAt: img.CreatedAt, DiskSizeMB: img.SizeBytes >> 20, BuildCount: 1,
			EnvdVersion: EnvdVersion, BuildStatus: "ready"})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// alias is GET /templates/aliases/{alias}: 200 when a template of that
// name exists.
func (s *Service) alias(w http.ResponseWriter, r *http.Request, _ api.E2BKey, c vm.Caller) error {
	a := r.PathValue("alias")
	_, img, err := s.resolveTemplate(r.Context(), c, a)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"templateID": img, "public": true})
	return nil
}

// refuseBuild answers every template build endpoint.
func refuseBuild(w http.ResponseWriter, r *http.Request, _ api.E2BKey, _ vm.Caller) error {
	return fmt.Errorf("%w: banger does not build E2B templates: make an image with `banger image pull REF` or `banger image build`, then pass its name as the template", api.ErrInvalid)
}
