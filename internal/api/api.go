// Package api holds the request, response and event types of bangerd's
// HTTP API and the stable error codes. The daemon, the public client and
// the CLI's --json output all use these types verbatim; the package holds
// no behaviour.
package api

import (
	"errors"
	"time"
)

// ImageConfig is the part of an OCI image config that a VM needs.
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// Run is what a VM runs instead of (part of) its image's config, as
// `docker run` takes it: Entrypoint replaces the image's entrypoint and
// drops its cmd (as --entrypoint does); Cmd replaces the cmd; Env entries
// (KEY=VALUE) are set over the image's; WorkingDir and User replace the
// image's. The environment and directory are every exec's defaults too.
type Run struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	// Supervised: the guest's init stage does not start the command;
	// whoever made the VM starts it through the agent (an exec with
	// detach) and watches it, so that it gets its exit status and may
	// start it again. The environment, directory and user still are
	// every exec's defaults. banger-kubelet runs a pod's container so.
	Supervised bool `json:"supervised,omitempty"`
}

// ImageLayer is one layer of an image.
type ImageLayer struct {
	Digest string `json:"digest"`  // compressed blob digest
	DiffID string `json:"diff_id"` // uncompressed digest
	Size   int64  `json:"size"`    // compressed size in bytes
}

// Image is a pulled image, ready to boot.
type Image struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Ref    string `json:"ref"`    // fully qualified reference it was pulled from
	Digest string `json:"digest"` // manifest digest of the linux/amd64 image
	// Rootfs is the absolute path of the image's ext4 file.
	Rootfs    string       `json:"rootfs"`
	SizeBytes int64        `json:"size_bytes"` // apparent size of the ext4 file
	DiskBytes int64        `json:"disk_bytes"` // bytes it occupies on disk (the file is sparse)
	Config    ImageConfig  `json:"config"`
	Layers    []ImageLayer `json:"layers"`
	CreatedAt time.Time    `json:"created_at"`
	// Source says where the image came from: "registry", or the kind
	// of an imported source and what the user named ("docker-archive
	// /home/me/app.tar", "rootfs -"), or "mmdebstrap debian:bookworm".
	Source string `json:"source"`
	// Owner is the uid of whoever made it: images are everyone's to use,
	// theirs (and root's) to remove.
	Owner     int    `json:"owner"`
	OwnerName string `json:"owner_name,omitempty"`
}

// ImportOptions are the query parameters of POST /v1/images/import,
// whose body is the source stream itself.
type ImportOptions struct {
	Name string `json:"name"`
	// Ref picks one image of an archive or layout that holds several.
	Ref string `json:"ref,omitempty"`
	// Source is what the user named (a path, or "-"), for the record.
	Source string      `json:"source,omitempty"`
	Config ImageConfig `json:"config"`
}

// BuildRequest is the body of POST /v1/images/build: an image built from
// a distribution's package archive.
type BuildRequest struct {
	Name string `json:"name,omitempty"` // default: the distribution's name
	// Spec is DISTRIBUTION[:SUITE]: debian:bookworm, ubuntu:noble.
	Spec    string   `json:"spec"`
	Include []string `json:"include,omitempty"` // packages beyond the default set
	// Why, when set, is told in the progress: why it builds instead of
	// pulling.
	Why string `json:"why,omitempty"`
}

// Kernel is an imported kernel, ready to boot.
type Kernel struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Version string `json:"version"`
	// Vmlinux is the absolute path of the uncompressed ELF kernel.
	Vmlinux string `json:"vmlinux"`
	// Initrd is the absolute path of banger's initramfs, "" when the
	// kernel has its VM drivers built in.
	Initrd    string    `json:"initrd"`
	Modules   []string  `json:"modules"` // module names packed, in load order
	Source    string    `json:"source"`  // vmlinux, bzImage, deb, catalog:NAME, oci:REF
	AgentHash string    `json:"agent_hash,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Owner is the uid of whoever imported it (see Image.Owner).
	Owner     int    `json:"owner"`
	OwnerName string `json:"owner_name,omitempty"`
}

// KernelImportRequest is the body of POST /v1/kernels/import.
type KernelImportRequest struct {
	Name string `json:"name"`
	From string `json:"from"` // path on the daemon's host
}

// KernelPullRequest is the body of POST /v1/kernels/pull.
type KernelPullRequest struct {
	Name string `json:"name"`         // catalog entry
	As   string `json:"as,omitempty"` // name to store it under (default: Name)
}

// CatalogKernel is one downloadable kernel of the built-in catalog:
// either a fixed file (URL, Size, SHA256) or, with Package set, the
// newest package of a Debian suite whose name matches Package, found in
// the archive's signed index at pull time.
type CatalogKernel struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	URL         string `json:"url,omitempty"`
	Size        int64  `json:"size,omitempty"`
	SHA256      string `json:"sha256,omitempty"`
	// Archive and Security are the Debian archive and its security
	// archive (default: the host's apt mirrors, else deb.debian.org);
	// Suite is the suite (its -updates and -security suites are read
	// too), Package a regular expression for the package name.
	Archive  string `json:"archive,omitempty"`
	Security string `json:"security,omitempty"`
	Suite    string `json:"suite,omitempty"`
	Package  string `json:"package,omitempty"`
	// Version is the package version a resolved entry stands for.
	Version string `json:"version,omitempty"`
}

// VM is one virtual machine.
type VM struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	State     string   `json:"state"` // created, starting, running, paused, stopping, stopped, error
	Image     string   `json:"image"`
	Kernel    string   `json:"kernel"`
	VMM       string   `json:"vmm"` // firecracker or qemu
	VCPU      int      `json:"vcpu"`
	MemoryMiB int      `json:"memory_mib"`
	DiskBytes int64    `json:"disk_bytes"` // size of the writable disk
	Network   string   `json:"network"`    // nat, shared or none
	IP        string   `json:"ip"`         // empty with network none
	Ports     []string `json:"ports"`      // published ports, HOSTIP:HOST:GUEST/tcp
	// SSHHostKey is the VM's SSH host key, authorized_keys format: what
	// known_hosts should hold for NAME.vm.
	SSHHostKey string    `json:"ssh_host_key,omitempty"`
	PID        int       `json:"pid"` // VMM process, 0 when not running
	Dir        string    `json:"dir"`
	Error      string    `json:"error,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	// Origin says how the VM first came to run: "" for a cold boot,
	// "snapshot NAME" for a fork, "template NAME" for a warm start.
	Origin string `json:"origin,omitempty"`
	// Mounts are the host directories the VM sees live (-v).
	Mounts []Mount `json:"mounts,omitempty"`
	// Owner is the uid of the user the VM belongs to: whoever created
	// it (a fork or a warm start belongs to whoever asked for it). Only
	// they and root see it or act on it.
	Owner     int    `json:"owner"`
	OwnerName string `json:"owner_name,omitempty"`
	// Policy is what the guest may reach beyond the default (see
	// Policy); nil when the VM has the default rules.
	Policy *Policy `json:"policy,omitempty"`
	// Labels are the creator's key=value notes (a Kubernetes pod's uid,
	// an E2B sandbox's metadata).
	Labels map[string]string `json:"labels,omitempty"`
	// Run is what the VM was asked to run over its image's config; nil
	// when it runs the image's.
	Run *Run `json:"run,omitempty"`
	// Memory is where a running VM's host memory goes, read when it is
	// shown (`vm show`, GET /v1/vms/{name}); nil in lists and when the
	// VM does not run.
	Memory *VMMemory `json:"memory,omitempty"`
}

// VMMemory is the host memory of a running VM, from its VMM's
// /proc/PID/smaps_rollup and the guest RAM's mapping in /proc/PID/smaps,
// and from the VM's cgroup.
type VMMemory struct {
	// Snapshot is the snapshot (or template) whose memory file the
	// guest's RAM maps copy-on-write: the VM was restored from it and
	// has not been stopped since. "" for a booted VM; the snapshot's
	// id with " (removed)" when it was removed meanwhile.
	Snapshot string `json:"snapshot,omitempty"`
	// SharedBytes is guest RAM read from that file and not written
	// since: page cache every VM restored from the snapshot shares.
	SharedBytes int64 `json:"shared_bytes"`
	// OwnBytes is memory this VM alone holds: GuestOwnBytes and its
	// VMM's own (QEMU's heap, its code cache under emulation).
	OwnBytes int64 `json:"own_bytes"`
	// GuestOwnBytes is the part of OwnBytes that is guest RAM: what the
	// guest wrote since its restore, or all it touched for a booted VM.
	GuestOwnBytes int64 `json:"guest_own_bytes"`
	// CgroupBytes is memory charged to the VM's cgroup (its VMM and
	// helpers; page cache of a snapshot's file is charged to whoever
	// read it first), CgroupLimitBytes the group's limit and OOMKills
	// the processes the kernel killed for it. 0 when VMs run
	// uncontained.
	CgroupBytes      int64  `json:"cgroup_bytes,omitempty"`
	CgroupLimitBytes int64  `json:"cgroup_limit_bytes,omitempty"`
	OOMKills         uint64 `json:"oom_kills"`
}

// Policy is a VM's egress rules beyond the default (the internet yes;
// the host, link-local and private ranges no). AllowOut lists domain
// names (exact or *.example.com), IPs and CIDRs; once it has any entry,
// everything not listed is denied. DenyOut lists CIDRs denied on top.
type Policy struct {
	AllowOut []string `json:"allow_out,omitempty"`
	DenyOut  []string `json:"deny_out,omitempty"`
	// Direct lists IPv4 networks the VM reaches with its own address
	// (not masqueraded), private ones included, whatever the rest of
	// its rules: a Kubernetes cluster's pod network, for a pod's VM.
	Direct []string `json:"direct,omitempty"`
}

// PolicyRequest is the body of POST /v1/vms/{name}/policy: the new
// rules replace the old ones (Reset: back to the default).
type PolicyRequest struct {
	AllowOut []string `json:"allow_out,omitempty"`
	DenyOut  []string `json:"deny_out,omitempty"`
	Direct   []string `json:"direct,omitempty"`
	Reset    bool     `json:"reset,omitempty"`
}

// Mount kinds.
const (
	MountVirtioFS = "virtiofs" // QEMU: a virtiofsd per mount, shared live
	MountSync     = "sync"     // Firecracker, or asked for: copied and kept in sync by the agent
)

// Mount is a host directory shared with a VM (-v HOST:GUEST[:ro][,sync]).
type Mount struct {
	Host     string `json:"host"`  // absolute, symlinks resolved
	Guest    string `json:"guest"` // absolute path in the guest
	ReadOnly bool   `json:"read_only,omitempty"`
	Kind     string `json:"kind"`          // virtiofs or sync
	Tag      string `json:"tag,omitempty"` // the virtio-fs tag the guest mounts
	// UID and GID are the caller's: the host side accesses files as them.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// PID is the running virtiofsd (or, synced, bangerd filesync), 0
	// when none; Error why it stopped.
	PID   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

// Snapshot kinds.
const (
	SnapshotKindSnapshot = "snapshot" // made by `vm snapshot` or `vm fork`
	SnapshotKindTemplate = "template" // a warm start's template
)

// Snapshot is a VM's memory, device state and writable disk at one
// instant: what `vm fork` and warm starts restore from.
type Snapshot struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Kind  string `json:"kind"`  // snapshot or template
	State string `json:"state"` // creating or ready
	// SourceVM is the VM it was taken from.
	SourceVM string `json:"source_vm"`
	// What a VM restored from it must match.
	Image       string `json:"image"`
	ImageID     string `json:"image_id"` // the guest's page cache holds this very ext4 file's blocks
	ImageDigest string `json:"image_digest"`
	Kernel      string `json:"kernel"`
	KernelID    string `json:"kernel_id"`
	AgentHash   string `json:"agent_hash"`
	VMM         string `json:"vmm"`
	VMMVersion  string `json:"vmm_version"`
	VCPU        int    `json:"vcpu"`
	MemoryMiB   int    `json:"memory_mib"`
	DiskBytes   int64  `json:"disk_bytes"` // size of the writable disk
	Network     string `json:"network"`
	// TemplateKey is what a warm start matches on (templates only).
	TemplateKey string `json:"template_key,omitempty"`
	Dir         string `json:"dir"`
	// Files: the device state, guest memory and writable disk, each
	// with its apparent size and the bytes it occupies on disk.
	Files []SnapshotFile `json:"files"`
	// SizeBytes is what the snapshot occupies on disk.
	SizeBytes int64 `json:"size_bytes"`
	// PausedMs is how long the source's guest was frozen for it.
	PausedMs int64 `json:"paused_ms"`
	// Policy is the source VM's egress rules, which its forks get.
	Policy    *Policy   `json:"policy,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Owner is the uid of the user it belongs to: the one who took it
	// (for a template, the owner of the VM it was taken from). It holds
	// a guest's memory: only they (and root) see, fork or remove it.
	Owner     int    `json:"owner"`
	OwnerName string `json:"owner_name,omitempty"`
	// InUse counts the running VMs whose memory maps this snapshot's
	// memory file (restored from it, copy-on-write; it goes when the
	// last of them stops, even after the snapshot is removed); UsedBy
	// names those the caller may see. Filled when read, never stored.
	InUse  int      `json:"in_use"`
	UsedBy []string `json:"used_by,omitempty"`
}

// SnapshotFile is one file of a snapshot.
type SnapshotFile struct {
	Role      string `json:"role"` // state, memory or disk
	Name      string `json:"name"` // file name in the snapshot's directory
	SizeBytes int64  `json:"size_bytes"`
	DiskBytes int64  `json:"disk_bytes"`
	SHA256    string `json:"sha256,omitempty"` // the device state's, checked at every restore
}

// SnapshotRequest is the body of POST /v1/vms/{name}/snapshot.
type SnapshotRequest struct {
	Name string `json:"name,omitempty"` // default: VM-YYYYMMDD-HHMMSS
}

// ForkRequest is the body of POST /v1/vms/fork: new VMs restored from
// a snapshot, or from a running VM (snapshotted first).
type ForkRequest struct {
	// Source is a snapshot's name, or a VM's.
	Source string `json:"source"`
	// Name is the new VM's name; with Count > 1, NAME-1 … NAME-N.
	// Default: generated.
	Name  string `json:"name,omitempty"`
	Count int    `json:"count,omitempty"`
	// Labels are the new VMs' (a fork has none of its source's).
	Labels map[string]string `json:"labels,omitempty"`
}

// WarmRequest is the body of POST /v1/images/warm: the VM shape
// the template is for (defaults as for vm create).
type WarmRequest struct {
	Image     string `json:"image"`
	Kernel    string `json:"kernel,omitempty"`
	VMM       string `json:"vmm,omitempty"`
	VCPU      int    `json:"vcpu,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskBytes int64  `json:"disk_bytes,omitempty"`
	Network   string `json:"network,omitempty"`
}

// Network is the VM network of bangerd: GET and POST /v1/network.
type Network struct {
	Bridge  string `json:"bridge"`
	Subnet  string `json:"subnet"`  // the VMs' addresses, a CIDR
	Gateway string `json:"gateway"` // the bridge's address: the VMs' route and DNS server
	NetNS   string `json:"netns,omitempty"`
	// Source says where the subnet came from: "config" (the file, a
	// flag or a variable, as `banger config show` says) or "set by
	// USER at TIME" through POST /v1/network.
	Source string `json:"source"`
	// Addresses is how many VMs hold an address of the subnet (in any
	// state): the subnet can change only while none does.
	Addresses int `json:"addresses"`
}

// NetworkRequest is the body of POST /v1/network: the VM subnet from now
// on (kept across restarts of bangerd). Only root, the daemon's user and
// the users of the config's net.subnet_users may set it, and only while
// no VM holds an address. banger-kubelet sets it to its node's podCIDR.
type NetworkRequest struct {
	Subnet string `json:"subnet"`
}

// Check is one line of `banger doctor`.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // PASS, WARN or FAIL
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Check statuses.
const (
	Pass = "PASS"
	Warn = "WARN"
	Fail = "FAIL"
)

// Config is the daemon's effective configuration: GET /v1/config.
type Config struct {
	Path     string    `json:"path"` // the file read, "" when there is none
	Settings []Setting `json:"settings"`
}

// Setting is one effective setting and where it came from: "default",
// FILE:LINE, "flag --NAME" or "$VARIABLE".
type Setting struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Source string `json:"source"`
}

// SSHKeyRequest is the body of POST /v1/ssh/keys: a public key, in
// authorized_keys format, that may log in to every VM as any user.
type SSHKeyRequest struct {
	Key string `json:"key"`
}

// VMCreateRequest is the body of POST /v1/vms.
type VMCreateRequest struct {
	Name      string `json:"name,omitempty"`   // default: generated
	Image     string `json:"image"`            // image name
	Kernel    string `json:"kernel,omitempty"` // default: the default kernel
	VMM       string `json:"vmm,omitempty"`    // firecracker, qemu or auto (default)
	VCPU      int    `json:"vcpu,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskBytes int64  `json:"disk_bytes,omitempty"`
	NoStart   bool   `json:"no_start,omitempty"`
	// Cold boots the VM even when a warm template for it exists.
	Cold bool `json:"cold,omitempty"`
	// Network is nat (default), shared or none; Ports are -p values,
	// [IP:]HOST:GUEST[/tcp].
	Network string   `json:"network,omitempty"`
	Ports   []string `json:"ports,omitempty"`
	// Mounts are -v values, HOST:GUEST[:ro|:rw][,sync]; HOST is resolved by
	// the CLI (relative to its working directory).
	Mounts []string `json:"mounts,omitempty"`
	// AllowOut, DenyOut and Direct are the VM's egress rules (see
	// Policy).
	AllowOut []string `json:"allow_out,omitempty"`
	DenyOut  []string `json:"deny_out,omitempty"`
	Direct   []string `json:"direct,omitempty"`
	// Labels are key=value notes kept with the VM.
	Labels map[string]string `json:"labels,omitempty"`
	// Run overrides the image's command, environment, directory or
	// user (see Run).
	Run *Run `json:"run,omitempty"`
}

// RegistryAuth carries credentials the CLI resolved from the user's own
// Docker configuration, so a root daemon pulls with the user's rights.
type RegistryAuth struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identity_token,omitempty"`
	RegistryToken string `json:"registry_token,omitempty"`
}

// PullRequest is the body of POST /v1/images/pull.
type PullRequest struct {
	Ref  string        `json:"ref"`
	Name string        `json:"name,omitempty"` // default: the reference's short form
	Auth *RegistryAuth `json:"auth,omitempty"`
}

// Event types of a streamed operation.
const (
	EventProgress = "progress"
	EventResult   = "result"
	EventError    = "error"
)

// Event is one line of a newline-delimited JSON stream. The last event of
// a stream is either a result or an error.
type Event struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Stage   string    `json:"stage,omitempty"`
	Message string    `json:"message,omitempty"`
	Layer   int       `json:"layer,omitempty"`
	Layers  int       `json:"layers,omitempty"`
	Digest  string    `json:"digest,omitempty"`
	Current int64     `json:"current,omitempty"`
	Total   int64     `json:"total,omitempty"`
	Cached  bool      `json:"cached,omitempty"`
	Image   *Image    `json:"image,omitempty"`
	Kernel  *Kernel   `json:"kernel,omitempty"`
	VM      *VM       `json:"vm,omitempty"`
	Error   *Error    `json:"error,omitempty"`
}

// DaemonStatus is the body of GET /v1/daemon.
type DaemonStatus struct {
	Version   string    `json:"version"`
	Commit    string    `json:"commit"`
	Date      string    `json:"date"` // build date
	PID       int       `json:"pid"`
	Home      string    `json:"home,omitempty"`
	Socket    string    `json:"socket"`
	StateDir  string    `json:"state_dir"`
	CacheDir  string    `json:"cache_dir"`
	StartedAt time.Time `json:"started_at"`
	Images    int       `json:"images"`
	Pulls     int       `json:"pulls"` // pulls under way
}

// PruneResult is the body of POST /v1/cache/prune.
type PruneResult struct {
	RemovedBlobs int   `json:"removed_blobs"`
	FreedBytes   int64 `json:"freed_bytes"`
}

// AgentUpgrade is the Upgrade token of agent connections
// (GET /v1/vms/{name}/agent): the connection then carries the agent
// protocol (docs/agent-protocol.md).
const AgentUpgrade = "banger-agent/1"

// Errors that services return for the API's generic codes; the daemon
// maps them (and each package's own sentinels) to a status and a code.
var (
	ErrInvalid   = errors.New("invalid request") // CodeInvalid
	ErrConflict  = errors.New("conflict")        // CodeConflict
	ErrForbidden = errors.New("forbidden")       // CodeForbidden
	ErrLimit     = errors.New("limit reached")   // CodeLimit: a per-user limit of [limits]
)

// Error is the body of every non-2xx response and of error events.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Stable error codes.
const (
	CodeNotFound     = "not_found"
	CodeExists       = "exists"
	CodeInvalid      = "invalid"
	CodeConflict     = "conflict"
	CodeForbidden    = "forbidden"
	CodeAuth         = "registry_auth"
	CodeUnreachable  = "registry_unreachable"
	CodeBadImage     = "bad_image"
	CodeNoSpace      = "no_space"
	CodeBadKernel    = "bad_kernel"
	CodeDownload     = "download_failed"
	CodeVMStart      = "vm_start_failed"
	CodeNetwork      = "network_unavailable"
	CodeAgent        = "agent_unavailable"
	CodeCanceled     = "canceled"
	CodeAmbiguous    = "ambiguous"
	CodeNotSupported = "not_supported"
	CodeBuild        = "build_failed"
	CodeBadSnapshot  = "bad_snapshot"
	CodeInternal     = "internal"
	CodeLimit        = "limit_exceeded"
)

// E2BKey is an API key of bangerd's E2B endpoint. The key itself is
// shown once, when it is made; bangerd keeps only its hash.
type E2BKey struct {
	ID     string `json:"id"`
	Name   string `json:"name,omitempty"`
	Prefix string `json:"prefix"` // the key's first characters, to recognise it
	// Owner is the uid of the user who made it: every sandbox made with
	// the key is theirs, and only they (and root) see or remove the key.
	Owner     int        `json:"owner"`
	OwnerName string     `json:"owner_name,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	LastUsed  *time.Time `json:"last_used,omitempty"`
	// Key is the key itself, only in the answer to its creation.
	Key string `json:"key,omitempty"`
	// APIURL is where the E2B endpoint listens, "" while it is off
	// (only in the answer to a creation).
	APIURL string `json:"api_url,omitempty"`
}

// E2BKeyRequest is the body of POST /v1/e2b/keys.
type E2BKeyRequest struct {
	Name string `json:"name,omitempty"`
}
