package daemon

import (
	"fmt"
	"net/http"

	"banger/internal/api"
	"banger/internal/doctor"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vsockagent"
)

// The VM endpoints: each decodes, calls one method of the VM service and
// encodes. What a VM may do, and every lock and transition, is the
// service's.

func (d *Daemon) handleCreateVM(w http.ResponseWriter, r *http.Request) error {
	var req api.VMCreateRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	return respondVM(w, r, http.StatusCreated, func(progress func(string)) (*api.VM, error) {
		return d.vms.Create(r.Context(), callerOf(r.Context()), req, progress)
	})
}

// handleVMAction is POST /v1/vms/{name}/{action}: start, restart, stop,
// kill, pause, resume.
func (d *Daemon) handleVMAction(w http.ResponseWriter, r *http.Request) error {
	name, action := r.PathValue("name"), r.PathValue("action")
	ctx, c := r.Context(), callerOf(r.Context())
	var op func(progress func(string)) (*api.VM, error)
	switch action {
	case "start":
		op = func(p func(string)) (*api.VM, error) { return d.vms.Start(ctx, c, name, p) }
	case "restart":
		op = func(p func(string)) (*api.VM, error) { return d.vms.Restart(ctx, c, name, p) }
	case "stop":
		op = func(func(string)) (*api.VM, error) { return d.vms.Stop(ctx, c, name) }
	case "kill":
		op = func(func(string)) (*api.VM, error) { return d.vms.Kill(ctx, c, name) }
	case "pause":
		op = func(func(string)) (*api.VM, error) { return d.vms.Pause(ctx, c, name) }
	case "resume":
		op = func(func(string)) (*api.VM, error) { return d.vms.Resume(ctx, c, name) }
	default:
		return fmt.Errorf("%w: no VM action %q", store.ErrNotFound, action)
	}
	// A VM that is not there is an HTTP error, streamed or not.
	if _, err := d.vms.Get(ctx, c, name); err != nil {
		return err
	}
	return respondVM(w, r, http.StatusOK, op)
}

// respondVM runs a VM operation and answers with the VM, or, with
// ?stream=1, with NDJSON progress events (stages: disk, network, vmm,
// boot) and a final result or error event.
func respondVM(w http.ResponseWriter, r *http.Request, status int, op func(progress func(string)) (*api.VM, error)) error {
	if r.URL.Query().Get("stream") != "1" {
		v, err := op(nil)
		if err != nil {
			return err
		}
		writeJSON(w, status, v)
		return nil
	}
	ew := newEventWriter(w)
	v, err := op(func(stage string) { ew.emit(api.Event{Type: api.EventProgress, Stage: stage}) })
	if err != nil {
		return ew.emit(api.Event{Type: api.EventError, Error: apiError(err)})
	}
	return ew.emit(api.Event{Type: api.EventResult, VM: v})
}

func (d *Daemon) handleRemoveVM(w http.ResponseWriter, r *http.Request) error {
	v, err := d.vms.Remove(r.Context(), callerOf(r.Context()), r.PathValue("name"), r.URL.Query().Get("force") == "1")
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (d *Daemon) handlePruneVMs(w http.ResponseWriter, r *http.Request) error {
	removed, err := d.vms.Prune(r.Context(), callerOf(r.Context()))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, removed)
	return nil
}

func (d *Daemon) handleFork(w http.ResponseWriter, r *http.Request) error {
	var req api.ForkRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	out, err := d.vms.Fork(r.Context(), callerOf(r.Context()), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

func (d *Daemon) handleSnapshotVM(w http.ResponseWriter, r *http.Request) error {
	var req api.SnapshotRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	sn, err := d.vms.Snapshot(r.Context(), callerOf(r.Context()), r.PathValue("name"), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, sn)
	return nil
}

func (d *Daemon) handleRemoveSnapshot(w http.ResponseWriter, r *http.Request) error {
	sn, err := d.vms.RemoveSnapshot(r.Context(), callerOf(r.Context()), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sn)
	return nil
}

// handleWarm is POST /v1/images/warm: 201 with the template made, 200
// with the one that was there.
func (d *Daemon) handleWarm(w http.ResponseWriter, r *http.Request) error {
	var req api.WarmRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	tpl, made, err := d.vms.Warm(r.Context(), callerOf(r.Context()), req)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if made {
		status = http.StatusCreated
	}
	writeJSON(w, status, tpl)
	return nil
}

// handleVMLogs streams the console log; with follow=1 it keeps streaming
// new output until the client goes away.
func (d *Daemon) handleVMLogs(w http.ResponseWriter, r *http.Request) error {
	name, c := r.PathValue("name"), callerOf(r.Context())
	if _, err := d.vms.Get(r.Context(), c, name); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	return d.vms.Logs(r.Context(), c, name, r.URL.Query().Get("follow") == "1", w, func() { rc.Flush() })
}

// handleAgent upgrades the connection to the agent protocol: the CLI
// opens streams (exec, cp, ports, forwarded connections) and each is
// relayed to a stream of the VM's own agent session.
func (d *Daemon) handleAgent(w http.ResponseWriter, r *http.Request) error {
	if r.Header.Get("Upgrade") != api.AgentUpgrade {
		return fmt.Errorf("%w: this endpoint speaks %s (Connection: Upgrade)", api.ErrInvalid, api.AgentUpgrade)
	}
	back, err := d.vms.Agent(r.Context(), callerOf(r.Context()), r.PathValue("name"))
	if err != nil {
		return err
	}
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", api.AgentUpgrade)
	if err := buf.Flush(); err != nil {
		return nil
	}
	vm.ServeRelay(vsockagent.NewChannelReader(buf.Reader, conn), back, conn)
	return nil
}

// handlePolicy is POST /v1/vms/{name}/policy: new egress rules.
func (d *Daemon) handlePolicy(w http.ResponseWriter, r *http.Request) error {
	var req api.PolicyRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	v, err := d.vms.SetPolicy(r.Context(), callerOf(r.Context()), r.PathValue("name"), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (d *Daemon) handleAddSSHKey(w http.ResponseWriter, r *http.Request) error {
	var req api.SSHKeyRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := d.vms.AddSSHKey(r.Context(), callerOf(r.Context()), req); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleDoctor checks what the daemon depends on, as the daemon sees it
// (its user, its PATH, its namespace).
func (d *Daemon) handleDoctor(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, doctor.Run(r.Context(), d.doctor))
	return nil
}
