package vm

import (
	"fmt"
	"path"
	"strings"

	"banger/internal/api"
	"banger/internal/guestinit"
)

// maxRunBytes bounds what a VM's run override may hold in all: it
// travels in the restored guest's identity, which the agent reads with
// a 1 MiB limit.
const maxRunBytes = 256 << 10

// checkRun rejects a run override the guest could not apply.
func checkRun(r *api.Run) error {
	if r == nil {
		return nil
	}
	total := len(r.WorkingDir) + len(r.User)
	bad := func(what, s string) error {
		total += len(s)
		if strings.ContainsRune(s, 0) {
			return fmt.Errorf("%w: %s %q holds a NUL byte", api.ErrInvalid, what, s)
		}
		return nil
	}
	for _, a := range append(append([]string{}, r.Entrypoint...), r.Cmd...) {
		if err := bad("argument", a); err != nil {
			return err
		}
	}
	if len(r.Entrypoint) > 0 && r.Entrypoint[0] == "" {
		return fmt.Errorf("%w: the entrypoint's program is empty", api.ErrInvalid)
	}
	for _, e := range r.Env {
		if err := bad("environment entry", e); err != nil {
			return err
		}
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("%w: environment entry %q: want KEY=VALUE", api.ErrInvalid, e)
		}
	}
	if r.WorkingDir != "" && !path.IsAbs(r.WorkingDir) {
		return fmt.Errorf("%w: working directory %q: want an absolute path", api.ErrInvalid, r.WorkingDir)
	}
	if strings.ContainsAny(r.WorkingDir+r.User, "\x00\n") {
		return fmt.Errorf("%w: the working directory and user are one line each", api.ErrInvalid)
	}
	if total > maxRunBytes {
		return fmt.Errorf("%w: the command and environment hold %d bytes, more than %d", api.ErrInvalid, total, maxRunBytes)
	}
	return nil
}

// runSpec is what v runs: its image's config with v's override over it.
func runSpec(v api.VM, img api.Image) *guestinit.RunSpec {
	c := img.Config
	spec := &guestinit.RunSpec{Image: img.Name, Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User}
	r := v.Run
	if r == nil {
		return spec
	}
	if len(r.Entrypoint) > 0 {
		// As `docker run --entrypoint`: the image's cmd was arguments
		// to the image's entrypoint, not to this one.
		spec.Entrypoint, spec.Cmd = r.Entrypoint, nil
	}
	if len(r.Cmd) > 0 {
		spec.Cmd = r.Cmd
	}
	spec.Env = overEnv(spec.Env, r.Env)
	if r.WorkingDir != "" {
		spec.WorkingDir = r.WorkingDir
	}
	if r.User != "" {
		spec.User = r.User
	}
	if r.Supervised {
		// Whoever made the VM starts the command through the agent.
		spec.Entrypoint, spec.Cmd = nil, nil
	}
	return spec
}

// overEnv is base with over's entries set on top: a key in both takes
// over's value in base's place.
func overEnv(base, over []string) []string {
	if len(over) == 0 {
		return base
	}
	out := append([]string{}, base...)
	at := map[string]int{}
	for i, e := range out {
		k, _, _ := strings.Cut(e, "=")
		at[k] = i
	}
	for _, e := range over {
		k, _, _ := strings.Cut(e, "=")
		if i, ok := at[k]; ok {
			out[i] = e
			continue
		}
		at[k] = len(out)
		out = append(out, e)
	}
	return out
}
