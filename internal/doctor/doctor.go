// Package doctor checks what bangerd depends on, as the daemon sees it
// (its user, its PATH, its namespace): KVM, the VMMs, e2fsprogs,
// virtiofsd, the sync helper, guest RAM room, image builds, archive keys,
// the network and disk, and whether the default image and kernel are
// there. Each result carries the fix for a WARN or FAIL.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/cgroup"
	"banger/internal/config"
	"banger/internal/debarchive"
	"banger/internal/imagebuild"
	"banger/internal/paths"
	"banger/internal/store"
	"banger/internal/system"
	"banger/internal/virtiofs"
	"banger/internal/vmm/firecracker"
	"banger/internal/vmm/qemu"
	"banger/internal/vmnet"
)

// Inputs are what the checks look at.
type Inputs struct {
	Layout paths.Layout
	Runner system.CommandRunner
	Store  *store.Store
	Config config.Config
	Net    *vmnet.Runtime
	// FirecrackerBin is the Firecracker binary the daemon would use.
	FirecrackerBin func() (string, error)
	// Jailer is the configured jailer, nil when none.
	Jailer *firecracker.Jailer
	// Helper is the binary that runs bangerd's helpers (filesync).
	Helper func() (string, error)
	// Cgroups contains the VMs, nil when they run uncontained for the
	// reason CgroupsOff.
	Cgroups    *cgroup.Manager
	CgroupsOff error
}

// Run runs every check.
func Run(ctx context.Context, in Inputs) []api.Check {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var out []api.Check
	add := func(name, status, detail, fix string) {
		out = append(out, api.Check{Name: name, Status: status, Detail: detail, Fix: fix})
	}
	version := func(bin string, args ...string) string {
		b, err := in.Runner.Run(ctx, bin, args...)
		if err != nil {
			return "version unknown"
		}
		return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	}

	// KVM: usable for ordinary guests, not merely present.
	caps := qemu.Probe()
	switch {
	case caps.KVM:
		add("kvm", api.Pass, "/dev/kvm runs guests", "")
	case fileExists("/sys/module/kvm_pvm"):
		add("kvm", api.Warn, "/dev/kvm is kvm_pvm, which runs only PVM guest kernels: VMs run under QEMU's emulation (slow)", "use a host with hardware virtualization (VT-x/AMD-V, nested virtualization on clouds) for Firecracker and full speed")
	case fileExists("/dev/kvm"):
		add("kvm", api.Warn, "/dev/kvm cannot be opened by bangerd", "run bangerd as root, or add its user to group kvm")
	default:
		add("kvm", api.Warn, "no /dev/kvm: VMs run under QEMU's emulation (slow)", "enable virtualization in the firmware, or nested virtualization on a cloud VM; `modprobe kvm_intel` or `kvm_amd`")
	}

	qbin, qerr := system.LookPath("qemu-system-x86_64")
	if qerr == nil {
		add("qemu", api.Pass, qbin+": "+version(qbin, "--version"), "")
	}
	fbin, ferr := in.FirecrackerBin()
	switch {
	case ferr == nil:
		add("firecracker", api.Pass, fbin+": "+version(fbin, "--version"), "")
	case qerr == nil:
		add("firecracker", api.Warn, "no firecracker binary: VMs use QEMU", "install Firecracker (github.com/firecracker-microvm/firecracker releases) on PATH or set firecracker.binary")
	}
	if qerr != nil {
		status := api.Fail
		if ferr == nil && caps.KVM {
			status = api.Warn
		}
		add("qemu", status, "no qemu-system-x86_64 on PATH", "apt-get install qemu-system-x86")
	}
	if j := in.Jailer; j != nil {
		if _, err := os.Stat(j.Bin); err != nil {
			add("jailer", api.Fail, "configured jailer "+j.Bin+" is missing", "install Firecracker's jailer there, or remove firecracker.jailer from the config")
		} else {
			add("jailer", api.Pass, j.Bin+": "+version(j.Bin, "--version")+fmt.Sprintf(", uid %d gid %d", j.UID, j.GID), "")
		}
	} else {
		add("jailer", api.Pass, "not configured: Firecracker runs unjailed", "")
	}

	var missing []string
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "tune2fs", "resize2fs", "debugfs"} {
		if _, err := system.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		add("e2fsprogs", api.Pass, "mkfs.ext4, e2fsck, tune2fs, resize2fs, debugfs", "")
	} else {
		add("e2fsprogs", api.Fail, "missing "+strings.Join(missing, ", "), "apt-get install e2fsprogs")
	}

	// -v on QEMU: a virtiofsd per mount, in a user namespace for callers
	// other than root.
	if vbin, err := virtiofs.Find(); err != nil {
		add("virtiofsd", api.Warn, "no virtiofsd: `-v` (shared host directories) does not work", "apt-get install qemu-system-x86 (it ships /usr/lib/qemu/virtiofsd)")
	} else if b, _ := os.ReadFile("/proc/sys/user/max_user_namespaces"); strings.TrimSpace(string(b)) == "0" {
		add("virtiofsd", api.Warn, vbin+": user namespaces are off, so only root's VMs can share directories", "sysctl user.max_user_namespaces=15000")
	} else {
		add("virtiofsd", api.Pass, vbin+": "+version(vbin, "--version"), "")
	}
	// -v on Firecracker (and :sync): bangerd filesync, one inotify watch
	// per directory of the shared tree.
	watches, _ := os.ReadFile("/proc/sys/fs/inotify/max_user_watches")
	nw, _ := strconv.Atoi(strings.TrimSpace(string(watches)))
	switch _, err := in.Helper(); {
	case err != nil:
		add("synced mounts", api.Warn, err.Error(), "run the daemon as the bangerd binary")
	case nw < 65536:
		add("synced mounts", api.Warn, fmt.Sprintf("fs.inotify.max_user_watches is %d: a synced tree of more directories fails", nw), "sysctl fs.inotify.max_user_watches=1048576")
	default:
		add("synced mounts", api.Pass, fmt.Sprintf("bangerd filesync; up to %d watched directories", nw), "")
	}
	// Guest RAM of QEMU VMs lives in a shared file under /dev/shm.
	var shm unix.Statfs_t
	if err := unix.Statfs(in.Layout.RAMDir(), &shm); err == nil || unix.Statfs("/dev/shm", &shm) == nil {
		free := int64(shm.Bavail) * shm.Bsize
		detail := fmt.Sprintf("%.1f GiB free for guest RAM in %s", float64(free)/(1<<30), in.Layout.RAMDir())
		if free < 2<<30 {
			add("guest RAM", api.Warn, detail+": QEMU VMs that use more fail to start", "grow /dev/shm (mount -o remount,size=16G /dev/shm)")
		} else {
			add("guest RAM", api.Pass, detail, "")
		}
	}

	// Building images from the Debian archive: the default image's way
	// in when no registry answers, and how catalog kernels are verified.
	if mm, err := system.LookPath("mmdebstrap"); err == nil {
		add("image build", api.Pass, mm+": "+version(mm, "--version"), "")
	} else {
		add("image build", api.Warn, "no mmdebstrap: `banger image build` and the default image without Docker Hub do not work", "apt-get install mmdebstrap")
	}
	_, gerr := system.LookPath("gpgv")
	_, kerr := os.Stat(debarchive.DefaultKeyring)
	switch {
	case gerr == nil && kerr == nil:
		add("archive keys", api.Pass, "gpgv and "+debarchive.DefaultKeyring, "")
	case gerr != nil:
		add("archive keys", api.Warn, "no gpgv: catalog kernels cannot be verified, so `banger kernel pull` fails", "apt-get install gpgv")
	default:
		add("archive keys", api.Warn, "no "+debarchive.DefaultKeyring+": catalog kernels cannot be verified, so `banger kernel pull` fails", "apt-get install debian-archive-keyring")
	}

	containment(in, add)

	network(in.Net, add)

	var st unix.Statfs_t
	if err := unix.Statfs(in.Layout.StateDir, &st); err == nil {
		free := int64(st.Bavail) * st.Bsize
		switch {
		case free < 1<<30:
			add("disk", api.Fail, fmt.Sprintf("%.1f GiB free under %s", float64(free)/(1<<30), in.Layout.StateDir), "free space: `banger image cache prune`, `banger vm prune`, remove images")
		case free < 5<<30:
			add("disk", api.Warn, fmt.Sprintf("%.1f GiB free under %s", float64(free)/(1<<30), in.Layout.StateDir), "images and VM disks need room: free some")
		default:
			add("disk", api.Pass, fmt.Sprintf("%.1f GiB free under %s", float64(free)/(1<<30), in.Layout.StateDir), "")
		}
	}

	cfg := in.Config
	if _, err := in.Store.Image(ctx, cfg.DefaultImage); err == nil {
		add("default image", api.Pass, cfg.DefaultImage, "")
	} else {
		fix := "it is pulled by the first `banger vm run` (or `banger image pull " + cfg.DefaultImage + "`)"
		if _, ok := imagebuild.Distros[cfg.DefaultImage]; ok {
			fix = "the first `banger vm run` pulls it, or builds it from the package archive when the registry is unreachable (by hand: `banger image build " + cfg.DefaultImage + " --name " + cfg.DefaultImage + "`)"
		}
		add("default image", api.Warn, cfg.DefaultImage+" is not pulled yet", fix)
	}
	if _, err := in.Store.Kernel(ctx, cfg.DefaultKernel); err == nil {
		add("default kernel", api.Pass, cfg.DefaultKernel, "")
	} else {
		add("default kernel", api.Warn, cfg.DefaultKernel+" is not imported yet", "it is fetched by the first `banger vm run` (or `banger kernel pull "+cfg.DefaultKernel+"`)")
	}
	return out
}

// containment says whether VMs run in cgroups of their own, as the
// daemon decided when it started.
func containment(in Inputs, add func(name, status, detail, fix string)) {
	switch {
	case in.Cgroups != nil:
		add("cgroups", api.Pass, fmt.Sprintf("cgroup %s: each VM's VMM and helpers run in %s/VM-ID, limited to its memory plus overhead, its vCPUs plus one and a pids budget", in.Cgroups.Mode(), in.Cgroups.Parent()), "")
	case errors.Is(in.CgroupsOff, cgroup.ErrUnavailable):
		add("cgroups", api.Warn, fmt.Sprintf("VMs run without memory, CPU or pids limits, so one can starve the others: %v", in.CgroupsOff), "run bangerd as root on a host with cgroup v2 (memory, cpu and pids controllers) or the v1 memory, cpu and pids controllers mounted, then restart it (`banger daemon stop`)")
	default:
		add("cgroups", api.Warn, fmt.Sprintf("VMs run without memory, CPU or pids limits: %v", in.CgroupsOff), "start bangerd without --cgroups=false (and $BANGER_CGROUPS unset)")
	}
}

// network checks nftables, the bridge and the DNS server.
func network(rt *vmnet.Runtime, add func(name, status, detail, fix string)) {
	if os.Geteuid() != 0 {
		add("network", api.Warn, "bangerd is not root: VMs get no network", "run the system bangerd (`banger system install`), or create VMs with --network none")
		return
	}
	st, err := rt.Check()
	if err != nil {
		add("network", api.Fail, err.Error(), "fix the net settings in the config (`banger config show`)")
		return
	}
	if st.TablesErr != nil {
		add("nftables", api.Fail, st.TablesErr.Error(), "`modprobe nf_tables` (and `apt-get install nftables` for the nft tool)")
	} else {
		add("nftables", api.Pass, "the kernel's nf_tables answers", "")
	}
	if !st.Up {
		if st.SubnetErr != nil {
			add("bridge", api.Fail, st.SubnetErr.Error(), "set net.subnet in the config to a free private /24")
		} else {
			add("bridge", api.Pass, fmt.Sprintf("%s (%s) is made with the first networked VM; the subnet is free", st.Bridge, st.Subnet), "")
		}
		add("dns", api.Pass, "starts with the first networked VM", "")
		return
	}
	add("bridge", api.Pass, fmt.Sprintf("%s at %s", st.Bridge, st.Subnet), "")
	if st.DNSErr != nil {
		add("dns", api.Fail, "the VM DNS server does not answer on "+st.DNS, "restart bangerd (`banger daemon stop`)")
	} else {
		add("dns", api.Pass, "answers NAME.vm on "+st.DNS, "")
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
