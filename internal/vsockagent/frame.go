package vsockagent

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ProtocolVersion is the agent protocol's version (docs/agent-protocol.md).
const ProtocolVersion = 1

// Frame types.
const (
	FrameHello  byte = 0x01 // stream 0; JSON Hello
	FrameOpen   byte = 0x02 // JSON Request; opens the stream
	FrameData   byte = 0x03 // stdin (host→guest) or stdout (guest→host)
	FrameStderr byte = 0x04 // guest→host
	FrameEOF    byte = 0x05 // 1 byte: which output ended (0 data, 1 stderr)
	FrameWindow byte = 0x06 // u32: more bytes the receiver will take
	FrameResize byte = 0x07 // u16 rows, u16 cols
	FrameSignal byte = 0x08 // 1 byte: signal number
	FrameExit   byte = 0x09 // JSON Exit
	FrameClose  byte = 0x0a // the stream is over (either side; also an abort)
	FrameError  byte = 0x0b // JSON {"message","code"}: the request failed
	// FrameStarted (JSON {"pid"}) tells the host a process's pid before
	// its output. Hosts from before it treat an unknown type as a
	// broken channel, so the agent sends it only to a host that asked:
	// an exec with "detach" or "report_pid", and "attach" (which only a
	// host that knows STARTED sends).
	FrameStarted byte = 0x0c
)

// frameMagic starts every frame; a stream that loses sync finds its way
// back through the sync marker, not through this byte.
const frameMagic byte = 0xb4

// headerLen is magic, type, stream id (u32) and payload length (u32).
const headerLen = 10

// MaxPayload bounds one frame's payload; data is sent in chunks of at
// most maxChunk.
const (
	MaxPayload = 1 << 20
	maxChunk   = 128 << 10
)

// syncMarker precedes a 16-byte nonce at the start of every session, in
// both directions. A reader hunts for it before reading frames, so bytes
// a previous session left in a virtio-serial queue are skipped.
var syncMarker = []byte{0xb4, 'B', 'A', 'N', 'G', 'E', 'R', 0x00, 'S', 'Y', 'N', 'C'}

// NonceLen is the session nonce's length.
const NonceLen = 16

// ErrBadFrame means the byte stream is not (or no longer) frames.
var ErrBadFrame = errors.New("bad agent frame")

// Frame is one decoded frame.
type Frame struct {
	Type    byte
	Stream  uint32
	Payload []byte
}

func validType(t byte) bool { return t >= FrameHello && t <= FrameStarted }

// AppendFrame encodes a frame onto b.
func AppendFrame(b []byte, f Frame) []byte {
	var h [headerLen]byte
	h[0], h[1] = frameMagic, f.Type
	binary.BigEndian.PutUint32(h[2:6], f.Stream)
	binary.BigEndian.PutUint32(h[6:10], uint32(len(f.Payload)))
	return append(append(b, h[:]...), f.Payload...)
}

// ReadFrame decodes the next frame. Anything malformed is ErrBadFrame:
// the caller drops the session (and, on a channel that outlives
// sessions, hunts for the next sync marker).
func ReadFrame(r *bufio.Reader) (Frame, error) {
	// Peek, so that a header that is not one (the next session's sync
	// marker, after a host went away mid-frame) is left for huntSync.
	h, err := r.Peek(headerLen)
	if err != nil {
		if err == io.EOF && len(h) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	f := Frame{Type: h[1], Stream: binary.BigEndian.Uint32(h[2:6])}
	n := binary.BigEndian.Uint32(h[6:10])
	if h[0] != frameMagic || !validType(f.Type) || n > MaxPayload {
		return Frame{}, fmt.Errorf("%w: header % x", ErrBadFrame, h)
	}
	r.Discard(headerLen)
	f.Payload = make([]byte, n)
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return f, nil
}

// syncBytes is the marker followed by nonce.
func syncBytes(nonce []byte) []byte {
	return append(append([]byte{}, syncMarker...), nonce...)
}

// huntSync reads until the sync marker and returns the nonce after it.
// With want set, markers with another nonce are skipped too.
func huntSync(r *bufio.Reader, want []byte) ([]byte, error) {
	matched := 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		switch {
		case c == syncMarker[matched]:
			matched++
		case c == syncMarker[0]:
			matched = 1
		default:
			matched = 0
		}
		if matched < len(syncMarker) {
			continue
		}
		matched = 0
		nonce := make([]byte, NonceLen)
		if _, err := io.ReadFull(r, nonce); err != nil {
			return nil, err
		}
		if want == nil || bytes.Equal(nonce, want) {
			return nonce, nil
		}
	}
}
