// Command liar is a guest agent that lies, for the integration test of
// `vm cp` out of a hostile guest (TestVMVerbs). Run inside a VM as root,
// it freezes the real agent, takes its port (testdata/agentport), breaks
// the host's session so that the host greets again, and then speaks the
// agent protocol itself: every `get` is answered with a hostile archive
// chosen by the path asked for, /case/KIND/DIR, where DIR is a directory
// of the host's the archive aims at:
//
//	dotdot    an entry climbing out of the destination (tree/../../escape-dotdot)
//	abs       an absolute entry (DIR/escape-abs)
//	link      a symlink to DIR, then a file written through it
//	hardlink  a hard link to DIR/victim
//
// Anything else is refused.
package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"banger/internal/vsockagent"
	"banger/test/integration/testdata/agentport"
)

func main() {
	// ptrace requests must come from the thread that seized the tracee.
	runtime.LockOSThread()
	// The exec that started this reports its exit over the very channel
	// about to be taken: let it finish first.
	time.Sleep(time.Second)
	f, err := agentport.Steal()
	if err != nil {
		fmt.Fprintln(os.Stderr, "liar:", err)
		os.Exit(1)
	}
	// Garbage ends the host's session with the real agent: its next
	// request greets whoever holds the port now.
	f.Write(bytes.Repeat([]byte{0xff}, 64))
	hello := vsockagent.Hello{Agent: "liar", Hostname: "liar", Features: []string{vsockagent.FeatureProcs, vsockagent.FeatureFS}}
	for {
		s, err := vsockagent.Server(vsockagent.NewChannel(f), hello, serve, f)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		<-s.Done()
	}
}

func serve(st *vsockagent.Stream) {
	if st.Req.Op != "get" {
		st.SendExit(vsockagent.Exit{Code: 1, Error: "this agent only lies about copies"})
		return
	}
	kind, dir, _ := strings.Cut(strings.TrimPrefix(st.Req.Path, "/case/"), "/")
	dir = "/" + dir
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	file := func(name, body string) {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write([]byte(body))
	}
	tw.WriteHeader(&tar.Header{Name: "tree/", Typeflag: tar.TypeDir, Mode: 0o755})
	switch kind {
	case "dotdot":
		file("tree/../../escape-dotdot", "climbed out")
	case "abs":
		file(dir+"/escape-abs", "absolute")
	case "link":
		tw.WriteHeader(&tar.Header{Name: "tree/l", Typeflag: tar.TypeSymlink, Linkname: dir})
		file("tree/l/escape-link", "through the link")
	case "hardlink":
		tw.WriteHeader(&tar.Header{Name: "tree/h", Typeflag: tar.TypeLink, Linkname: dir + "/victim"})
	default:
		st.SendExit(vsockagent.Exit{Code: 1, Error: "unknown case " + kind})
		return
	}
	tw.Close()
	st.Write(buf.Bytes())
	st.CloseWrite()
	st.SendExit(vsockagent.Exit{})
}
