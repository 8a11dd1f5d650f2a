package consolelog

import "bytes"

// Scanner looks for a needle in a stream written to it piece by piece:
// it keeps the last len(needle)-1 bytes of each piece, so a needle split
// across two writes is found too. Its memory is that overlap, however
// long the stream.
type Scanner struct {
	needle  []byte
	overlap []byte
	found   bool
}

// NewScanner returns a Scanner for needle, which must not be empty.
func NewScanner(needle string) *Scanner {
	return &Scanner{needle: []byte(needle), overlap: make([]byte, 0, 2*len(needle))}
}

// Write implements io.Writer; it never fails.
func (s *Scanner) Write(p []byte) (int, error) {
	if s.found {
		return len(p), nil
	}
	k := len(s.needle) - 1
	// Across the seam: the overlap with the start of p.
	seam := append(s.overlap, p[:min(k, len(p))]...)
	if bytes.Contains(seam, s.needle) || bytes.Contains(p, s.needle) {
		s.found = true
		return len(p), nil
	}
	if len(seam) > k {
		seam = seam[len(seam)-k:]
	}
	if len(p) >= k {
		seam = p[len(p)-k:]
	}
	s.overlap = append(s.overlap[:0], seam...)
	return len(p), nil
}

// Found reports whether the needle has been written.
func (s *Scanner) Found() bool { return s.found }

// Recent keeps the last bytes of a stream written to it: the end of a
// boot's console for an error message.
type Recent struct {
	max int
	buf []byte
}

// NewRecent returns a Recent that keeps the last max bytes.
func NewRecent(max int) *Recent { return &Recent{max: max} }

// Write implements io.Writer; it never fails.
func (r *Recent) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= r.max {
		r.buf = append(r.buf[:0], p[len(p)-r.max:]...)
		return n, nil
	}
	if drop := len(r.buf) + len(p) - r.max; drop > 0 {
		r.buf = append(r.buf[:0], r.buf[drop:]...)
	}
	r.buf = append(r.buf, p...)
	return n, nil
}

// Bytes returns the bytes kept, oldest first; they are valid until the
// next Write.
func (r *Recent) Bytes() []byte { return r.buf }
