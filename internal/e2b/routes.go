package e2b

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"banger/internal/api"
	"banger/internal/store"
	"banger/internal/vm"
)

// One listener serves three things, told apart by the request:
//   - a request naming a sandbox (E2b-Sandbox-Id, as the SDK sends with
//     E2B_SANDBOX_URL; or a Host of PORT-ID.DOMAIN) for port 49983 is
//     envd's API of that sandbox;
//   - one naming another port is relayed to that port in the guest;
//   - anything else is the control plane, authenticated by X-API-Key.

// hostRE is a sandbox host name's first label: PORT-SANDBOXID.
var hostRE = regexp.MustCompile(`^([0-9]{1,5})-([a-z0-9]+)$`)

// target is the sandbox and port r is for, ok false for the control
// plane.
func target(r *http.Request) (id string, port int, ok bool) {
	if id = r.Header.Get("E2b-Sandbox-Id"); id != "" {
		port = EnvdPort
		if p := r.Header.Get("E2b-Sandbox-Port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil {
				return id, -1, true
			}
			port = n
		}
		return id, port, true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	first, _, _ := strings.Cut(host, ".")
	m := hostRE.FindStringSubmatch(first)
	if m == nil {
		return "", 0, false
	}
	port, _ = strconv.Atoi(m[1])
	return m[2], port, true
}

func (s *Service) routes() http.Handler {
	api := s.controlPlane()
	envd := s.envdMux()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, port, ok := target(r)
		switch {
		case !ok:
			api.ServeHTTP(w, r)
		case port == EnvdPort:
			s.serveEnvd(w, r, id, envd)
		case port < 1 || port > 65535:
			writeJSON(w, http.StatusBadRequest, apiErr{Code: 400, Message: fmt.Sprintf("E2b-Sandbox-Port %q: a port, 1 to 65535", r.Header.Get("E2b-Sandbox-Port"))})
		default:
			s.serveProxy(w, r, id, port)
		}
	})
}

// apiErr is E2B's error body.
type apiErr struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// e2bError is an error worded as E2B words it (the SDK shows the
// message after the status), with the status it answers.
type e2bError struct {
	status int
	msg    string
	cause  error // a sentinel, for errors.Is
}

func (e *e2bError) Error() string { return e.msg }
func (e *e2bError) Unwrap() error { return e.cause }

// statusOf maps the VM service's errors to E2B's statuses.
func statusOf(err error) int {
	var ee *e2bError
	if errors.As(err, &ee) {
		return ee.status
	}
	switch {
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, store.ErrNotFound), errors.Is(err, errGone):
		return http.StatusNotFound
	case errors.Is(err, api.ErrLimit):
		// E2B's answer to too many sandboxes: the SDK's RateLimitError.
		return http.StatusTooManyRequests
	case errors.Is(err, api.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, api.ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, api.ErrConflict), errors.Is(err, vm.ErrInvalidState), errors.Is(err, store.ErrExists):
		return http.StatusConflict
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// writeErr answers err as E2B does: its status and {code, message}.
func writeErr(w http.ResponseWriter, err error) {
	st := statusOf(err)
	writeJSON(w, st, apiErr{Code: st, Message: err.Error()})
}

// notFound is the sandbox-not-found error E2B words (the SDK's
// SandboxNotFoundError comes from the 404).
func notFound(id string) error {
	return &e2bError{http.StatusNotFound, fmt.Sprintf("Sandbox %q doesn't exist or you don't have access to it", id), errGone}
}
