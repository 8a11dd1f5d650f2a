package vsockagent

import (
	"context"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

// benchPair is a client and a server session over a socket pair whose
// server discards each stream's input and answers with exit 0.
func benchPair(b *testing.B) *Session {
	b.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		b.Fatal(err)
	}
	host, guest := fileConn(b, fds[0]), fileConn(b, fds[1])
	srv := make(chan *Session, 1)
	go func() {
		s, _ := Server(NewChannel(guest), Hello{}, func(st *Stream) {
			io.Copy(io.Discard, st)
			st.SendExit(Exit{})
		}, guest)
		srv <- s
	}()
	c, err := Client(NewChannel(host), Hello{}, host)
	if err != nil {
		b.Fatal(err)
	}
	s := <-srv
	b.Cleanup(func() { c.Close(); s.Close() })
	return c
}

// fileConn makes a net.Conn of a socket: pollable, with deadlines, as
// the daemon's agent connections are.
func fileConn(tb testing.TB, fd int) net.Conn {
	tb.Helper()
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// BenchmarkStreamThroughput sends 8 MiB per iteration through one stream.
func BenchmarkStreamThroughput(b *testing.B) {
	c := benchPair(b)
	buf := make([]byte, 8<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		st, err := c.Open(context.Background(), Request{Op: "put"})
		if err != nil {
			b.Fatal(err)
		}
		st.Write(buf)
		st.CloseWrite()
		if _, err := st.Wait(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenClose is one stream's open, end of input and exit.
func BenchmarkOpenClose(b *testing.B) {
	c := benchPair(b)
	for b.Loop() {
		st, err := c.Open(context.Background(), Request{Op: "sync"})
		if err != nil {
			b.Fatal(err)
		}
		st.CloseWrite()
		if _, err := st.Wait(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPing is one ping and its pong.
func BenchmarkPing(b *testing.B) {
	c := benchPair(b)
	for b.Loop() {
		if _, err := c.Ping(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
