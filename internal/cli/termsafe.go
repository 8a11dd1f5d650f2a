package cli

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// This file keeps text that comes from a guest from driving the user's
// terminal. A guest controls its process names, its console and the
// error text that quotes it; written raw, an escape sequence in them can
// retitle the window, rewrite the screen, or on some terminals answer
// back into the shell. What the user reads instead: printable text as
// is, newlines and tabs, other control characters as \xHH (or \r, \e),
// and terminal sequences (CSI such as colours, OSC such as titles)
// dropped whole.

// safeText is s made safe to print on a terminal (see above).
func safeText(s string) string {
	var b strings.Builder
	w := newSafeWriter(&b)
	io.WriteString(w, s)
	w.Flush()
	return b.String()
}

// safeWriter is an io.Writer that passes text on made safe to print on a
// terminal. It keeps state across writes: a sequence or a UTF-8 rune may
// be split between two. Flush writes what an unfinished rune holds.
type safeWriter struct {
	w       io.Writer
	state   int
	pending []byte // an incomplete UTF-8 rune at the end of the last write
	cr      bool   // a \r not yet known to be the start of \r\n
}

const (
	stText = iota
	stEsc  // after ESC
	stCSI  // inside ESC [ … final
	stOSC  // inside ESC ] … BEL or ESC \
	stOSCEsc
	stStr // inside ESC P, X, ^ or _ … ESC \ (DCS and kin)
	stStrEsc
)

func newSafeWriter(w io.Writer) *safeWriter { return &safeWriter{w: w} }

// Write implements io.Writer; it reports all of p written when the
// underlying writer took what p became.
func (s *safeWriter) Write(p []byte) (int, error) {
	var out []byte
	in := append(s.pending, p...)
	s.pending = nil
	for i := 0; i < len(in); {
		c := in[i]
		switch s.state {
		case stEsc:
			switch c {
			case '[':
				s.state = stCSI
			case ']':
				s.state = stOSC
			case 'P', 'X', '^', '_':
				s.state = stStr
			default:
				s.state = stText // a two-byte sequence: dropped
			}
			i++
			continue
		case stCSI:
			if c >= 0x40 && c <= 0x7e {
				s.state = stText
			}
			i++
			continue
		case stOSC, stStr:
			switch {
			case c == 0x07 && s.state == stOSC:
				s.state = stText
			case c == 0x1b:
				s.state++ // stOSCEsc or stStrEsc
			}
			i++
			continue
		case stOSCEsc, stStrEsc:
			if c == '\\' {
				s.state = stText
			} else {
				s.state-- // back inside the string
			}
			i++
			continue
		}
		if s.cr {
			s.cr = false
			if c != '\n' {
				out = append(out, `\r`...)
			}
		}
		switch {
		case c == '\n' || c == '\t' || c >= 0x20 && c < 0x7f:
			out = append(out, c)
			i++
		case c == '\r':
			s.cr = true // \r\n is a line end; a lone \r is shown
			i++
		case c == 0x1b:
			s.state = stEsc
			i++
		case c < 0x20 || c == 0x7f:
			out = fmt.Appendf(out, `\x%02x`, c)
			i++
		default:
			if !utf8.FullRune(in[i:]) {
				s.pending = append([]byte(nil), in[i:]...)
				i = len(in)
				continue
			}
			r, n := utf8.DecodeRune(in[i:])
			switch {
			case r == utf8.RuneError && n == 1:
				out = fmt.Appendf(out, `\x%02x`, c)
			case r >= 0x80 && r <= 0x9f:
				// C1 controls (a CSI of its own is U+009B).
				out = fmt.Appendf(out, `\u%04x`, r)
			default:
				out = append(out, in[i:i+n]...)
			}
			i += n
		}
	}
	if len(out) > 0 {
		if _, err := s.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes what the last Write held back: an unfinished rune (as
// bytes escaped) and a trailing lone \r.
func (s *safeWriter) Flush() error {
	var out []byte
	if s.cr {
		out = append(out, `\r`...)
		s.cr = false
	}
	for _, c := range s.pending {
		out = fmt.Appendf(out, `\x%02x`, c)
	}
	s.pending = nil
	if len(out) == 0 {
		return nil
	}
	_, err := s.w.Write(out)
	return err
}
