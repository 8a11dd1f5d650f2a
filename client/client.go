// Package client is the Go client of bangerd's HTTP API over its Unix
// socket. The banger CLI uses it; so can any other program. Every method
// takes a context and returns *APIError for errors the daemon reported.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"banger/internal/api"
)

// Sentinel errors, matched by APIError.Is on the daemon's error code.
var (
	ErrNotFound = errors.New(api.CodeNotFound)
	ErrExists   = errors.New(api.CodeExists)
	ErrConflict = errors.New(api.CodeConflict)
	ErrInvalid  = errors.New(api.CodeInvalid)
)

// APIError is an error reported by the daemon.
type APIError struct {
	Status  int    // HTTP status; 200 for errors that ended a stream
	Code    string // stable code, one of the api.Code* constants
	Message string
}

var _ error = (*APIError)(nil)

func (e *APIError) Error() string { return e.Message }

// IsNotFound reports whether err is the daemon saying "not found".
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == api.CodeNotFound
}

// Is matches the sentinel errors of this package by code.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotFound, ErrExists, ErrConflict, ErrInvalid:
		return e.Code == target.Error()
	}
	return false
}

// DialError means nothing answered on the socket.
type DialError struct {
	Socket string
	Err    error
}

func (e *DialError) Error() string {
	return fmt.Sprintf("cannot reach bangerd at %s: %v", e.Socket, e.Err)
}
func (e *DialError) Unwrap() error { return e.Err }

// DaemonStoppedError means bangerd went away in the middle of a request:
// the connection broke after it was made (bangerd was stopped, killed or
// crashed). What the request did may be half done: ask bangerd again
// once it runs (its start cleans up what it finds).
type DaemonStoppedError struct {
	Request string // method and path
	Err     error
}

func (e *DaemonStoppedError) Error() string {
	return fmt.Sprintf("bangerd stopped during the request (%s): %v", e.Request, e.Err)
}
func (e *DaemonStoppedError) Unwrap() error { return e.Err }

// Client talks to one daemon. It is safe for concurrent use.
type Client struct {
	socket string
	http   *http.Client
}

// New returns a client for the daemon listening on socket. A host of the
// form unix:///path is accepted too.
func New(socket string) *Client {
	socket = strings.TrimPrefix(socket, "unix://")
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", socket)
			if err != nil {
				return nil, &DialError{Socket: socket, Err: err}
			}
			return conn, nil
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr}}
}

// Socket is the socket path the client dials.
func (c *Client) Socket() string { return c.socket }

func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	contentType := ""
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd, contentType = bytes.NewReader(b), "application/json"
	}
	return c.send(ctx, method, path, rd, contentType)
}

// send makes one request with a raw body (nil for none).
func (c *Client) send(ctx context.Context, method, path string, body io.Reader, contentType string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://bangerd"+path, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var de *DialError
		if errors.As(err, &de) {
			return nil, de
		}
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, &DaemonStoppedError{Request: method + " " + path, Err: err}
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// decodeError reads an error body, capped so a confused peer cannot make
// us buffer without bound.
func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e api.Error
	if json.Unmarshal(b, &e) != nil || e.Message == "" {
		return &APIError{Status: resp.StatusCode, Code: api.CodeInternal, Message: fmt.Sprintf("bangerd answered HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))}
	}
	return &APIError{Status: resp.StatusCode, Code: e.Code, Message: e.Message}
}

func (c *Client) getJSON(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding bangerd's answer to %s %s: %w", method, path, err)
	}
	return nil
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (*api.DaemonStatus, error) {
	var st api.DaemonStatus
	return &st, c.getJSON(ctx, http.MethodGet, "/v1/daemon", nil, &st)
}

// StopDaemon asks the daemon to shut down and returns once it accepted.
func (c *Client) StopDaemon(ctx context.Context) error {
	return c.getJSON(ctx, http.MethodPost, "/v1/daemon/stop", nil, nil)
}

// Images lists images.
func (c *Client) Images(ctx context.Context) ([]api.Image, error) {
	var out []api.Image
	return out, c.getJSON(ctx, http.MethodGet, "/v1/images", nil, &out)
}

func imagePath(name string) string { return "/v1/images/" + url.PathEscape(name) }

// Image returns one image by name.
func (c *Client) Image(ctx context.Context, name string) (*api.Image, error) {
	var img api.Image
	return &img, c.getJSON(ctx, http.MethodGet, imagePath(name), nil, &img)
}

// RemoveImage removes an image and returns what it was.
func (c *Client) RemoveImage(ctx context.Context, name string) (*api.Image, error) {
	var img api.Image
	return &img, c.getJSON(ctx, http.MethodDelete, imagePath(name), nil, &img)
}

// PruneCache removes cached layer blobs that no image uses.
func (c *Client) PruneCache(ctx context.Context) (*api.PruneResult, error) {
	var res api.PruneResult
	return &res, c.getJSON(ctx, http.MethodPost, "/v1/cache/prune", nil, &res)
}

// PullImage pulls an image, calling onEvent (when non-nil) for every
// event of the stream, the final one included. It returns the image, or
// the error that ended the stream as *APIError. Cancelling ctx
// disconnects; the daemon stops the pull unless another client waits
// for the same one.
func (c *Client) PullImage(ctx context.Context, req api.PullRequest, onEvent func(api.Event)) (*api.Image, error) {
	ev, err := c.stream(ctx, "/v1/images/pull", req, onEvent)
	if err != nil {
		return nil, err
	}
	if ev.Image == nil {
		return nil, errors.New("bangerd ended the pull without an image")
	}
	return ev.Image, nil
}

// PullKernel downloads a catalog kernel and imports it, reporting
// progress like PullImage.
func (c *Client) PullKernel(ctx context.Context, req api.KernelPullRequest, onEvent func(api.Event)) (*api.Kernel, error) {
	ev, err := c.stream(ctx, "/v1/kernels/pull", req, onEvent)
	if err != nil {
		return nil, err
	}
	if ev.Kernel == nil {
		return nil, errors.New("bangerd ended the pull without a kernel")
	}
	return ev.Kernel, nil
}

// ImportImage streams src (a docker save archive, an OCI layout as a tar,
// or a root file system tarball, compressed or not) to the daemon, which
// builds an image from it, and reports progress like PullImage. The
// daemon reads nothing but the stream, so src may be a file only the
// caller can read.
func (c *Client) ImportImage(ctx context.Context, opts api.ImportOptions, src io.Reader, onEvent func(api.Event)) (*api.Image, error) {
	b, err := json.Marshal(opts)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(ctx, http.MethodPost, "/v1/images/import?options="+url.QueryEscape(string(b)), src, "application/octet-stream")
	if err != nil {
		return nil, err
	}
	ev, err := readEvents(ctx, resp, onEvent)
	if err != nil {
		return nil, err
	}
	if ev.Image == nil {
		return nil, errors.New("bangerd ended the import without an image")
	}
	return ev.Image, nil
}

// BuildImage builds an image from a distribution's package archive
// (mmdebstrap on the daemon's host), reporting progress like PullImage.
func (c *Client) BuildImage(ctx context.Context, req api.BuildRequest, onEvent func(api.Event)) (*api.Image, error) {
	ev, err := c.stream(ctx, "/v1/images/build", req, onEvent)
	if err != nil {
		return nil, err
	}
	if ev.Image == nil {
		return nil, errors.New("bangerd ended the build without an image")
	}
	return ev.Image, nil
}

// stream posts body to path and reads newline-delimited events until the
// final result (returned) or error (returned as *APIError).
func (c *Client) stream(ctx context.Context, path string, body any, onEvent func(api.Event)) (*api.Event, error) {
	resp, err := c.do(ctx, http.MethodPost, path, body)
	if err != nil {
		return nil, err
	}
	return readEvents(ctx, resp, onEvent)
}

// readEvents reads a response's events until the final one, and closes
// the response.
func readEvents(ctx context.Context, resp *http.Response, onEvent func(api.Event)) (*api.Event, error) {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev api.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("decoding event: %w", err)
		}
		if onEvent != nil {
			onEvent(ev)
		}
		switch ev.Type {
		case api.EventResult:
			return &ev, nil
		case api.EventError:
			if ev.Error == nil {
				return nil, errors.New("bangerd ended the stream with an empty error")
			}
			return nil, &APIError{Status: resp.StatusCode, Code: ev.Error.Code, Message: ev.Error.Message}
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, &DaemonStoppedError{Request: resp.Request.Method + " " + resp.Request.URL.Path, Err: err}
	}
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	return nil, &DaemonStoppedError{Request: resp.Request.Method + " " + resp.Request.URL.Path, Err: errors.New("the stream ended before its result")}
}

// Kernels lists imported kernels, newest first.
func (c *Client) Kernels(ctx context.Context) ([]api.Kernel, error) {
	var out []api.Kernel
	return out, c.getJSON(ctx, http.MethodGet, "/v1/kernels", nil, &out)
}

// Kernel returns one kernel by name.
func (c *Client) Kernel(ctx context.Context, name string) (*api.Kernel, error) {
	var k api.Kernel
	return &k, c.getJSON(ctx, http.MethodGet, "/v1/kernels/"+url.PathEscape(name), nil, &k)
}

// RemoveKernel removes a kernel and returns what it was.
func (c *Client) RemoveKernel(ctx context.Context, name string) (*api.Kernel, error) {
	var k api.Kernel
	return &k, c.getJSON(ctx, http.MethodDelete, "/v1/kernels/"+url.PathEscape(name), nil, &k)
}

// ImportKernel imports a kernel file from the daemon's host.
func (c *Client) ImportKernel(ctx context.Context, req api.KernelImportRequest) (*api.Kernel, error) {
	var k api.Kernel
	return &k, c.getJSON(ctx, http.MethodPost, "/v1/kernels/import", req, &k)
}

// KernelCatalog lists the kernels `kernel pull` can fetch.
func (c *Client) KernelCatalog(ctx context.Context) ([]api.CatalogKernel, error) {
	var out []api.CatalogKernel
	return out, c.getJSON(ctx, http.MethodGet, "/v1/kernels/catalog", nil, &out)
}

// DefaultKernel returns the kernel new VMs get, importing the host's
// newest installed kernel when none is imported yet.
func (c *Client) DefaultKernel(ctx context.Context) (*api.Kernel, error) {
	var k api.Kernel
	return &k, c.getJSON(ctx, http.MethodPost, "/v1/kernels/default", nil, &k)
}

// VMs lists VMs.
func (c *Client) VMs(ctx context.Context) ([]api.VM, error) {
	var out []api.VM
	return out, c.getJSON(ctx, http.MethodGet, "/v1/vms", nil, &out)
}

// VM returns one VM by name.
func (c *Client) VM(ctx context.Context, name string) (*api.VM, error) {
	var v api.VM
	return &v, c.getJSON(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(name), nil, &v)
}

// Doctor runs the daemon's checks.
func (c *Client) Doctor(ctx context.Context) ([]api.Check, error) {
	var out []api.Check
	return out, c.getJSON(ctx, http.MethodGet, "/v1/doctor", nil, &out)
}

// Config returns the daemon's effective configuration.
func (c *Client) Config(ctx context.Context) (*api.Config, error) {
	var cfg api.Config
	return &cfg, c.getJSON(ctx, http.MethodGet, "/v1/config", nil, &cfg)
}

// AddSSHKey authorizes a public key in every VM.
func (c *Client) AddSSHKey(ctx context.Context, req api.SSHKeyRequest) error {
	return c.getJSON(ctx, http.MethodPost, "/v1/ssh/keys", req, nil)
}

// CreateVM creates a VM and, unless asked not to, starts it and waits
// until its agent is ready. A VM that failed to start comes back as an
// *APIError whose message carries the console's last lines.
// With onEvent, progress events (stages disk, network, vmm, boot) are
// passed to it as they happen.
func (c *Client) CreateVM(ctx context.Context, req api.VMCreateRequest, onEvent func(api.Event)) (*api.VM, error) {
	if onEvent != nil {
		return c.vmStream(ctx, "/v1/vms?stream=1", req, onEvent)
	}
	return c.vmCall(ctx, http.MethodPost, "/v1/vms", req)
}

func (c *Client) vmStream(ctx context.Context, path string, body any, onEvent func(api.Event)) (*api.VM, error) {
	ev, err := c.stream(ctx, path, body, onEvent)
	if err != nil {
		return nil, err
	}
	if ev.VM == nil {
		return nil, errors.New("bangerd ended the stream without a VM")
	}
	return ev.VM, nil
}

// VMAction runs start, stop, kill or restart on a VM.
// With onEvent, start and restart report their progress like CreateVM.
func (c *Client) VMAction(ctx context.Context, name, action string, onEvent func(api.Event)) (*api.VM, error) {
	path := "/v1/vms/" + url.PathEscape(name) + "/" + action
	if onEvent != nil && (action == "start" || action == "restart") {
		return c.vmStream(ctx, path+"?stream=1", nil, onEvent)
	}
	return c.vmCall(ctx, http.MethodPost, path, nil)
}

// SetPolicy replaces a VM's egress rules (req.Reset: the default).
func (c *Client) SetPolicy(ctx context.Context, name string, req api.PolicyRequest) (*api.VM, error) {
	return c.vmCall(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(name)+"/policy", req)
}

// RemoveVM removes a VM; force kills a running one first.
func (c *Client) RemoveVM(ctx context.Context, name string, force bool) (*api.VM, error) {
	path := "/v1/vms/" + url.PathEscape(name)
	if force {
		path += "?force=1"
	}
	var v api.VM
	return &v, c.getJSON(ctx, http.MethodDelete, path, nil, &v)
}

func (c *Client) vmCall(ctx context.Context, method, path string, body any) (*api.VM, error) {
	var v api.VM
	return &v, c.getJSON(ctx, method, path, body, &v)
}

// VMLogs copies a VM's console log to w; with follow it keeps copying new
// output until ctx ends.
func (c *Client) VMLogs(ctx context.Context, name string, follow bool, w io.Writer) error {
	path := "/v1/vms/" + url.PathEscape(name) + "/logs"
	if follow {
		path += "?follow=1"
	}
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// PruneVMs removes every VM that is not running and returns their names.
func (c *Client) PruneVMs(ctx context.Context) ([]string, error) {
	var out []string
	return out, c.getJSON(ctx, http.MethodPost, "/v1/vms/prune", nil, &out)
}

// SnapshotVM snapshots a running VM (memory, device state and disk at
// one instant); name "" picks one.
func (c *Client) SnapshotVM(ctx context.Context, vm, name string) (*api.Snapshot, error) {
	var s api.Snapshot
	return &s, c.getJSON(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(vm)+"/snapshot", api.SnapshotRequest{Name: name}, &s)
}

// Snapshots lists snapshots and warm templates.
func (c *Client) Snapshots(ctx context.Context) ([]api.Snapshot, error) {
	var out []api.Snapshot
	return out, c.getJSON(ctx, http.MethodGet, "/v1/snapshots", nil, &out)
}

// Snapshot returns one snapshot or template.
func (c *Client) Snapshot(ctx context.Context, name string) (*api.Snapshot, error) {
	var s api.Snapshot
	return &s, c.getJSON(ctx, http.MethodGet, "/v1/snapshots/"+url.PathEscape(name), nil, &s)
}

// RemoveSnapshot removes a snapshot or template; VMs made from it keep
// running.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) (*api.Snapshot, error) {
	var s api.Snapshot
	return &s, c.getJSON(ctx, http.MethodDelete, "/v1/snapshots/"+url.PathEscape(name), nil, &s)
}

// ForkVM makes new running VMs restored from a snapshot or a running VM.
func (c *Client) ForkVM(ctx context.Context, req api.ForkRequest) ([]api.VM, error) {
	var out []api.VM
	return out, c.getJSON(ctx, http.MethodPost, "/v1/vms/fork", req, &out)
}

// WarmImage makes the warm template for VMs of an image and shape.
func (c *Client) WarmImage(ctx context.Context, req api.WarmRequest) (*api.Snapshot, error) {
	var s api.Snapshot
	return &s, c.getJSON(ctx, http.MethodPost, "/v1/images/warm", req, &s)
}

// Network is the daemon's VM network: bridge, subnet, gateway and how
// many VMs hold addresses.
func (c *Client) Network(ctx context.Context) (*api.Network, error) {
	var n api.Network
	return &n, c.getJSON(ctx, http.MethodGet, "/v1/network", nil, &n)
}

// SetSubnet makes subnet (a CIDR) the VM subnet, kept across daemon
// restarts. Only root and the users of the config's net.subnet_users
// may, and only while no VM holds an address (ErrConflict).
func (c *Client) SetSubnet(ctx context.Context, subnet string) (*api.Network, error) {
	var n api.Network
	return &n, c.getJSON(ctx, http.MethodPost, "/v1/network", api.NetworkRequest{Subnet: subnet}, &n)
}

// CreateE2BKey makes an API key of the E2B endpoint for the calling
// user; the answer holds the key's text, shown only this once.
func (c *Client) CreateE2BKey(ctx context.Context, req api.E2BKeyRequest) (*api.E2BKey, error) {
	var k api.E2BKey
	return &k, c.getJSON(ctx, http.MethodPost, "/v1/e2b/keys", req, &k)
}

// E2BKeys lists the caller's E2B keys (root: everyone's).
func (c *Client) E2BKeys(ctx context.Context) ([]api.E2BKey, error) {
	var out []api.E2BKey
	return out, c.getJSON(ctx, http.MethodGet, "/v1/e2b/keys", nil, &out)
}

// RemoveE2BKey removes one of the caller's E2B keys, by id or name.
func (c *Client) RemoveE2BKey(ctx context.Context, id string) (*api.E2BKey, error) {
	var k api.E2BKey
	return &k, c.getJSON(ctx, http.MethodDelete, "/v1/e2b/keys/"+url.PathEscape(id), nil, &k)
}
