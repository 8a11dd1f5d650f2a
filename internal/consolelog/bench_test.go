package consolelog

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// rereadContains is how bangerd waited for the ready line before this
// package: at every poll, read the log from the launch offset to its end
// and search all of it.
func rereadContains(path string, offset int64, needle []byte) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	f.Seek(offset, io.SeekStart)
	b, _ := io.ReadAll(f)
	return bytes.Contains(b, needle)
}

// BenchmarkReadyWait waits for the ready line in a boot that writes
// 4 MiB to the console in 16 KiB steps, one poll per step, the line last
// (the writes themselves are not timed): re-reading since the launch
// offset at each poll, the old way, against a Follower feeding a Scanner.
func BenchmarkReadyWait(b *testing.B) {
	const size, step = 4 << 20, 16 << 10
	data := append(bytes.Repeat([]byte("[ 1.000000] chatty boot\r\n"), size/25), needle...)
	run := func(b *testing.B, poll func(path string) func() bool) {
		for b.Loop() {
			b.StopTimer()
			path := filepath.Join(b.TempDir(), "console.log")
			f, _ := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			found := poll(path)
			b.StartTimer()
			for rest := data; ; {
				if found() {
					break
				}
				b.StopTimer()
				n := min(step, len(rest))
				f.Write(rest[:n])
				rest = rest[n:]
				b.StartTimer()
			}
			f.Close()
		}
	}
	b.Run("reread", func(b *testing.B) {
		run(b, func(path string) func() bool {
			return func() bool { return rereadContains(path, 0, []byte(needle)) }
		})
	})
	b.Run("incremental", func(b *testing.B) {
		run(b, func(path string) func() bool {
			fl, s := Follow(path, false), NewScanner(needle)
			b.Cleanup(func() { fl.Close() })
			buf := make([]byte, 32<<10)
			return func() bool {
				io.CopyBuffer(s, fl, buf)
				return s.Found()
			}
		})
	})
}

// BenchmarkIdlePoll is one poll of a boot that has written 4 MiB and
// nothing since: what the wait costs every 20 ms while a guest is quiet.
func BenchmarkIdlePoll(b *testing.B) {
	path := filepath.Join(b.TempDir(), "console.log")
	os.WriteFile(path, bytes.Repeat([]byte("x"), 4<<20), 0o600)
	b.Run("reread", func(b *testing.B) {
		for b.Loop() {
			rereadContains(path, 0, []byte(needle))
		}
	})
	b.Run("incremental", func(b *testing.B) {
		fl, s := Follow(path, true), NewScanner(needle)
		defer fl.Close()
		buf := make([]byte, 32<<10)
		io.CopyBuffer(s, fl, buf)
		for b.Loop() {
			io.CopyBuffer(s, fl, buf)
		}
	})
}
