package filesync

import (
	"slices"
)

// Action is what the initial sync does with one path.
type Action int

const (
	Agreed   Action = iota // the same on both sides
	ToGuest                // the host's copy goes to the guest
	ToHost                 // the guest's copy goes to the host
	DelHost                // deleted in the guest while apart: delete on the host
	DelGuest               // deleted on the host while apart: delete in the guest
)

// Step is one path's action; Conflict says both sides had changed it
// since they last agreed (the later modification won).
type Step struct {
	Path     string
	Action   Action
	Conflict bool
}

// Plan is the initial three-way sync: host and guest are the two trees
// now, base what both had when they last agreed (empty the first time,
// when nothing is deleted and a path on both sides that differs goes
// the way of the later modification). A read-only mount makes the guest
// a copy of the host. Steps come sorted by path, parents first.
func Plan(host, guest, base map[string]Entry, ro bool) []Step {
	paths := make([]string, 0, len(host)+len(guest))
	for p := range host {
		paths = append(paths, p)
	}
	for p := range guest {
		if _, ok := host[p]; !ok {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	steps := make([]Step, 0, len(paths))
	for _, p := range paths {
		h, inH := host[p]
		g, inG := guest[p]
		b, inB := base[p]
		s := Step{Path: p}
		switch {
		case inH && inG && same(h, g):
			s.Action = Agreed
		case ro && inH:
			s.Action = ToGuest
		case ro:
			s.Action = DelGuest
		case inH && !inG:
			s.Action = ToGuest
			if inB && same(b, h) {
				s.Action = DelHost
			}
		case inG && !inH:
			s.Action = ToHost
			if inB && same(b, g) {
				s.Action = DelGuest
			}
		case inB && same(b, h):
			s.Action = ToHost
		case inB && same(b, g):
			s.Action = ToGuest
		default:
			s.Action, s.Conflict = ToGuest, inB
			if g.Kind != KindDir && h.Kind != KindDir && g.Mtime > h.Mtime {
				s.Action = ToHost
			}
			if h.Kind == KindDir && g.Kind == KindDir {
				s.Conflict = false // only the mode differs: the host's stands
			}
		}
		steps = append(steps, s)
	}
	keepParents(steps)
	return steps
}

// keepParents turns the deletion of a directory that still has a path
// under it to keep into a copy of the directory the other way: what one
// side added under a directory the other removed survives.
func keepParents(steps []Step) {
	kept := map[string]bool{}
	for i := len(steps) - 1; i >= 0; i-- {
		s := &steps[i]
		if (s.Action == DelHost || s.Action == DelGuest) && kept[s.Path] {
			if s.Action == DelHost {
				s.Action = ToGuest
			} else {
				s.Action = ToHost
			}
		}
		if s.Action != DelHost && s.Action != DelGuest {
			for d := parent(s.Path); d != ""; d = parent(d) {
				kept[d] = true
			}
		}
	}
}

func parent(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return ""
}
