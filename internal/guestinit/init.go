package guestinit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Where the init stage mounts things; after the root switch they appear
// at the same paths inside the VM (they live on the /run tmpfs).
const (
	lowerDir = "/run/banger/lower" // the image disk, read-only
	dataDir  = "/run/banger/data"  // the VM's writable disk
	newRoot  = "/newroot"
	marker   = "/etc/banger/initramfs"
	modList  = "/etc/banger/modules"
)

// console is where the init stage speaks: the kernel console.
var console io.Writer = os.Stdout

var start = time.Now()

// logf prints one timestamped line, with the kernel's uptime, so boot
// stages can be measured from the console log.
func logf(format string, args ...any) {
	fmt.Fprintf(console, "banger-init: [%s] %s\n", uptime(), fmt.Sprintf(format, args...))
}

func uptime() string {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) == nil {
		return fmt.Sprintf("%d.%03d", ts.Sec, ts.Nsec/1e6)
	}
	return time.Since(start).String()
}

// fatal reports err on the console and powers the VM off. It never
// returns: an init stage that hangs is worse than one that stops.
func fatal(err error) {
	fmt.Fprintf(console, "banger-init: FATAL: %v\n", err)
	powerOff()
}

func powerOff() {
	unix.Sync()
	// Leave the writable disk clean, so the next boot does not replay
	// its journal: the overlay root first, then the disk under it.
	unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	unix.Mount("", dataDir, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Without ACPI power-off a reset ends the VM too (QEMU -no-reboot).
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	for {
		time.Sleep(time.Hour)
	}
}

// Main is the init stage. It returns only when it should not have run
// (not PID 1); otherwise it execs the image's init or powers off.
func Main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "banger-vsock-agent: the init stage runs only as PID 1")
		return
	}
	if err := run(); err != nil {
		fatal(err)
	}
	powerOff()
}

func run() error {
	if err := mountEarly(""); err != nil {
		return err
	}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		console = f
	}
	// Ctrl-Alt-Del (Firecracker's SendCtrlAltDel, a keyboard) becomes
	// SIGINT to PID 1 instead of an immediate reset: a graceful stop.
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("reading /proc/cmdline: %w", err)
	}
	c := ParseCmdline(string(cmdline))
	_, err = os.Stat(marker)
	fromInitramfs := err == nil
	logf("init stage started (initramfs=%v)", fromInitramfs)

	if fromInitramfs {
		n, skipped, err := loadModules(c)
		if err != nil {
			return err
		}
		logf("loaded %d modules (%d skipped: no such device)", n, skipped)
	}
	// The network and the disks wait on different drivers: set them up
	// side by side.
	type netResult struct {
		summary string
		err     error
	}
	netDone := make(chan netResult, 1)
	go func() {
		s, err := configureNetwork(c)
		netDone <- netResult{s, err}
	}()
	rootErr := buildRoot(c, fromInitramfs)
	nr := <-netDone
	if rootErr != nil {
		return rootErr
	}
	if nr.err != nil {
		return nr.err
	}
	logf("network: %s", nr.summary)
	if err := writeIdentity(c, newRoot, ""); err != nil {
		return err
	}
	if err := switchRoot(); err != nil {
		return err
	}
	logf("root switched: overlay of %s (read-only) and %s", c.Root, orDefault(c.Data, "tmpfs"))
	if err := mountShared(c.Mounts); err != nil {
		return err
	}

	if path := imageInit(c); path != "" {
		if masked := maskUdevlessGetty(); masked != "" {
			logf("no udev in the image: masked %s for this boot", masked)
		}
		logf("exec %s", path)
		err := syscall.Exec(path, []string{path}, os.Environ())
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return stayPID1()
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// mountEarly mounts /dev, /proc, /sys and /run under root (already
// mounted ones are fine).
func mountEarly(root string) error {
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
	} {
		dst := root + m.dst
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", dst, err)
		}
		err := unix.Mount(m.src, dst, m.fstype, unix.MS_NOSUID, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s: %w", dst, err)
		}
	}
	os.MkdirAll(root+"/dev/pts", 0o755)
	unix.Mount("devpts", root+"/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666")
	return nil
}

// Drivers for virtio devices a VM may lack, with the modules only they
// need, by virtio device ID (virtio spec 5: 1 net, 3 console, 19 vsock, 26 file system).
var deviceModules = map[string][]string{
	"0x0001": {"virtio_net", "net_failover", "failover"},
	"0x0003": {"virtio_console"},
	"0x0013": {"vmw_vsock_virtio_transport", "vmw_vsock_virtio_transport_common", "vsock"},
	"0x001a": {"virtiofs", "fuse"},
}

// presentVirtioDevices reads the virtio device IDs the transport found.
func presentVirtioDevices() map[string]bool {
	present := map[string]bool{}
	devs, _ := filepath.Glob("/sys/bus/virtio/devices/*/device")
	for _, d := range devs {
		if b, err := os.ReadFile(d); err == nil {
			present[strings.TrimSpace(string(b))] = true
		}
	}
	return present
}

// loadModules loads the initramfs's modules in the listed order, passing
// the virtio_mmio.device= parameters of the command line to virtio_mmio
// (the kernel does not, for modules; modprobe would). Once the virtio
// transport has probed, drivers for device kinds the VM does not have
// are skipped, as udev would: Firecracker has no console device, QEMU
// here has no vsock. It returns how many modules it loaded and skipped.
func loadModules(c Config) (loaded, skipped int, err error) {
	ver, err := os.ReadFile(marker)
	if err != nil {
		return 0, 0, err
	}
	list, err := os.ReadFile(modList)
	if err != nil {
		return 0, 0, fmt.Errorf("reading module list: %w", err)
	}
	base := filepath.Join("/lib/modules", strings.TrimSpace(string(ver)))
	skip := map[string]bool{}
	transportUp := false
	for _, rel := range strings.Fields(string(list)) {
		name := strings.TrimSuffix(filepath.Base(rel), ".ko")
		if transportUp && skip[name] {
			skipped++
			continue
		}
		params := ""
		if name == "virtio_mmio" && len(c.MMIODevices) > 0 {
			params = "device=" + strings.Join(c.MMIODevices, " device=")
		}
		f, err := os.Open(filepath.Join(base, rel))
		if err != nil {
			return loaded, skipped, fmt.Errorf("module %s: %w: the initramfs is damaged, re-import the kernel", name, err)
		}
		err = unix.FinitModule(int(f.Fd()), params, 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return loaded, skipped, fmt.Errorf("loading module %s: %w", name, err)
		}
		loaded++
		if name == "virtio_mmio" {
			transportUp = true
			present := presentVirtioDevices()
			for id, mods := range deviceModules {
				if !present[id] {
					for _, m := range mods {
						skip[m] = true
					}
				}
			}
		}
	}
	return loaded, skipped, nil
}

// waitPath waits for a device node to appear (drivers probe
// asynchronously).
func waitPath(p string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s: is the disk attached and its driver loaded?", p, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitInterface(name string) (*net.Interface, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			return ifc, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("interface %s did not appear within 10s: is a network device attached?", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// buildRoot mounts the image disk read-only and the VM's writable disk,
// and an overlay of the two at newRoot. The writable disk was formatted
// on the host; the first boot creates its upper and work directories.
func buildRoot(c Config, fromInitramfs bool) error {
	for _, d := range []string{lowerDir, dataDir, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	if fromInitramfs {
		if err := waitPath(c.Root, 10*time.Second); err != nil {
			return err
		}
		if err := unix.Mount(c.Root, lowerDir, "ext4", unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("mounting image disk %s read-only: %w", c.Root, err)
		}
	} else {
		// The kernel mounted the image disk as / (read-only); bind it.
		if err := unix.Mount("/", lowerDir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("binding the root disk: %w", err)
		}
	}
	if c.Data != "" {
		if err := waitPath(c.Data, 10*time.Second); err != nil {
			return err
		}
		if err := unix.Mount(c.Data, dataDir, "ext4", 0, ""); err != nil {
			return fmt.Errorf("mounting writable disk %s: %w", c.Data, err)
		}
	} else if err := unix.Mount("tmpfs", dataDir, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mounting a tmpfs for changes: %w", err)
	}
	upper, work := dataDir+"/upper", dataDir+"/work"
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lowerDir, upper, work)
	if err := unix.Mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the overlay root: %w", err)
	}
	return nil
}

// writeIdentity sets the host name and writes /etc/hostname, /etc/hosts
// and /etc/resolv.conf in root from the command line. Unchanged files are
// not rewritten. Lines of /etc/hosts naming the host, or the name it had
// before (old, after a restore), are replaced.
func writeIdentity(c Config, root, old string) error {
	if err := os.MkdirAll(root+"/etc", 0o755); err != nil {
		return err
	}
	if c.Hostname != "" {
		if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
			return fmt.Errorf("setting host name: %w", err)
		}
		if err := writeIfChanged(root+"/etc/hostname", c.Hostname+"\n"); err != nil {
			return err
		}
		addr := "127.0.1.1"
		if i := strings.IndexByte(c.IP, '/'); i > 0 {
			addr = c.IP[:i]
		}
		hosts, _ := os.ReadFile(root + "/etc/hosts")
		var lines []string
		for _, l := range strings.Split(strings.TrimRight(string(hosts), "\n"), "\n") {
			if f := strings.Fields(l); l != "" && !(len(f) >= 2 && (contains(f[1:], c.Hostname) || (old != "" && contains(f[1:], old)))) {
				lines = append(lines, l)
			}
		}
		if !containsPrefix(lines, "127.0.0.1") {
			lines = append([]string{"127.0.0.1\tlocalhost"}, lines...)
		}
		names := c.Hostname
		if c.Domain != "" {
			names = c.Hostname + "." + c.Domain + " " + c.Hostname
		}
		lines = append(lines, addr+"\t"+names)
		if err := writeIfChanged(root+"/etc/hosts", strings.Join(lines, "\n")+"\n"); err != nil {
			return err
		}
	}
	if c.DNS != "" {
		conf := "nameserver " + c.DNS + "\n"
		if c.Domain != "" {
			conf += "search " + c.Domain + "\n"
		}
		if err := writeIfChanged(root+"/etc/resolv.conf", conf); err != nil {
			return err
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func containsPrefix(lines []string, p string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, p) {
			return true
		}
	}
	return false
}

// writeIfChanged replaces path (a symlink included: resolv.conf often is
// one) unless it already holds content.
func writeIfChanged(path, content string) error {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, []byte(content)) {
			return nil
		}
	}
	os.Remove(path)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// switchRoot moves the early mounts into newRoot and makes it /.
func switchRoot() error {
	for _, m := range []string{"/dev", "/proc", "/sys", "/run"} {
		if err := os.MkdirAll(newRoot+m, 0o755); err != nil {
			return fmt.Errorf("creating %s in the new root: %w", m, err)
		}
		if err := unix.Mount(m, newRoot+m, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("moving %s into the new root: %w", m, err)
		}
	}
	if err := os.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the new root to /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into the new root: %w", err)
	}
	return os.Chdir("/")
}

// mountShared mounts the host's virtio-fs directories, before the
// image's command or systemd starts, so both see them from the first
// instant. A read-only one is also read-only on the host side.
func mountShared(ms []Mount) error {
	for _, m := range ms {
		if err := os.MkdirAll(m.Path, 0o755); err != nil {
			return fmt.Errorf("creating mount point %s: %w", m.Path, err)
		}
		var flags uintptr = unix.MS_NODEV
		if m.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount(m.Tag, m.Path, "virtiofs", flags, ""); err != nil {
			return fmt.Errorf("mounting the host directory %s at %s (virtio-fs): %w: was the kernel imported with virtiofs.ko?", m.Tag, m.Path, err)
		}
		logf("mounted host directory %s at %s (virtio-fs%s)", m.Tag, m.Path, map[bool]string{true: ", read-only"}[m.ReadOnly])
	}
	return nil
}

// maskUdevlessGetty masks the serial getty on the console for this boot
// (under /run) when the image has no udev: the getty waits for a device
// unit only udev announces, and systemd would hold multi-user.target for
// its 90 s job timeout. It returns the unit it masked, or "".
func maskUdevlessGetty() string {
	for _, p := range []string{"/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd", "/sbin/udevd"} {
		if _, err := os.Stat(p); err == nil {
			return ""
		}
	}
	unit := "serial-getty@ttyS0.service"
	if err := os.MkdirAll("/run/systemd/system", 0o755); err != nil {
		return ""
	}
	if err := os.Symlink("/dev/null", "/run/systemd/system/"+unit); err != nil && !os.IsExist(err) {
		return ""
	}
	return unit
}

// imageInit decides what to exec after the root switch: banger.init= when
// given, else the image's systemd. Container images' own init programs
// (busybox init, tini) are not booted; the init stage runs their command.
func imageInit(c Config) string {
	switch c.Init {
	case "none":
		return ""
	case "":
	default:
		return c.Init
	}
	for _, p := range []string{"/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd"} {
		target, err := filepath.EvalSymlinks(p)
		if err == nil && strings.Contains(target, "systemd") {
			return p
		}
	}
	return ""
}
