package vsockagent

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Port is a socket listening in the guest.
type Port struct {
	Proto   string `json:"proto"` // tcp, tcp6, udp, udp6
	Addr    string `json:"addr"`
	Port    int    `json:"port"`
	PID     int    `json:"pid,omitempty"`
	Process string `json:"process,omitempty"`
}

// ListeningPorts reads listening TCP and bound UDP sockets from
// proc/net (no ss or netstat needed) and names their processes from
// proc/PID/fd where it can.
func ListeningPorts(proc string) ([]Port, error) {
	owners := socketOwners(proc)
	var out []Port
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open(filepath.Join(proc, "net", proto))
		if err != nil {
			continue // no IPv6, say
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 {
				continue
			}
			// TCP_LISTEN is 0A; an unconnected UDP socket is 07.
			if (strings.HasPrefix(proto, "tcp") && fields[3] != "0A") || (strings.HasPrefix(proto, "udp") && fields[3] != "07") {
				continue
			}
			addr, port, err := parseProcAddr(fields[1])
			if err != nil {
				continue
			}
			p := Port{Proto: proto, Addr: addr, Port: port}
			if o, ok := owners[fields[9]]; ok {
				p.PID, p.Process = o.pid, o.name
			}
			out = append(out, p)
		}
		f.Close()
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Port != out[j].Port {
			return out[i].Port < out[j].Port
		}
		return out[i].Proto < out[j].Proto
	})
	return out, nil
}

// parseProcAddr decodes "0100007F:1F90" (little-endian words) into
// 127.0.0.1 and 8080.
func parseProcAddr(s string) (string, int, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return "", 0, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return "", 0, err
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return "", 0, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	a, _ := netip.AddrFromSlice(raw)
	return a.Unmap().String(), int(port), nil
}

type owner struct {
	pid  int
	name string
}

// socketOwners maps socket inodes to the process holding them.
func socketOwners(proc string) map[string]owner {
	out := map[string]owner{}
	fds, _ := filepath.Glob(filepath.Join(proc, "[0-9]*", "fd", "*"))
	for _, fd := range fds {
		l, err := os.Readlink(fd)
		if err != nil || !strings.HasPrefix(l, "socket:[") {
			continue
		}
		inode := strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")
		if _, ok := out[inode]; ok {
			continue
		}
		pidDir := filepath.Dir(filepath.Dir(fd))
		pid, _ := strconv.Atoi(filepath.Base(pidDir))
		comm, _ := os.ReadFile(filepath.Join(pidDir, "comm"))
		out[inode] = owner{pid, strings.TrimSpace(string(comm))}
	}
	return out
}
