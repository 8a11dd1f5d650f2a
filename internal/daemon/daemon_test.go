package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"syscall"
	"testing"

	"banger/internal/api"
	"banger/internal/imagebuild"
	"banger/internal/imagepull"
	"banger/internal/kernel"
	"banger/internal/vm"
	"banger/internal/vmm"
	"banger/internal/vmnet"
)

// TestClassifyRest covers the sentinels that no request in
// test/integration's TestErrorCodes provokes (that test checks the codes
// a client sees, each from a real request through the socket): other
// sentinels for the same codes, and conditions a test cannot cheaply
// bring about (a canceled job, an agent that stopped answering, a
// snapshot whose files were damaged, a mirror that failed a download).
func TestClassifyRest(t *testing.T) {
	cases := []struct {
		err    error
		status int
		code   string
	}{
		{imagepull.ErrNotFound, http.StatusNotFound, api.CodeNotFound},
		{imagebuild.ErrInvalidPackage, http.StatusBadRequest, api.CodeInvalid},
		{vm.ErrSnapshotState, http.StatusConflict, api.CodeConflict},
		{vm.ErrSnapshotIncompatible, http.StatusConflict, api.CodeConflict},
		{imagepull.ErrNoPlatform, http.StatusUnprocessableEntity, api.CodeBadImage},
		{imagepull.ErrBadLayer, http.StatusUnprocessableEntity, api.CodeBadImage},
		{imagepull.ErrUnsafeEntry, http.StatusUnprocessableEntity, api.CodeBadImage},
		{imagepull.ErrDigestMismatch, http.StatusUnprocessableEntity, api.CodeBadImage},
		{imagepull.ErrTruncated, http.StatusUnprocessableEntity, api.CodeBadImage},
		{kernel.ErrMissingModule, http.StatusUnprocessableEntity, api.CodeBadKernel},
		{kernel.ErrTooLarge, http.StatusUnprocessableEntity, api.CodeBadKernel},
		{syscall.ENOSPC, http.StatusInsufficientStorage, api.CodeNoSpace},
		{context.Canceled, http.StatusServiceUnavailable, api.CodeCanceled},
		{vm.ErrAgent, http.StatusBadGateway, api.CodeAgent},
		{vmnet.ErrNetwork, http.StatusServiceUnavailable, api.CodeNetwork},
		{vmm.ErrNotSupported, http.StatusNotImplemented, api.CodeNotSupported},
		{imagebuild.ErrBuild, http.StatusBadGateway, api.CodeBuild},
		{kernel.ErrDownload, http.StatusBadGateway, api.CodeDownload},
		{vm.ErrSnapshotDamaged, http.StatusUnprocessableEntity, api.CodeBadSnapshot},
		{errors.New("boom"), http.StatusInternalServerError, api.CodeInternal},
	}
	for _, c := range cases {
		status, code := classify(fmt.Errorf("x: %w", c.err))
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
