package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

type recorded struct {
	method, path string
	body         map[string]any
}

// recorder serves an API socket that records requests and answers 204,
// or a fault for paths in faults.
func recorder(t *testing.T, faults map[string]string) (*Client, func() []recorded) {
	t.Helper()
	dir, _ := os.MkdirTemp("", "fc")
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []recorded
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		json.Unmarshal(b, &body)
		mu.Lock()
		got = append(got, recorded{r.Method, r.URL.Path, body})
		mu.Unlock()
		if msg, ok := faults[r.URL.Path]; ok {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"fault_message": msg})
			return
		}
		if r.Method == http.MethodGet {
			json.NewEncoder(w).Encode(InstanceInfo{ID: "vm1", State: "Running", VMMVersion: "1.14.2", AppName: "Firecracker"})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return NewClient(sock), func() []recorded {
		mu.Lock()
		defer mu.Unlock()
		return append([]recorded(nil), got...)
	}
}

func TestClientRequests(t *testing.T) {
	c, got := recorder(t, nil)
	ctx := context.Background()
	steps := []struct {
		call         func() error
		method, path string
		body         string
	}{
		{func() error { return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 512}) }, "PUT", "/machine-config", `{"mem_size_mib":512,"smt":false,"vcpu_count":2}`},
		{func() error {
			return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k", InitrdPath: "/i", BootArgs: "console=ttyS0"})
		}, "PUT", "/boot-source", `{"boot_args":"console=ttyS0","initrd_path":"/i","kernel_image_path":"/k"}`},
		{func() error { return c.PutDrive(ctx, Drive{DriveID: "root", PathOnHost: "/r", IsReadOnly: true}) }, "PUT", "/drives/root", `{"drive_id":"root","is_read_only":true,"is_root_device":false,"path_on_host":"/r"}`},
		{func() error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "02:00:00:00:00:01"})
		}, "PUT", "/network-interfaces/eth0", `{"guest_mac":"02:00:00:00:00:01","host_dev_name":"tap0","iface_id":"eth0"}`},
		{func() error { return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "/v.sock"}) }, "PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v.sock"}`},
		{func() error { return c.Action(ctx, "InstanceStart") }, "PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{func() error { return c.SetState(ctx, "Paused") }, "PATCH", "/vm", `{"state":"Paused"}`},
		{func() error {
			return c.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Full", SnapshotPath: "/s", MemFilePath: "/m"})
		}, "PUT", "/snapshot/create", `{"mem_file_path":"/m","snapshot_path":"/s","snapshot_type":"Full"}`},
		{func() error {
			return c.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: "/s", MemBackend: MemBackend{BackendType: "File", BackendPath: "/m"}, ResumeVM: true})
		}, "PUT", "/snapshot/load", `{"enable_diff_snapshots":false,"mem_backend":{"backend_path":"/m","backend_type":"File"},"resume_vm":true,"snapshot_path":"/s"}`},
	}
	for _, s := range steps {
		if err := s.call(); err != nil {
			t.Fatalf("%s %s: %v", s.method, s.path, err)
		}
	}
	reqs := got()
	for i, s := range steps {
		b, _ := json.Marshal(reqs[i].body)
		if reqs[i].method != s.method || reqs[i].path != s.path || string(b) != s.body {
			t.Errorf("request %d = %s %s %s, want %s %s %s", i, reqs[i].method, reqs[i].path, b, s.method, s.path, s.body)
		}
	}
	info, err := c.InstanceInfo(ctx)
	if err != nil || info.State != "Running" {
		t.Errorf("instance info = %+v, %v", info, err)
	}
}

func TestClientFault(t *testing.T) {
	c, _ := recorder(t, map[string]string{"/boot-source": "Invalid kernel path"})
	err := c.PutBootSource(context.Background(), BootSource{KernelImagePath: "/nope"})
	var fe *FaultError
	if !errors.As(err, &fe) || fe.Status != 400 || fe.Message != "Invalid kernel path" {
		t.Fatalf("err = %v", err)
	}
}
