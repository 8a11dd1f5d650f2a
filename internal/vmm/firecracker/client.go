// Package firecracker runs VMs with Firecracker: a small REST client for
// its API socket (the endpoints banger uses, nothing generated), the
// process launch, and the hybrid vsock dialer for the guest agent.
package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Client talks to one Firecracker process over its API socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the API socket at sock.
func NewClient(sock string) *Client {
	return &Client{http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}, Timeout: 30 * time.Second}}
}

// FaultError is an error Firecracker reported for a request.
type FaultError struct {
	Method, Path string
	Status       int
	Message      string
}

func (e *FaultError) Error() string {
	return fmt.Sprintf("firecracker %s %s: HTTP %d: %s", e.Method, e.Path, e.Status, e.Message)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://firecracker"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 300 {
		var fault struct {
			FaultMessage string `json:"fault_message"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &fault) == nil && fault.FaultMessage != "" {
			msg = fault.FaultMessage
		}
		return &FaultError{Method: method, Path: path, Status: resp.StatusCode, Message: msg}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decoding answer: %w", method, path, err)
		}
	}
	return nil
}

// MachineConfig is PUT /machine-config.
type MachineConfig struct {
	VCPUCount  int  `json:"vcpu_count"`
	MemSizeMiB int  `json:"mem_size_mib"`
	SMT        bool `json:"smt"`
}

// BootSource is PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// Drive is PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

// NetworkInterface is PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is PUT /vsock.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Logger is PUT /logger.
type Logger struct {
	LogPath   string `json:"log_path"`
	Level     string `json:"level,omitempty"`
	ShowLevel bool   `json:"show_level"`
}

// Metrics is PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// InstanceInfo is GET /.
type InstanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running", "Paused"
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

// SnapshotCreate is PUT /snapshot/create.
type SnapshotCreate struct {
	SnapshotType string `json:"snapshot_type"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// MemBackend is the memory source of a snapshot load.
type MemBackend struct {
	BackendType string `json:"backend_type"` // "File" or "Uffd"
	BackendPath string `json:"backend_path"`
}

// SnapshotLoad is PUT /snapshot/load.
type SnapshotLoad struct {
	SnapshotPath        string     `json:"snapshot_path"`
	MemBackend          MemBackend `json:"mem_backend"`
	EnableDiffSnapshots bool       `json:"enable_diff_snapshots"`
	ResumeVM            bool       `json:"resume_vm"`
	// NetworkOverrides gives a restored VM its own TAP (the snapshot
	// names the source's).
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
}

// NetworkOverride is one entry of SnapshotLoad.NetworkOverrides.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// DrivePatch is PATCH /drives/{drive_id}: a restored VM's disk moved
// to its own copy before the guest runs.
type DrivePatch struct {
	DriveID    string `json:"drive_id"`
	PathOnHost string `json:"path_on_host"`
}

// PatchDrive points a drive at another file.
func (c *Client) PatchDrive(ctx context.Context, d DrivePatch) error {
	return c.do(ctx, http.MethodPatch, "/drives/"+d.DriveID, d, nil)
}

func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.do(ctx, http.MethodPut, "/drives/"+d.DriveID, d, nil)
}

func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+n.IfaceID, n, nil)
}

func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.do(ctx, http.MethodPut, "/metrics", m, nil)
}

// Action is PUT /actions: InstanceStart, SendCtrlAltDel or FlushMetrics.
func (c *Client) Action(ctx context.Context, action string) error {
	return c.do(ctx, http.MethodPut, "/actions", map[string]string{"action_type": action}, nil)
}

// SetState is PATCH /vm: "Paused" or "Resumed".
func (c *Client) SetState(ctx context.Context, state string) error {
	return c.do(ctx, http.MethodPatch, "/vm", map[string]string{"state": state}, nil)
}

func (c *Client) CreateSnapshot(ctx context.Context, s SnapshotCreate) error {
	return c.do(ctx, http.MethodPut, "/snapshot/create", s, nil)
}

func (c *Client) LoadSnapshot(ctx context.Context, s SnapshotLoad) error {
	return c.do(ctx, http.MethodPut, "/snapshot/load", s, nil)
}

func (c *Client) InstanceInfo(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	return info, c.do(ctx, http.MethodGet, "/", nil, &info)
}

// VMConfig is GET /vm/config, as Firecracker reports it.
func (c *Client) VMConfig(ctx context.Context) (map[string]any, error) {
	var cfg map[string]any
	return cfg, c.do(ctx, http.MethodGet, "/vm/config", nil, &cfg)
}
