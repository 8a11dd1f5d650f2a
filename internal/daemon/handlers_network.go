package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"banger/internal/api"
)

// The VM subnet can change at run time (POST /v1/network): a
// Kubernetes node's pods take their addresses from its podCIDR, which
// the cluster assigns after the node registers. What was set is kept in
// the state directory, so that bangerd comes back on it, and wins over
// the configured subnet: the VMs that still run hold its addresses.

// networkFile is where a subnet set through the API is kept.
func (d *Daemon) networkFile() string { return filepath.Join(d.layout.StateDir, "network.json") }

// setSubnet is what networkFile holds.
type setSubnet struct {
	Subnet string    `json:"subnet"`
	By     string    `json:"by"`
	At     time.Time `json:"at"`
}

// loadSubnet puts a subnet set through the API over the configured one
// (before the network is wired).
func (d *Daemon) loadSubnet() error {
	b, err := os.ReadFile(d.networkFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var s setSubnet
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w: remove it to use the configured subnet (no VM may be running)", d.networkFile(), err)
	}
	p, err := netip.ParsePrefix(s.Subnet)
	if err != nil {
		return fmt.Errorf("%s: subnet %q: %w: remove it to use the configured subnet (no VM may be running)", d.networkFile(), s.Subnet, err)
	}
	d.applySubnet(p, s)
	return nil
}

func (d *Daemon) applySubnet(p netip.Prefix, s setSubnet) {
	d.opts.Network.Subnet = p
	d.opts.Config.Net.Subnet = p.String()
	src := fmt.Sprintf("set by %s at %s (%s)", s.By, s.At.UTC().Format(time.RFC3339), d.networkFile())
	d.opts.Config.Source["net.subnet"] = src
}

func (d *Daemon) handleNetwork(w http.ResponseWriter, r *http.Request) error {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	n, err := d.network(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, n)
	return nil
}

func (d *Daemon) network(r *http.Request) (api.Network, error) {
	held, err := d.vms.Addressed(r.Context())
	if err != nil {
		return api.Network{}, err
	}
	p := d.net.Subnet()
	return api.Network{Bridge: d.opts.Config.Net.Bridge, Subnet: p.String(), Gateway: p.Addr().Next().String(),
		NetNS: d.opts.Network.NetNS, Source: d.opts.Config.Source["net.subnet"], Addresses: held}, nil
}

func (d *Daemon) handleSetNetwork(w http.ResponseWriter, r *http.Request) error {
	c := callerOf(r.Context())
	if !c.Admin && !d.maySetSubnet(c.UID) {
		return fmt.Errorf("%w: only root and the users of the config's net.subnet_users may change the VM subnet", api.ErrForbidden)
	}
	var req api.NetworkRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	p, err := netip.ParsePrefix(req.Subnet)
	if err != nil {
		return fmt.Errorf("%w: subnet %q: a CIDR such as 10.244.1.0/24", api.ErrInvalid, req.Subnet)
	}
	if p != p.Masked() {
		return fmt.Errorf("%w: subnet %s has bits set past /%d: write %s", api.ErrInvalid, p, p.Bits(), p.Masked())
	}
	d.netMu.Lock()
	defer d.netMu.Unlock()
	if p != d.net.Subnet() {
		if err := d.vms.SetSubnet(r.Context(), p); err != nil {
			return err
		}
		s := setSubnet{Subnet: p.String(), By: userName(c.UID), At: time.Now().UTC()}
		b, _ := json.Marshal(s)
		tmp := d.networkFile() + ".new"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, d.networkFile()); err != nil {
			os.Remove(tmp)
			return err
		}
		d.applySubnet(p, s)
		d.log.Info("audit", "uid", c.UID, "op", "set subnet", "subnet", p.String())
	}
	n, err := d.network(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, n)
	return nil
}

// maySetSubnet reports whether uid is one of net.subnet_users.
func (d *Daemon) maySetSubnet(uid int) bool {
	name := userName(uid)
	return slices.Contains(d.opts.Config.Net.SubnetUsers, name)
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}
