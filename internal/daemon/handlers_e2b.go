package daemon

import (
	"net/http"

	"banger/internal/api"
)

// The E2B endpoint's keys, managed over the daemon's own socket: a key
// is made for the caller (SO_PEERCRED), and acts as them.

func (d *Daemon) handleCreateE2BKey(w http.ResponseWriter, r *http.Request) error {
	var req api.E2BKeyRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	k, err := d.e2b.CreateKey(r.Context(), callerOf(r.Context()), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

func (d *Daemon) handleRemoveE2BKey(w http.ResponseWriter, r *http.Request) error {
	k, err := d.e2b.RemoveKey(r.Context(), callerOf(r.Context()), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}
