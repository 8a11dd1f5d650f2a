package e2b

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"

	"banger/internal/e2b/envd/filesystem/filesystemconnect"
	"banger/internal/e2b/envd/process/processconnect"
	"banger/internal/vm"
	"banger/internal/vsockagent"
)

// envd's API of one sandbox: the request names the sandbox, carries its
// access token, and is served by translating it into the guest agent's
// operations on the sandbox's VM.

type envdKey struct{}

// envdCtx is the sandbox an envd request is for, and its owner as the
// VM service takes it.
type envdCtx struct {
	sb *sandbox
	c  vm.Caller
}

func envdOf(ctx context.Context) envdCtx { return ctx.Value(envdKey{}).(envdCtx) }

// gone answers a request for a sandbox that is not there (any more) as
// E2B's proxy does: 502, which the SDK turns into its sandbox-timeout
// and not-found errors.
func gone(w http.ResponseWriter, id, msg string) {
	writeJSON(w, http.StatusBadGateway, map[string]any{"sandboxId": id, "message": msg, "code": http.StatusBadGateway})
}

// serveEnvd checks the sandbox and its access token, and serves r with
// envd.
func (s *Service) serveEnvd(w http.ResponseWriter, r *http.Request, id string, envd http.Handler) {
	sb, ok := s.get(id)
	if !ok || sb.Creating {
		gone(w, id, "The sandbox was not found")
		return
	}
	// /health is envd's one open endpoint (the SDK's isRunning).
	if r.URL.Path != "/health" && subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Access-Token")), []byte(sb.AccessToken)) != 1 {
		writeJSON(w, http.StatusUnauthorized, apiErr{Code: http.StatusUnauthorized, Message: "unauthorized access, please provide a valid access token or method signing if supported"})
		return
	}
	c, err := s.running(r.Context(), sb)
	if err != nil {
		gone(w, id, err.Error())
		return
	}
	ctx := context.WithValue(r.Context(), envdKey{}, envdCtx{sb: sb, c: c})
	envd.ServeHTTP(w, r.WithContext(ctx))
}

// autoResumeTimeout is how long a sandbox resumed by a request lives
// (E2B's proxy gives the same).
const autoResumeTimeout = 5 * time.Minute

// running makes sure sb's VM runs (resuming it when sb resumes on
// traffic) and returns its owner, or says why the sandbox cannot be
// reached.
func (s *Service) running(ctx context.Context, sb *sandbox) (vm.Caller, error) {
	rt := s.runtime(sb.ID)
	rt.mu.Lock()
	c, err := rt.caller, error(nil)
	if !rt.callerOK {
		if c, err = callerOf(sb.Owner); err == nil {
			rt.caller, rt.callerOK = c, true
		}
	}
	rt.mu.Unlock()
	if err != nil {
		return c, err
	}
	v, err := s.vms.Get(ctx, c, sb.ID)
	if err != nil {
		return c, errors.New("The sandbox was not found")
	}
	switch {
	case v.State == "running":
		return c, nil
	case sb.AutoResume:
		if err := s.wakeUp(context.WithoutCancel(ctx), c, view{sb, v}, autoResumeTimeout); err != nil {
			return c, fmt.Errorf("The sandbox is paused and could not be resumed: %v", err)
		}
		return c, nil
	}
	if v.State == "paused" {
		return c, errors.New("The sandbox is paused: connect to it (Sandbox.connect) to resume it")
	}
	return c, fmt.Errorf("The sandbox is not running (its VM is %s): connect to it (Sandbox.connect) to start it", v.State)
}

// agent is the agent session of the request's sandbox.
func (s *Service) agent(ctx context.Context) (*vsockagent.Session, error) {
	e := envdOf(ctx)
	sess, err := s.vms.Agent(ctx, e.c, e.sb.ID)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("sandbox %s: %w", e.sb.ID, err))
	}
	return sess, nil
}

func (s *Service) envdMux() http.Handler {
	mux := http.NewServeMux()
	opts := []connect.HandlerOption{connect.WithCompressMinBytes(1 << 10)}
	mux.Handle(processconnect.NewProcessHandler(&processService{s}, opts...))
	mux.Handle(filesystemconnect.NewFilesystemHandler(&filesystemService{s: s}, opts...))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("GET /envs", s.envs)
	mux.HandleFunc("GET /files", s.download)
	mux.HandleFunc("POST /files", s.upload)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, apiErr{Code: http.StatusNotFound, Message: fmt.Sprintf("envd has no %s %s", r.Method, r.URL.Path)})
	})
	return mux
}

// userOf is who a request acts as: the Basic authorization's user (the
// SDK's user option), else DefaultUser.
func userOf(h http.Header) string {
	if auth, ok := strings.CutPrefix(h.Get("Authorization"), "Basic "); ok {
		if b, err := base64.StdEncoding.DecodeString(auth); err == nil {
			if u, _, _ := strings.Cut(string(b), ":"); u != "" {
				return u
			}
		}
	}
	return DefaultUser
}

// asUser runs op as user; when the guest lacks DefaultUser (a sandbox
// restored from a snapshot of a VM banger made, say), it makes the user
// and runs op again.
func (s *Service) asUser(ctx context.Context, user string, op func(*vsockagent.Session) error) error {
	sess, err := s.agent(ctx)
	if err != nil {
		return err
	}
	err = op(sess)
	if user == DefaultUser && vsockagent.IsCode(err, vsockagent.CodeNoUser) {
		if _, uerr := vsockagent.EnsureUser(ctx, sess, DefaultUser, ""); uerr != nil {
			return fmt.Errorf("making the user %q: %w", DefaultUser, uerr)
		}
		err = op(sess)
	}
	return err
}

// rpcErr is an agent failure as envd's Connect error.
func rpcErr(err error, user string) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	var ae *vsockagent.AgentError
	if errors.As(err, &ae) {
		switch ae.Code {
		case vsockagent.CodeNotFound, vsockagent.CodeNoProcess:
			return connect.NewError(connect.CodeNotFound, err)
		case vsockagent.CodeExists:
			return connect.NewError(connect.CodeAlreadyExists, err)
		case vsockagent.CodeNotDir, vsockagent.CodeIsDir, vsockagent.CodeInvalid, vsockagent.CodeNotExec:
			return connect.NewError(connect.CodeInvalidArgument, err)
		case vsockagent.CodeNoUser:
			return connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid username: '%s'", user))
		case vsockagent.CodeNoSpace:
			return connect.NewError(connect.CodeResourceExhausted, err)
		case vsockagent.CodeDenied:
			return connect.NewError(connect.CodePermissionDenied, err)
		case vsockagent.CodeNoStdin, vsockagent.CodeNotTTY:
			return connect.NewError(connect.CodeFailedPrecondition, err)
		}
		return connect.NewError(connect.CodeInternal, err)
	}
	if errors.Is(err, context.Canceled) {
		return connect.NewError(connect.CodeCanceled, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	// The session broke: the VM stopped, was removed, or its agent
	// went away.
	return connect.NewError(connect.CodeUnavailable, err)
}
