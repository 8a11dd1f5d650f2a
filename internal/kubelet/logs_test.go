package kubelet

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLogs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.0.log")
	w, err := openLog(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	now := t0
	w.now = func() time.Time { return now }
	w.stream("stdout").Write([]byte("one\ntwo\npart"))
	now = t0.Add(time.Minute)
	w.stream("stderr").Write([]byte("ial\nthree\n"))
	w.Close()
	read := func(o LogOptions) string {
		var b bytes.Buffer
		if err := readLog(context.Background(), path, o, closed, &b); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	if got := read(LogOptions{}); got != "one\ntwo\npartial\nthree\n" {
		t.Errorf("all: %q", got)
	}
	if got := read(LogOptions{Tail: 2}); got != "partial\nthree\n" {
		t.Errorf("tail 2: %q", got)
	}
	if got := read(LogOptions{Since: t0.Add(30 * time.Second)}); got != "ial\nthree\n" {
		t.Errorf("since: %q", got)
	}
	if got := read(LogOptions{LimitBytes: 5}); got != "one\nt" {
		t.Errorf("limit: %q", got)
	}
	if got := read(LogOptions{Tail: 1, Timestamps: true}); got != t0.Add(time.Minute).Format(time.RFC3339Nano)+" three\n" {
		t.Errorf("timestamps: %q", got)
	}
}

func TestLogsFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.0.log")
	done := make(chan struct{})
	var b syncBuffer
	errc := make(chan error, 1)
	go func() { errc <- readLog(context.Background(), path, LogOptions{Follow: true}, done, &b) }()
	time.Sleep(300 * time.Millisecond) // the file does not exist yet
	w, err := openLog(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.stream("stdout").Write([]byte("first\n"))
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(b.String(), "first") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	w.stream("stdout").Write([]byte("last\n"))
	w.Close()
	close(done)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if b.String() != "first\nlast\n" {
		t.Errorf("followed %q", b.String())
	}
}

func TestLogCut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.0.log")
	w, err := openLog(path, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		w.stream("stdout").Write([]byte(strings.Repeat("x", 50) + "\n"))
	}
	w.stream("stdout").Write([]byte("the end\n"))
	w.Close()
	var b bytes.Buffer
	readLog(context.Background(), path, LogOptions{}, closed, &b)
	if b.Len() > 4096 || !strings.HasSuffix(b.String(), "the end\n") {
		t.Errorf("cut log: %d bytes, ends %q", b.Len(), b.String()[max(0, b.Len()-20):])
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
