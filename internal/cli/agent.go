package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"banger/internal/vsockagent"
)

func newVMExecCommand(a *app) *cobra.Command {
	var tty, interactive bool
	var req vsockagent.Request
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "exec VM [flags] -- COMMAND [ARG...]",
		Short: "Run a command in a VM; its exit status is banger's",
		Long: "Run a command in a running VM through its agent (no sshd or network needed),\n" +
			"with the image's environment and working directory. Standard input, output and\n" +
			"error are streamed; Ctrl-C reaches the command; -t gives it a terminal.",
		Example: "  banger vm exec dev -- uname -a\n" +
			"  banger vm exec dev -it -- top\n" +
			"  tar c src | banger vm exec dev -i -- tar x -C /work\n" +
			"  banger vm exec dev -u nobody -w /tmp -e DEBUG=1 --timeout 10s -- ./check.sh",
		Args: argsError(cobra.MinimumNArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Op, req.Argv, req.TTY = "exec", args[1:], tty
			req.TimeoutMs = timeout.Milliseconds()
			return a.runInVM(cmd, args[0], req, interactive || tty)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&interactive, "interactive", "i", false, "pass standard input to the command")
	f.BoolVarP(&tty, "tty", "t", false, "run the command in a terminal (raw mode on this side)")
	f.StringArrayVarP(&req.Env, "env", "e", nil, "set an environment variable, KEY=VALUE; repeatable")
	f.StringVarP(&req.Dir, "workdir", "w", "", "working directory (default: the image's)")
	f.StringVarP(&req.User, "user", "u", "", "user, NAME[:GROUP] or UID[:GID] (default root)")
	f.DurationVar(&timeout, "timeout", 0, "kill the command after this long (exit status 137)")
	return cmd
}

func newVMShellCommand(a *app) *cobra.Command {
	var user string
	return &cobra.Command{
		Use:   "shell VM",
		Short: "Open a login shell in a VM (bash when the image has it, else sh)",
		Args:  argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := vsockagent.Request{Op: "exec", TTY: true, User: user,
				Argv: []string{"/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l"}}
			return a.runInVM(cmd, args[0], req, true)
		},
	}
}

// agent opens an agent session to vm through the daemon.
func (a *app) agent(ctx context.Context, vm string) (*vsockagent.Session, error) {
	c, err := a.client(ctx)
	if err != nil {
		return nil, err
	}
	return c.Agent(ctx, vm)
}

// runInVM runs one exec stream and ends the CLI with its exit status.
func (a *app) runInVM(cmd *cobra.Command, vm string, req vsockagent.Request, stdin bool) error {
	// The session outlives Ctrl-C: the signal goes to the guest.
	ctx := context.WithoutCancel(cmd.Context())
	s, err := a.agent(ctx, vm)
	if err != nil {
		return err
	}
	defer s.Close()
	inFd := int(os.Stdin.Fd())
	if req.TTY {
		if !term.IsTerminal(inFd) {
			return errors.New("-t needs a terminal on standard input; drop -t to pipe input")
		}
		if w, h, err := term.GetSize(inFd); err == nil {
			req.Cols, req.Rows = uint16(w), uint16(h)
		}
		if req.Env == nil || !hasEnv(req.Env, "TERM") {
			if t := os.Getenv("TERM"); t != "" {
				req.Env = append(req.Env, "TERM="+t)
			}
		}
	}
	st, err := s.Open(ctx, req)
	if err != nil {
		return err
	}
	if req.TTY {
		old, err := term.MakeRaw(inFd)
		if err != nil {
			return fmt.Errorf("putting the terminal in raw mode: %w", err)
		}
		defer term.Restore(inFd, old)
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGWINCH {
				if w, h, err := term.GetSize(inFd); err == nil {
					st.Resize(vsockagent.Winsize{Rows: uint16(h), Cols: uint16(w)})
				}
				continue
			}
			st.Signal(int(sig.(syscall.Signal)))
		}
	}()
	if stdin {
		go func() {
			vsockagent.Copy(st, os.Stdin)
			if !req.TTY {
				st.CloseWrite()
			}
		}()
	} else {
		st.CloseWrite()
	}
	var outputs sync.WaitGroup
	outputs.Add(2)
	go func() { defer outputs.Done(); vsockagent.Copy(cmd.OutOrStdout(), st) }()
	go func() { defer outputs.Done(); io.Copy(cmd.ErrOrStderr(), st.Stderr()) }()
	e, err := st.Wait(ctx)
	outputs.Wait()
	if err != nil {
		return err
	}
	if e.Error != "" {
		return &exitError{code: max(e.Code, 1), err: errors.New(e.Error)}
	}
	if e.TimedOut {
		return &exitError{code: e.Code, err: fmt.Errorf("the command was killed after --timeout")}
	}
	if e.Code != 0 {
		return &exitError{code: e.Code}
	}
	return nil
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

func newVMCopyCommand(a *app) *cobra.Command {
	var preserveOwners bool
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files and directory trees into or out of a VM",
		Long: "Copy into a VM (`banger vm cp ./src dev:/work`) or out of one\n" +
			"(`banger vm cp dev:/var/log ./logs`), like `cp -a`: modes, times and\n" +
			"symlinks are kept, directories recursively. An existing destination\n" +
			"directory receives the source under its own name.\n\n" +
			"Into a VM, owners are kept too (the guest's agent is root). Out of a\n" +
			"VM, the guest is not trusted: the files become yours (even under sudo)\n" +
			"and lose setuid and setgid bits, and an entry that would leave DST, pass\n" +
			"through a symlink or hard-link to a file the copy did not make stops the\n" +
			"copy. --preserve-owners (as root) keeps the guest's owners and\n" +
			"setuid/setgid bits.",
		Args: argsError(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcVM, src := splitVMPath(args[0])
			dstVM, dst := splitVMPath(args[1])
			if (srcVM == "") == (dstVM == "") {
				return errors.New("exactly one of SRC and DST is VM:PATH, e.g. `banger vm cp ./dir dev:/root`")
			}
			ctx := cmd.Context()
			if dstVM != "" {
				if preserveOwners {
					return errors.New("--preserve-owners is for copies out of a VM: into one, owners are always kept")
				}
				s, err := a.agent(ctx, dstVM)
				if err != nil {
					return err
				}
				defer s.Close()
				if _, err := os.Lstat(src); err != nil {
					return err
				}
				st, err := s.Open(ctx, vsockagent.Request{Op: "put", Path: dst})
				if err != nil {
					return err
				}
				werr := vsockagent.WriteTar(st, src)
				st.CloseWrite()
				return finish(ctx, st, werr)
			}
			opts, err := copyOutOptions(preserveOwners, os.Geteuid())
			if err != nil {
				return err
			}
			s, err := a.agent(ctx, srcVM)
			if err != nil {
				return err
			}
			defer s.Close()
			st, err := s.Open(ctx, vsockagent.Request{Op: "get", Path: src})
			if err != nil {
				return err
			}
			st.CloseWrite()
			xerr := vsockagent.ExtractTar(st, dst, opts)
			if xerr != nil {
				st.Close()
			}
			return finish(ctx, st, xerr)
		},
	}
	cmd.Flags().BoolVar(&preserveOwners, "preserve-owners", false,
		"copying out of a VM, keep the guest's owners and setuid/setgid bits (needs root)")
	return cmd
}

// copyOutOptions are how `vm cp VM:SRC DST` extracts the tar the guest
// sends. The guest may be hostile, so by default nothing of its owners
// or setuid/setgid bits reaches the host, even under sudo: it could
// otherwise plant setuid-root programs. One flag keeps both, because a
// setuid bit means "run as this owner": kept without the owner it would
// make the guest's program setuid to whoever copies (root under sudo).
func copyOutOptions(preserveOwners bool, euid int) (vsockagent.ExtractOptions, error) {
	if preserveOwners && euid != 0 {
		return vsockagent.ExtractOptions{}, errors.New("--preserve-owners needs root: run the copy with sudo, or drop the flag to own the files yourself")
	}
	return vsockagent.ExtractOptions{Owners: preserveOwners, SetID: preserveOwners}, nil
}

// finish waits for a copy stream's status; the guest's error wins over
// a local one it caused.
func finish(ctx context.Context, st *vsockagent.Stream, local error) error {
	e, err := st.Wait(ctx)
	switch {
	case err == nil && e.Error != "":
		return errors.New(e.Error)
	case local != nil:
		return local
	}
	return err
}

// splitVMPath splits VM:PATH; a local path (no colon before the first
// slash) has no VM.
func splitVMPath(s string) (vm, path string) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.Contains(s[:i], "/") {
		return "", s
	}
	return s[:i], s[i+1:]
}

func newVMPortsCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ports VM",
		Short: "List the TCP and UDP ports listening in a VM",
		Args:  argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ports, err := a.guestPorts(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), ports)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "PROTO\tADDRESS\tPORT\tPID\tPROCESS")
			for _, p := range ports {
				// The guest names its processes: shown, never obeyed.
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", safeText(p.Proto), safeText(p.Addr), p.Port, p.PID, safeText(p.Process))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *app) guestPorts(ctx context.Context, vm string) ([]vsockagent.Port, error) {
	s, err := a.agent(ctx, vm)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return portsOver(ctx, s)
}

// portsOver asks the agent of session s for the guest's listening ports.
func portsOver(ctx context.Context, s *vsockagent.Session) ([]vsockagent.Port, error) {
	st, err := s.Open(ctx, vsockagent.Request{Op: "ports"})
	if err != nil {
		return nil, err
	}
	st.CloseWrite()
	var ports []vsockagent.Port
	derr := json.NewDecoder(st).Decode(&ports)
	if err := finish(ctx, st, derr); err != nil {
		return nil, err
	}
	return ports, nil
}

func newVMForwardCommand(a *app) *cobra.Command {
	var auto bool
	var bind string
	cmd := &cobra.Command{
		Use:   "forward VM [[HOSTPORT:]GUESTPORT...]",
		Short: "Forward localhost ports into a VM through its agent until Ctrl-C",
		Long: "Listen on localhost and carry each connection to a port inside the VM\n" +
			"through the agent: no VM network, NAT or published port needed. With\n" +
			"--auto-forward, every TCP port that starts listening in the VM is forwarded\n" +
			"too, on the same port number on 127.0.0.1 only (whatever --address says):\n" +
			"never a port below 1024, a port something on this host already listens\n" +
			"on (at any address), or more than 64 ports.",
		Example: "  banger vm forward dev 8080            # localhost:8080 → dev's 8080\n" +
			"  banger vm forward dev 5433:5432 --auto-forward",
		Args: argsError(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			vm := args[0]
			if len(args) == 1 && !auto {
				return errors.New("name ports to forward (HOSTPORT:GUESTPORT or GUESTPORT), or use --auto-forward")
			}
			s, err := a.agent(cmd.Context(), vm)
			if err != nil {
				return err
			}
			defer s.Close()
			fw := &forwarder{s: s, out: cmd.ErrOrStderr(), ports: map[int]net.Listener{}}
			defer fw.close()
			for _, spec := range args[1:] {
				host, guest, err := parseForward(spec)
				if err != nil {
					return err
				}
				if err := fw.add(bind, host, guest); err != nil {
					return err
				}
			}
			if auto {
				go fw.auto(cmd.Context())
			}
			select {
			case <-cmd.Context().Done():
				return nil
			case <-s.Done():
				return fmt.Errorf("the VM's agent session ended: %v", s.Err())
			}
		},
	}
	cmd.Flags().BoolVar(&auto, "auto-forward", false, "also forward every port that starts listening in the VM")
	cmd.Flags().StringVar(&bind, "address", "127.0.0.1", "local address to listen on (named ports only; --auto-forward listens on 127.0.0.1)")
	return cmd
}

func parseForward(s string) (host, guest int, err error) {
	h, g, ok := strings.Cut(s, ":")
	if !ok {
		g = h
	}
	host, err1 := strconv.Atoi(h)
	guest, err2 := strconv.Atoi(g)
	if err1 != nil || err2 != nil || host < 1 || host > 65535 || guest < 1 || guest > 65535 {
		return 0, 0, fmt.Errorf("forward %q: use HOSTPORT:GUESTPORT or GUESTPORT, e.g. 8080:80", s)
	}
	return host, guest, nil
}

// forwarder listens on local ports and relays each connection as a
// "dial" stream to 127.0.0.1:GUEST inside the VM.
type forwarder struct {
	s     *vsockagent.Session
	out   io.Writer
	mu    sync.Mutex
	ports map[int]net.Listener // by guest port
}

func (f *forwarder) add(bind string, host, guest int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ports[guest]; ok {
		return nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(bind, strconv.Itoa(host)))
	if err != nil {
		return fmt.Errorf("forwarding %d: %w: pick another local port (HOSTPORT:%d)", host, err, guest)
	}
	f.ports[guest] = ln
	fmt.Fprintf(f.out, "forwarding %s → guest port %d\n", ln.Addr(), guest)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.relay(c, guest)
		}
	}()
	return nil
}

func (f *forwarder) relay(c net.Conn, guest int) {
	defer c.Close()
	// The connection, not a context, bounds the stream: it ends when
	// either side closes.
	st, err := f.s.Open(context.Background(), vsockagent.Request{Op: "dial", Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(guest))})
	if err != nil {
		return
	}
	defer st.Close()
	go func() {
		vsockagent.Copy(st, c)
		st.CloseWrite()
	}()
	vsockagent.Copy(c, st)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	st.Wait(context.Background())
}

// maxAutoForwards bounds the listeners --auto-forward opens: the guest
// decides which ports it reports, and each is a listener on the host.
const maxAutoForwards = 64

// auto forwards new listening TCP ports as they appear (polled every
// second; the agent reads /proc/net, which is cheap).
// It asks over the forwarder's own session: no new connection per poll.
// The guest picks the ports, so they are opened on loopback only, and
// never where the host already listens: a guest must not take over a
// port that local clients expect a host service on.
func (f *forwarder) auto(ctx context.Context) {
	tried := map[int]bool{}
	for {
		if ports, err := portsOver(ctx, f.s); err == nil {
			host := hostListening()
			for _, p := range ports {
				if !strings.HasPrefix(p.Proto, "tcp") || p.Port <= 0 || p.Port > 65535 || tried[p.Port] {
					continue
				}
				tried[p.Port] = true
				switch {
				case len(tried) > maxAutoForwards:
					if len(tried) == maxAutoForwards+1 {
						fmt.Fprintf(f.out, "banger: the VM listens on more than %d ports: not forwarding more automatically (name them: banger vm forward VM PORT…)\n", maxAutoForwards)
					}
				case p.Port < 1024:
					fmt.Fprintf(f.out, "banger: guest port %d is below 1024: not forwarded automatically (forward it to a high port: HOSTPORT:%d)\n", p.Port, p.Port)
				case host[p.Port]:
					fmt.Fprintf(f.out, "banger: port %d is in use on this host: guest port %d not forwarded (pick a free one: HOSTPORT:%d)\n", p.Port, p.Port, p.Port)
				default:
					if err := f.add("127.0.0.1", p.Port, p.Port); err != nil {
						fmt.Fprintln(f.out, "banger:", err)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// hostListening is the set of TCP ports something on this host listens
// on, at any address (this network namespace's /proc/net).
func hostListening() map[int]bool {
	ports, _ := vsockagent.ListeningPorts("/proc")
	out := map[int]bool{}
	for _, p := range ports {
		if strings.HasPrefix(p.Proto, "tcp") {
			out[p.Port] = true
		}
	}
	return out
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ln := range f.ports {
		ln.Close()
	}
}
