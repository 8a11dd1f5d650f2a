package vsockagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/filesync"
)

// Options are what the agent needs from whoever starts it.
type Options struct {
	// Version and Image (the image the VM was made from) are reported
	// in the Hello.
	Version, Image string
	// Env and Dir are the image's environment and working directory,
	// the defaults of every exec (like `docker exec`).
	Env []string
	Dir string
	// Reaper is set when the agent runs inside PID 1, which reaps every
	// child: the agent's own children's statuses come through it.
	Reaper *Reaper
	// PowerOff asks the VM to shut down cleanly.
	PowerOff func()
	// DataDir is where the VM's writable disk is mounted (its SSH keys
	// live there); "" means no SSH server.
	DataDir string
	// Reidentify makes a VM restored from a snapshot its own machine:
	// host name, /etc files, network (see Identity). The agent itself
	// sets the clock, the entropy pool and the SSH host key first.
	Reidentify func(Identity) error
	// Release starts the image's command the init stage holds (kernel
	// parameter banger.hold) while the host snapshots a warm template.
	Release func()
	// Root is the directory whose etc/passwd, etc/group and etc/shadow
	// name the guest's users ("" is /): what exec's user and the file
	// system ops resolve against, and where ensure_user writes (homes
	// included). Tests point it at a temporary tree.
	Root string
}

// Agent serves streams: exec, files, ports, connections.
type Agent struct {
	opts  Options
	ssh   *SSH // nil without a host key
	procs *procTable
	// users serialises ensure_user's edits of /etc.
	users sync.Mutex
	// defaults are every exec's environment and directory: the run
	// spec's, which a restored VM's identity may replace.
	defaults struct {
		sync.RWMutex
		env []string
		dir string
	}
}

// NewAgent makes an agent.
func NewAgent(opts Options) *Agent {
	if opts.PowerOff == nil {
		opts.PowerOff = defaultPowerOff
	}
	a := &Agent{opts: opts, procs: newProcTable()}
	a.setDefaults(opts.Env, opts.Dir)
	return a
}

func (a *Agent) setDefaults(env []string, dir string) {
	a.defaults.Lock()
	a.defaults.env, a.defaults.dir = env, dir
	a.defaults.Unlock()
}

func (a *Agent) execDefaults() ([]string, string) {
	a.defaults.RLock()
	defer a.defaults.RUnlock()
	return a.defaults.env, a.defaults.dir
}

// defaultPowerOff signals PID 1: SIGTERM when that is banger's init
// stage, systemd's poweroff signal (SIGRTMIN+4) otherwise.
func defaultPowerOff() {
	if os.Getpid() == 1 {
		unix.Kill(1, unix.SIGTERM)
		return
	}
	unix.Kill(1, syscall.Signal(38))
}

// Handle serves one stream; it returns when the stream is over.
func (a *Agent) Handle(st *Stream) {
	switch st.Req.Op {
	case "exec":
		if st.Req.Detach {
			a.startDetached(st)
			return
		}
		a.exec(st)
	case "attach":
		a.attachOp(st)
	case "procs":
		a.procsOp(st)
	case "signal":
		a.signalOp(st)
	case "stdin":
		a.stdinOp(st)
	case "resize":
		a.resizeOp(st)
	case "stat", "ls", "mkdir", "mv", "rm", "write", "read", "watch":
		a.fsOp(st)
	case "metrics":
		a.metricsOp(st)
	case "ensure_user":
		a.ensureUserOp(st)
	case "put":
		// The host's user is root in this VM anyway: owners (as root)
		// and setuid bits are kept, as `cp -a` by root would.
		err := ExtractTar(st, st.Req.Path, ExtractOptions{Owners: os.Geteuid() == 0, SetID: true})
		st.SendExit(exitFor(err))
	case "get":
		err := WriteTar(st, st.Req.Path)
		if err == nil {
			err = st.CloseWrite()
		}
		st.SendExit(exitFor(err))
	case "dial":
		a.dial(st)
	case "ssh":
		if a.ssh == nil {
			st.Fail(errors.New("this VM has no SSH host key: it was created by an older banger; recreate it"))
			return
		}
		a.ssh.ServeConn(streamConn{st})
	case "ports":
		ports, err := ListeningPorts("/proc")
		if err == nil {
			err = json.NewEncoder(st).Encode(ports)
			st.CloseWrite()
		}
		st.SendExit(exitFor(err))
	case "filesync":
		// A synced mount (-v on Firecracker): it runs until the host
		// ends it.
		err := filesync.Guest(context.Background(), st, st.Req.Path, filesync.GuestOptions{
			Log: func(s string) { fmt.Fprintf(os.Stderr, "banger-agent: sync %s: %s\n", st.Req.Path, s) },
		})
		st.SendExit(exitFor(err))
	case "sync":
		unix.Sync()
		st.SendExit(Exit{})
	case "identity":
		err := a.reidentify(st)
		if err == nil {
			a.release()
		}
		st.SendExit(exitFor(err))
	case "release":
		a.release()
		st.SendExit(Exit{})
	case "poweroff":
		unix.Sync()
		st.SendExit(Exit{})
		go a.opts.PowerOff()
	default:
		st.Fail(fmt.Errorf("the agent does not know %q: the VM's agent is older than this banger; recreate the VM's image", st.Req.Op))
	}
}

func (a *Agent) release() {
	if a.opts.Release != nil {
		a.opts.Release()
	}
}

func exitFor(err error) Exit {
	if err != nil {
		return Exit{Code: 1, Error: err.Error()}
	}
	return Exit{}
}

// dial connects to Req.Addr inside the guest (127.0.0.1:PORT for a
// forwarded port) and relays bytes both ways.
func (a *Agent) dial(st *Stream) {
	c, err := net.DialTimeout("tcp", st.Req.Addr, 5*time.Second)
	if err != nil {
		st.Fail(fmt.Errorf("connecting to %s in the guest: %w", st.Req.Addr, err))
		return
	}
	defer c.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		Copy(c, st)
		c.(*net.TCPConn).CloseWrite()
	}()
	Copy(st, c)
	st.CloseWrite()
	wg.Wait()
	st.SendExit(Exit{})
}
