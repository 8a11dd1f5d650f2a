package vsockagent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// Guest paths of the SSH server's keys, on the VM's writable disk (seeded
// by the host at create time; the host key is the VM's for life).
const (
	SSHHostKeyPath        = "banger/ssh_host_ed25519_key"
	SSHAuthorizedKeysPath = "banger/authorized_keys"
)

// LoginShell is the command of a login shell on any image: bash when it
// has one, else sh.
var LoginShell = []string{"/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l"}

// SSH is the agent's SSH server: key-only, exec, shell with PTY, sftp
// and direct-tcpip (what editors' remote-SSH needs), running commands
// the way exec streams do.
type SSH struct {
	a       *Agent
	cfg     atomic.Pointer[ssh.ServerConfig] // replaced when a restored VM gets its own host key
	keyFile []string                         // authorized_keys files, read at each login
}

// NewSSH makes the server from the host key file; logins are checked
// against keyFiles (missing files authorize nothing).
func (a *Agent) NewSSH(hostKey string, keyFiles ...string) (*SSH, error) {
	b, err := os.ReadFile(hostKey)
	if err != nil {
		return nil, fmt.Errorf("reading the SSH host key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("parsing the SSH host key: %w", err)
	}
	s := &SSH{a: a, keyFile: keyFiles}
	s.cfg.Store(s.config(signer))
	return s, nil
}

func (s *SSH) config(hostKey ssh.Signer) *ssh.ServerConfig {
	cfg := &ssh.ServerConfig{PublicKeyCallback: s.checkKey, ServerVersion: "SSH-2.0-banger-agent"}
	cfg.AddHostKey(hostKey)
	return cfg
}

func (s *SSH) checkKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	want := key.Marshal()
	for _, f := range s.keyFile {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for len(b) > 0 {
			k, _, _, rest, err := ssh.ParseAuthorizedKey(b)
			if err != nil {
				break
			}
			if bytes.Equal(k.Marshal(), want) {
				return &ssh.Permissions{}, nil
			}
			b = rest
		}
	}
	return nil, fmt.Errorf("key %s is not authorized for %s", ssh.FingerprintSHA256(key), meta.User())
}

// Serve accepts connections until ln closes.
func (s *SSH) Serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go s.ServeConn(c)
	}
}

// ServeConn speaks SSH on one connection (a TCP one, or an agent stream
// the host opened with op "ssh").
func (s *SSH) ServeConn(c net.Conn) {
	defer c.Close()
	sc, chans, reqs, err := ssh.NewServerConn(c, s.cfg.Load())
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			ch, creqs, err := nc.Accept()
			if err == nil {
				go s.session(sc.User(), ch, creqs)
			}
		case "direct-tcpip":
			go s.directTCPIP(nc)
		default:
			nc.Reject(ssh.UnknownChannelType, "banger's agent serves sessions and direct-tcpip")
		}
	}
}

// directTCPIP connects to a host and port inside the guest for the
// client (ssh -L, editors' remote servers).
func (s *SSH) directTCPIP(nc ssh.NewChannel) {
	var p struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
		nc.Reject(ssh.ConnectionFailed, "bad direct-tcpip request")
		return
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))), 5*time.Second)
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		c.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	go func() {
		io.Copy(c, ch)
		c.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(ch, c)
	ch.CloseWrite()
	c.Close()
	ch.Close()
}

// session serves one session channel: env, pty-req, window-change and
// signal requests, then one of shell, exec or subsystem sftp.
func (s *SSH) session(user string, ch ssh.Channel, reqs <-chan *ssh.Request) {
	io := &sshIO{ch: ch, resizes: make(chan Winsize, 8), signals: make(chan int, 8), done: make(chan struct{})}
	req := Request{Op: "exec", User: user}
	if user == "root" {
		req.User = ""
	}
	started := false
	defer func() {
		if !started {
			ch.Close()
		}
	}()
	for r := range reqs {
		ok := true
		switch r.Type {
		case "env":
			var kv struct{ Name, Value string }
			if ssh.Unmarshal(r.Payload, &kv) == nil {
				req.Env = append(req.Env, kv.Name+"="+kv.Value)
			}
		case "pty-req":
			var p struct {
				Term             string
				Cols, Rows, W, H uint32
				Modes            string
			}
			if ok = ssh.Unmarshal(r.Payload, &p) == nil; ok {
				req.TTY, req.Cols, req.Rows = true, uint16(p.Cols), uint16(p.Rows)
				req.Env = append(req.Env, "TERM="+p.Term)
			}
		case "window-change":
			var p struct{ Cols, Rows, W, H uint32 }
			if ssh.Unmarshal(r.Payload, &p) == nil {
				select {
				case io.resizes <- Winsize{Rows: uint16(p.Rows), Cols: uint16(p.Cols)}:
				default:
				}
			}
		case "signal":
			var p struct{ Name string }
			if ssh.Unmarshal(r.Payload, &p) == nil {
				if sig := unix.SignalNum("SIG" + p.Name); sig != 0 {
					select {
					case io.signals <- int(sig):
					default:
					}
				}
			}
		case "shell", "exec", "subsystem":
			if started {
				ok = false
				break
			}
			var cmd struct{ Value string }
			if r.Type != "shell" && ssh.Unmarshal(r.Payload, &cmd) != nil {
				ok = false
				break
			}
			started = true
			switch {
			case r.Type == "subsystem" && cmd.Value == "sftp":
				go s.sftp(ch)
			case r.Type == "subsystem":
				ok, started = false, false
			case r.Type == "shell":
				req.Argv = LoginShell
				go s.a.run(req, io)
			default:
				req.Argv = []string{"/bin/sh", "-c", cmd.Value}
				go s.a.run(req, io)
			}
		default:
			ok = false
		}
		if r.WantReply {
			r.Reply(ok, nil)
		}
	}
	io.closeDone()
}

func (s *SSH) sftp(ch ssh.Channel) {
	srv, err := sftp.NewServer(ch)
	if err == nil {
		err = srv.Serve()
		srv.Close()
	}
	code := uint32(0)
	if err != nil && !errors.Is(err, io.EOF) {
		code = 1
	}
	ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, code))
	ch.Close()
}

// sshIO runs an agent command on an SSH session channel.
type sshIO struct {
	ch       ssh.Channel
	resizes  chan Winsize
	signals  chan int
	done     chan struct{}
	doneOnce sync.Once
}

func (s *sshIO) Read(p []byte) (int, error)  { return s.ch.Read(p) }
func (s *sshIO) Write(p []byte) (int, error) { return s.ch.Write(p) }
func (s *sshIO) StderrWriter() io.Writer     { return s.ch.Stderr() }
func (s *sshIO) CloseWrite() error           { return s.ch.CloseWrite() }
func (s *sshIO) CloseStderr() error          { return nil }
func (s *sshIO) Resizes() <-chan Winsize     { return s.resizes }
func (s *sshIO) Signals() <-chan int         { return s.signals }
func (s *sshIO) Done() <-chan struct{}       { return s.done }
func (s *sshIO) closeDone()                  { s.doneOnce.Do(func() { close(s.done) }) }

func (s *sshIO) SendExit(e Exit) error {
	if e.Signal != "" {
		msg := struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: strings.TrimPrefix(e.Signal, "SIG")}
		s.ch.SendRequest("exit-signal", false, ssh.Marshal(&msg))
	} else {
		s.ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, uint32(e.Code)))
	}
	return s.ch.Close()
}

func (s *sshIO) Fail(err error) {
	fmt.Fprintln(s.ch.Stderr(), "banger-vsock-agent:", err)
	s.ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, 127))
	s.ch.Close()
}

// streamConn makes an agent stream a net.Conn for the SSH server.
type streamConn struct{ *Stream }

type agentAddr struct{}

func (agentAddr) Network() string { return "banger-agent" }
func (agentAddr) String() string  { return "agent" }

func (c streamConn) LocalAddr() net.Addr                { return agentAddr{} }
func (c streamConn) RemoteAddr() net.Addr               { return agentAddr{} }
func (c streamConn) SetDeadline(t time.Time) error      { return nil }
func (c streamConn) SetReadDeadline(t time.Time) error  { return nil }
func (c streamConn) SetWriteDeadline(t time.Time) error { return nil }
