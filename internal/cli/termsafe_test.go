package cli

import (
	"strings"
	"testing"
)

func TestSafeText(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "sshd: root@pts/0\tok\n", "sshd: root@pts/0\tok\n"},
		{"utf-8", "café ✓ 日本", "café ✓ 日本"},
		{"colour", "\x1b[0;32m  OK  \x1b[0m Started x", "  OK   Started x"},
		{"window title (OSC, BEL)", "a\x1b]0;pwned\x07b", "ab"},
		{"window title (OSC, ST)", "a\x1b]2;pwned\x1b\\b", "ab"},
		{"clear screen and home", "\x1b[2J\x1b[Hx", "x"},
		{"DCS string", "a\x1bPq#0;2;0;0;0\x1b\\b", "ab"},
		{"two-byte sequence", "a\x1bcb", "ab"},
		{"serial line end", "line\r\n", "line\n"},
		{"lone carriage return", "100%\rdone", `100%\rdone`},
		{"bell and backspace", "a\x07b\x08c", `a\x07b\x08c`},
		{"DEL", "a\x7f", `a\x7f`},
		{"C1 CSI as UTF-8", "a\u009b2Jb", `a\u009b2Jb`},
		{"invalid UTF-8", "a\xffb\x9b", `a\xffb\x9b`},
		{"NUL", "a\x00b", `a\x00b`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := safeText(tc.in); got != tc.want {
				t.Errorf("safeText(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestSafeWriterSplits: sequences, line ends and runes split across
// writes (as a followed console delivers them) come out as in one piece.
func TestSafeWriterSplits(t *testing.T) {
	in := "ok \x1b]0;title\x07 \x1b[1;31mred\x1b[0m café\r\n日本\rx\x01"
	want := safeText(in)
	for cut := 1; cut < len(in); cut++ {
		var b strings.Builder
		w := newSafeWriter(&b)
		w.Write([]byte(in[:cut]))
		w.Write([]byte(in[cut:]))
		w.Flush()
		if b.String() != want {
			t.Fatalf("split at %d: %q, want %q", cut, b.String(), want)
		}
	}
	for _, c := range want {
		if c == 0x1b || c < 0x20 && c != '\n' && c != '\t' {
			t.Fatalf("a control character got through: %q", want)
		}
	}
}
