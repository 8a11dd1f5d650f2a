package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"banger/internal/api"
	"banger/internal/imagebuild"
	"banger/internal/imagepull"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vmm"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("x: %w", store.ErrNotFound), http.StatusNotFound, api.CodeNotFound},
		{fmt.Errorf("x: %w", imagepull.ErrNotFound), http.StatusNotFound, api.CodeNotFound},
		{fmt.Errorf("x: %w", store.ErrExists), http.StatusConflict, api.CodeExists},
		{fmt.Errorf("x: %w", api.ErrConflict), http.StatusConflict, api.CodeConflict},
		{fmt.Errorf("x: %w", imagepull.ErrBadReference), http.StatusBadRequest, api.CodeInvalid},
		{fmt.Errorf("x: %w", imagepull.ErrAuth), http.StatusBadGateway, api.CodeAuth},
		{fmt.Errorf("x: %w", imagepull.ErrUnreachable), http.StatusBadGateway, api.CodeUnreachable},
		{fmt.Errorf("x: %w", imagepull.ErrUnsafeEntry), http.StatusUnprocessableEntity, api.CodeBadImage},
		{fmt.Errorf("x: %w", imagepull.ErrDigestMismatch), http.StatusUnprocessableEntity, api.CodeBadImage},
		{fmt.Errorf("x: %w", imagepull.ErrNoSpace), http.StatusInsufficientStorage, api.CodeNoSpace},
		{fmt.Errorf("x: %w", context.Canceled), http.StatusServiceUnavailable, api.CodeCanceled},
		{fmt.Errorf("x: %w", api.ErrForbidden), http.StatusForbidden, api.CodeForbidden},
		{fmt.Errorf("x: %w", vm.ErrInvalidState), http.StatusConflict, api.CodeConflict},
		{fmt.Errorf("x: %w", vm.ErrStart), http.StatusInternalServerError, api.CodeVMStart},
		{fmt.Errorf("x: %w", vmm.ErrNotSupported), http.StatusNotImplemented, api.CodeNotSupported},
		{fmt.Errorf("x: %w", imagepull.ErrBadSource), http.StatusUnprocessableEntity, api.CodeBadImage},
		{fmt.Errorf("x: %w", imagepull.ErrAmbiguous), http.StatusConflict, api.CodeAmbiguous},
		{fmt.Errorf("x: %w", imagebuild.ErrBuild), http.StatusBadGateway, api.CodeBuild},
		{fmt.Errorf("x: %w", imagebuild.ErrInvalidPackage), http.StatusBadRequest, api.CodeInvalid},
		{errors.New("boom"), http.StatusInternalServerError, api.CodeInternal},
	}
	for _, c := range cases {
		status, code := classify(c.err)
		if status != c.status || code != c.code {
			t.Errorf("classify(%v) = %d %s, want %d %s", c.err, status, code, c.status, c.code)
		}
	}
}

func TestAllowedPeers(t *testing.T) {
	// A group every host has, looked up by name as the daemon does.
	a := allowedPeers{self: 1234, group: "root"}
	for _, c := range []struct {
		pc peerCred
		ok bool
	}{
		{peerCred{ok: true, uid: 0}, true},
		{peerCred{ok: true, uid: 1234}, true},
		{peerCred{ok: true, uid: 99999, gid: 0}, true},
		{peerCred{ok: true, uid: 99999, gid: 1}, false},
		{peerCred{ok: false}, false},
	} {
		if got := a.check(c.pc) == ""; got != c.ok {
			t.Errorf("check(%+v) allowed=%v, want %v", c.pc, got, c.ok)
		}
	}
}
