package vsockagent

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ReadyLine is what the agent prints on the console when it is ready;
// boot measurements and tests look for it.
const ReadyLine = "banger-vsock-agent: ready"

// SerialPortName is the virtio-serial port the agent serves on under
// QEMU (the host side is the VM directory's agent.sock).
const SerialPortName = "banger.agent"

// VsockPort is the vsock port the agent listens on: Firecracker's hybrid
// vsock (the host writes "CONNECT 1024") and vhost-vsock.
const VsockPort = 1024

// Serve runs the agent until ctx is done, on every channel the VM has:
// the virtio-serial port and vsock. It is the same whether systemd
// started the agent service or the init stage runs it as PID 1; it
// prints the ready line once its channels are open.
func Serve(ctx context.Context, opts Options, stdout io.Writer) error {
	a := NewAgent(opts)
	if opts.DataDir != "" {
		if srv, err := a.NewSSH(filepath.Join(opts.DataDir, SSHHostKeyPath), filepath.Join(opts.DataDir, SSHAuthorizedKeysPath), "/root/.ssh/authorized_keys"); err == nil {
			a.ssh = srv
			// Port 22 of the VM's address too, unless the image brings
			// its own sshd: that one keeps the port.
			if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
				if ln, err := net.Listen("tcp", ":22"); err == nil {
					go srv.Serve(ln)
					go func() { <-ctx.Done(); ln.Close() }()
				}
			}
		}
	}
	SetPong(Hello{Agent: opts.Version, Hostname: currentHostname(), Image: opts.Image, Features: agentFeatures})
	hello := func() Hello {
		return Hello{Agent: opts.Version, Hostname: currentHostname(), Image: opts.Image, UptimeMs: time.Since(started).Milliseconds(), Features: agentFeatures}
	}
	if dev := serialPort(SerialPortName); dev != "" {
		if f, err := os.OpenFile(dev, os.O_RDWR, 0); err == nil {
			go serveSerial(ctx, guestChannel(f), hello, a)
		} else {
			fmt.Fprintf(stdout, "banger-vsock-agent: opening %s: %v\n", dev, err)
		}
	}
	if ln, err := listenVsock(VsockPort); err == nil {
		go serveVsock(ctx, ln, hello, a)
	}
	fmt.Fprintln(stdout, ReadyLine, opts.Version)
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		fmt.Fprintln(f, ReadyLine, opts.Version)
		f.Close()
	}
	<-ctx.Done()
	return nil
}

// guestChannel is a channel of the agent to its host, whose writes have
// no stall bound. The bound protects a host from a guest that stops
// reading; the guest trusts its host, and a host that stops reading has
// gone away or is frozen (its daemon stopped, the machine suspended
// with the VM): its session ends when its connection does (vsock) or
// when the port reports the host gone (virtio-serial, whose next
// session then kicks the stuck write, see Session.fail), and a slow or
// frozen host must find its streams intact when it reads again. The
// agent's read loop never waits on a write, so pings and new hosts
// are still seen meanwhile.
func guestChannel(rw io.ReadWriter) *Channel {
	ch := NewChannel(rw)
	ch.SetStallTimeout(0)
	return ch
}

// serialPort finds the device of the named virtio-serial port from
// sysfs: /dev/virtio-ports/NAME is a udev symlink, and the init stage
// runs without udev.
func serialPort(name string) string {
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range names {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(p))
		}
	}
	return ""
}

// serveSerial serves one host session after another on the port: while
// no host is connected, reads end at once, so it waits a little.
func serveSerial(ctx context.Context, ch *Channel, hello func() Hello, a *Agent) {
	for ctx.Err() == nil {
		s, err := Server(ch, hello(), a.Handle, nil)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case <-s.Done():
		case <-ctx.Done():
			s.Close()
		}
	}
}

type vsockListener struct{ fd int }

func listenVsock(port uint32) (*vsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &vsockListener{fd}, nil
}

// serveVsock serves each vsock connection as its own session.
func serveVsock(ctx context.Context, ln *vsockListener, hello func() Hello, a *Agent) {
	go func() { <-ctx.Done(); unix.Close(ln.fd) }()
	for {
		nfd, _, err := unix.Accept4(ln.fd, unix.SOCK_CLOEXEC)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		conn := os.NewFile(uintptr(nfd), "vsock")
		go func() {
			s, err := Server(guestChannel(conn), hello(), a.Handle, conn)
			if err != nil {
				conn.Close()
				return
			}
			<-s.Done()
		}()
	}
}
