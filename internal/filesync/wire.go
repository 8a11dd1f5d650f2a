package filesync

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// The wire: each message is a 4-byte big-endian length and that many
// bytes of JSON header; a put of a file is followed by exactly e.Size
// bytes of content.
//
//	hello    host → guest, first: the mount's options
//	manifest guest → host, once: the guest's tree
//	put      a path's entry (and content)
//	rm       a path (and all under it) is gone, since Time
//	want     host → guest: send these paths (initial sync)
//	ack      a put or rm was handled: OK when it was applied
//	mark     host → guest ends the host's initial part; the guest
//	         answers with its own once its wanted puts are sent
//	note     guest → host: a line for the host's log (conflicts)
type msg struct {
	Op   string   `json:"op"`
	E    *Entry   `json:"e,omitempty"`
	Es   []Entry  `json:"es,omitempty"`
	Ps   []string `json:"ps,omitempty"`
	P    string   `json:"p,omitempty"`
	Time int64    `json:"time,omitempty"`
	OK   bool     `json:"ok,omitempty"`
	RO   bool     `json:"ro,omitempty"`
	Text string   `json:"text,omitempty"`
}

// maxHeader bounds one header: a manifest of a million paths fits.
const maxHeader = 256 << 20

// frame is m on the wire: one buffer, so that it is one write (each
// write is a frame of the agent's channel, and a syscall in the guest).
func frame(m msg) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 4, 4+len(b))
	binary.BigEndian.PutUint32(out, uint32(len(b)))
	return append(out, b...), nil
}

func writeMsg(w io.Writer, m msg) error {
	b, err := frame(m)
	if err == nil {
		_, err = w.Write(b)
	}
	return err
}

func readMsg(r *bufio.Reader) (msg, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return msg{}, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxHeader {
		return msg{}, fmt.Errorf("sync message of %d bytes: the other side is not a banger sync peer", size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return msg{}, err
	}
	var m msg
	if err := json.Unmarshal(b, &m); err != nil {
		return msg{}, fmt.Errorf("sync message: %w", err)
	}
	if m.Op == "put" && (m.E == nil || m.E.Size < 0) {
		return msg{}, fmt.Errorf("sync put without an entry")
	}
	return m, nil
}

// zeros pads a file that shrank (or failed to read) while it was sent:
// the next put, which its change triggers, carries the right content.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
