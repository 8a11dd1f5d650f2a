// Command flood is a guest agent gone bad, for the integration test of
// a stuck guest (TestAgentStuckGuestCannotHangTheDaemon). Run inside a
// VM, it freezes the real agent, takes over the agent's virtio-serial
// port (testdata/agentport) and writes ping frames into it without end, reading nothing: the
// host's answers pile up until its writes block.
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"time"

	"banger/test/integration/testdata/agentport"
)

func main() {
	// ptrace requests must come from the thread that seized the tracee.
	runtime.LockOSThread()
	// The exec that started this reports its exit over the very channel
	// about to be jammed: let it finish first.
	time.Sleep(time.Second)
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(1)
	}
}

func run() error {
	f, err := agentport.Steal()
	if err != nil {
		return err
	}
	var pings []byte
	for range 512 {
		pings = frame(pings, []byte(`{"proto":1}`))
	}
	for {
		if _, err := f.Write(pings); err != nil {
			time.Sleep(10 * time.Millisecond) // no host connected: wait for one
		}
	}
}

// frame appends a HELLO frame on stream 0 (docs/agent-protocol.md).
func frame(b, payload []byte) []byte {
	var h [10]byte
	h[0], h[1] = 0xb4, 0x01
	binary.BigEndian.PutUint32(h[6:], uint32(len(payload)))
	return append(append(b, h[:]...), payload...)
}
