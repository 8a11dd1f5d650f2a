package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/imagebuild"
	"banger/internal/imagepull"
	"banger/internal/kernel"
	"banger/internal/store"
	"banger/internal/version"
	"banger/internal/vm"
	"banger/internal/vmm"
	"banger/internal/vmnet"
)

type handler func(w http.ResponseWriter, r *http.Request) error

func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /v1/daemon", d.wrap(d.handleStatus))
	mux.Handle("POST /v1/daemon/stop", d.wrap(d.handleStop))
	mux.Handle("GET /v1/config", d.wrap(d.handleConfig))
	mux.Handle("GET /v1/doctor", d.wrap(d.handleDoctor))
	mux.Handle("GET /v1/network", d.wrap(d.handleNetwork))
	mux.Handle("POST /v1/network", d.wrap(d.handleSetNetwork))

	mux.Handle("GET /v1/images", d.wrap(listHandler(d.images.List)))
	mux.Handle("POST /v1/images/pull", d.wrap(d.handlePull))
	mux.Handle("POST /v1/images/import", d.wrap(d.handleImport))
	mux.Handle("POST /v1/images/build", d.wrap(d.handleBuild))
	mux.Handle("POST /v1/images/warm", d.wrap(d.handleWarm))
	mux.Handle("GET /v1/images/{name...}", d.wrap(getHandler(d.images.Get)))
	mux.Handle("DELETE /v1/images/{name...}", d.wrap(d.handleRemoveImage))
	mux.Handle("POST /v1/cache/prune", d.wrap(d.handlePrune))

	mux.Handle("GET /v1/kernels", d.wrap(listHandler(d.kernels.List)))
	mux.Handle("GET /v1/kernels/catalog", d.wrap(d.handleKernelCatalog))
	mux.Handle("POST /v1/kernels/import", d.wrap(d.handleKernelImport))
	mux.Handle("POST /v1/kernels/pull", d.wrap(d.handleKernelPull))
	mux.Handle("POST /v1/kernels/default", d.wrap(d.handleDefaultKernel))
	mux.Handle("GET /v1/kernels/{name}", d.wrap(getHandler(d.kernels.Get)))
	mux.Handle("DELETE /v1/kernels/{name}", d.wrap(d.handleRemoveKernel))

	mux.Handle("GET /v1/vms", d.wrap(callerList(d.vms.List)))
	mux.Handle("POST /v1/vms", d.wrap(d.handleCreateVM))
	mux.Handle("POST /v1/vms/prune", d.wrap(d.handlePruneVMs))
	mux.Handle("POST /v1/vms/fork", d.wrap(d.handleFork))
	mux.Handle("GET /v1/vms/{name}", d.wrap(callerGet(d.vms.Get)))
	mux.Handle("DELETE /v1/vms/{name}", d.wrap(d.handleRemoveVM))
	mux.Handle("POST /v1/vms/{name}/snapshot", d.wrap(d.handleSnapshotVM))
	mux.Handle("POST /v1/vms/{name}/policy", d.wrap(d.handlePolicy))
	mux.Handle("POST /v1/vms/{name}/{action}", d.wrap(d.handleVMAction))
	mux.Handle("GET /v1/vms/{name}/logs", d.wrap(d.handleVMLogs))
	mux.Handle("GET /v1/vms/{name}/agent", d.wrap(d.handleAgent))
	mux.Handle("POST /v1/ssh/keys", d.wrap(d.handleAddSSHKey))

	mux.Handle("GET /v1/snapshots", d.wrap(callerList(d.vms.Snapshots)))
	mux.Handle("GET /v1/snapshots/{name}", d.wrap(callerGet(d.vms.GetSnapshot)))
	mux.Handle("DELETE /v1/snapshots/{name}", d.wrap(d.handleRemoveSnapshot))

	mux.Handle("GET /v1/e2b/keys", d.wrap(callerList(func(ctx context.Context, c vm.Caller) ([]api.E2BKey, error) { return d.e2b.Keys(ctx, c) })))
	mux.Handle("POST /v1/e2b/keys", d.wrap(d.handleCreateE2BKey))
	mux.Handle("DELETE /v1/e2b/keys/{name}", d.wrap(d.handleRemoveE2BKey))

	mux.Handle("/", d.wrap(func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("%w: no such endpoint %s %s: the CLI and bangerd may be different versions (`banger version`)", store.ErrNotFound, r.Method, r.URL.Path)
	}))
	return mux
}

// listHandler answers with everything fetch returns, [] when nothing.
func listHandler[T any](fetch func(context.Context) ([]T, error)) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		items, err := fetch(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, items)
		return nil
	}
}

// callerList is listHandler for what the caller may see.
func callerList[T any](fetch func(context.Context, vm.Caller) ([]T, error)) handler {
	return listHandler(func(ctx context.Context) ([]T, error) { return fetch(ctx, callerOf(ctx)) })
}

// callerGet is getHandler for what the caller may see.
func callerGet[T any](fetch func(context.Context, vm.Caller, string) (T, error)) handler {
	return getHandler(func(ctx context.Context, name string) (T, error) { return fetch(ctx, callerOf(ctx), name) })
}

// getHandler answers with the object named in the path (the service's
// miss says which command lists what there is).
func getHandler[T any](fetch func(context.Context, string) (T, error)) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		item, err := fetch(r.Context(), r.PathValue("name"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, item)
		return nil
	}
}

// wrap checks the caller's credentials and turns a handler's error into
// one JSON error response. Every request that may change state is
// audited in the log: who (uid), what (method and path, the VM or object
// it names) and how it ended.
func (d *Daemon) wrap(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pc, _ := r.Context().Value(peerKey{}).(peerCred)
		if why := d.allowed.check(pc); why != "" {
			d.log.Warn("rejected caller", "uid", pc.uid, "pid", pc.pid, "path", r.URL.Path)
			writeError(w, fmt.Errorf("%w: %s", api.ErrForbidden, why))
			return
		}
		err := h(w, r)
		if err != nil {
			d.log.Info("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			writeError(w, err)
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			_, code := classify(err)
			if err == nil {
				code = "ok"
			}
			d.log.Info("audit", "uid", pc.uid, "pid", pc.pid, "method", r.Method, "path", r.URL.Path, "name", r.PathValue("name"), "action", r.PathValue("action"), "result", code)
		}
	})
}

// classify maps an error to an HTTP status and a stable API code.
func classify(err error) (int, string) {
	switch {
	case errors.Is(err, api.ErrLimit):
		return http.StatusForbidden, api.CodeLimit
	case errors.Is(err, api.ErrForbidden):
		return http.StatusForbidden, api.CodeForbidden
	case errors.Is(err, store.ErrNotFound), errors.Is(err, imagepull.ErrNotFound):
		return http.StatusNotFound, api.CodeNotFound
	case errors.Is(err, store.ErrExists):
		return http.StatusConflict, api.CodeExists
	case errors.Is(err, api.ErrConflict):
		return http.StatusConflict, api.CodeConflict
	case errors.Is(err, imagepull.ErrAmbiguous):
		return http.StatusConflict, api.CodeAmbiguous
	case errors.Is(err, api.ErrInvalid), errors.Is(err, imagepull.ErrBadReference), errors.Is(err, imagebuild.ErrInvalidPackage):
		return http.StatusBadRequest, api.CodeInvalid
	case errors.Is(err, vm.ErrInvalidState), errors.Is(err, vm.ErrSnapshotState), errors.Is(err, vm.ErrSnapshotIncompatible):
		return http.StatusConflict, api.CodeConflict
	case errors.Is(err, vmm.ErrNotSupported):
		return http.StatusNotImplemented, api.CodeNotSupported
	case errors.Is(err, vm.ErrAgent):
		return http.StatusBadGateway, api.CodeAgent
	case errors.Is(err, vmnet.ErrNetwork):
		return http.StatusServiceUnavailable, api.CodeNetwork
	case errors.Is(err, vm.ErrStart):
		return http.StatusInternalServerError, api.CodeVMStart
	case errors.Is(err, imagepull.ErrAuth):
		return http.StatusBadGateway, api.CodeAuth
	case errors.Is(err, imagepull.ErrUnreachable):
		return http.StatusBadGateway, api.CodeUnreachable
	case errors.Is(err, imagepull.ErrNoPlatform), errors.Is(err, imagepull.ErrBadLayer),
		errors.Is(err, imagepull.ErrUnsafeEntry), errors.Is(err, imagepull.ErrDigestMismatch),
		errors.Is(err, imagepull.ErrTruncated), errors.Is(err, imagepull.ErrBadSource):
		return http.StatusUnprocessableEntity, api.CodeBadImage
	case errors.Is(err, vm.ErrSnapshotDamaged):
		return http.StatusUnprocessableEntity, api.CodeBadSnapshot
	case errors.Is(err, kernel.ErrNotKernel), errors.Is(err, kernel.ErrMissingModule), errors.Is(err, kernel.ErrTooLarge):
		return http.StatusUnprocessableEntity, api.CodeBadKernel
	case errors.Is(err, imagebuild.ErrBuild):
		return http.StatusBadGateway, api.CodeBuild
	case errors.Is(err, kernel.ErrDownload):
		return http.StatusBadGateway, api.CodeDownload
	case errors.Is(err, imagepull.ErrNoSpace), errors.Is(err, syscall.ENOSPC):
		return http.StatusInsufficientStorage, api.CodeNoSpace
	case errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, api.CodeCanceled
	}
	return http.StatusInternalServerError, api.CodeInternal
}

func apiError(err error) *api.Error {
	_, code := classify(err)
	return &api.Error{Code: code, Message: err.Error()}
}

func writeError(w http.ResponseWriter, err error) {
	status, _ := classify(err)
	writeJSON(w, status, apiError(err))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: decoding request body: %v", api.ErrInvalid, err)
	}
	return nil
}

// eventWriter streams newline-delimited JSON events; safe for concurrent use.
type eventWriter struct {
	mu  sync.Mutex
	w   http.ResponseWriter
	enc *json.Encoder
	rc  *http.ResponseController
}

func newEventWriter(w http.ResponseWriter) *eventWriter {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	ew := &eventWriter{w: w, enc: json.NewEncoder(w), rc: http.NewResponseController(w)}
	ew.rc.Flush()
	return ew
}

func (ew *eventWriter) emit(ev api.Event) error {
	ew.mu.Lock()
	defer ew.mu.Unlock()
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	if err := ew.enc.Encode(ev); err != nil {
		return err
	}
	return ew.rc.Flush()
}

func (d *Daemon) handleConfig(w http.ResponseWriter, r *http.Request) error {
	d.netMu.Lock()
	c := d.opts.Config
	out := api.Config{Path: c.Path, Settings: []api.Setting{}}
	for _, k := range config.Keys() {
		out.Settings = append(out.Settings, api.Setting{Key: k, Value: c.Value(k), Source: c.Source[k]})
	}
	d.netMu.Unlock()
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleStatus(w http.ResponseWriter, r *http.Request) error {
	imgs, err := d.images.List(r.Context())
	if err != nil {
		return err
	}
	pulls := d.images.Pulls()
	writeJSON(w, http.StatusOK, api.DaemonStatus{
		Version: version.Version, Commit: version.Commit, Date: version.Date, PID: os.Getpid(),
		Home: d.layout.Home, Socket: d.layout.Socket(), StateDir: d.layout.StateDir, CacheDir: d.layout.CacheDir,
		StartedAt: d.started.UTC(), Images: len(imgs), Pulls: pulls,
	})
	return nil
}

func (d *Daemon) handleStop(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "stopping"})
	d.requestStop()
	return nil
}
