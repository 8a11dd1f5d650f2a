package e2b

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"banger/internal/api"
	"banger/internal/store"
	"banger/internal/vm"
)

// The control plane: E2B's API, authenticated by X-API-Key, over the VM
// service. A sandbox is a VM of the same name, its owner the key's.

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
