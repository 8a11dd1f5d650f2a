package filesync

import (
	"testing"
)

func TestPlan(t *testing.T) {
	f := func(p string, mtime int64) Entry {
		return Entry{Path: p, Kind: KindFile, Mode: 0o644, Size: 1, Mtime: mtime}
	}
	d := func(p string) Entry { return Entry{Path: p, Kind: KindDir, Mode: 0o755} }
	m := func(es ...Entry) map[string]Entry {
		out := map[string]Entry{}
		for _, e := range es {
			out[e.Path] = e
		}
		return out
	}
	cases := []struct {
		name              string
		host, guest, base map[string]Entry
		ro                bool
		want              map[string]Action
		conflicts         int
	}{
		{name: "first meeting: each side's own goes over, a difference goes the newer way",
			host: m(f("a", 1), f("both", 5)), guest: m(f("b", 1), f("both", 9)),
			want: map[string]Action{"a": ToGuest, "b": ToHost, "both": ToHost}},
		{name: "equal is agreed",
			host: m(f("a", 1)), guest: m(f("a", 1)), want: map[string]Action{"a": Agreed}},
		{name: "deleted while apart goes the way of the deletion",
			host: m(f("kept-h", 1)), guest: m(f("kept-g", 1)), base: m(f("kept-h", 1), f("kept-g", 1)),
			want: map[string]Action{"kept-h": DelHost, "kept-g": DelGuest}},
		{name: "a deletion loses to a change",
			host: m(f("a", 2)), guest: m(), base: m(f("a", 1)),
			want: map[string]Action{"a": ToGuest}},
		{name: "one side changed",
			host: m(f("h", 2), f("g", 1)), guest: m(f("h", 1), f("g", 2)), base: m(f("h", 1), f("g", 1)),
			want: map[string]Action{"h": ToGuest, "g": ToHost}},
		{name: "both changed: last writer wins, the host on a tie",
			host: m(f("a", 3), f("b", 2), f("c", 4)), guest: m(f("a", 2), f("b", 3), f("c", 4).withSize(2)),
			base: m(f("a", 1), f("b", 1), f("c", 1)),
			want: map[string]Action{"a": ToGuest, "b": ToHost, "c": ToGuest}, conflicts: 3},
		{name: "a directory deleted on one side keeps what the other added in it",
			host: m(d("dir"), f("dir/old", 1), f("dir/new", 5)), guest: m(), base: m(d("dir"), f("dir/old", 1)),
			want: map[string]Action{"dir": ToGuest, "dir/old": DelHost, "dir/new": ToGuest}},
		{name: "read-only: the guest becomes the host's copy",
			host: m(f("a", 1), f("b", 1)), guest: m(f("a", 9), f("c", 1)), ro: true,
			want: map[string]Action{"a": ToGuest, "b": ToGuest, "c": DelGuest}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			steps := Plan(c.host, c.guest, c.base, c.ro)
			got := map[string]Action{}
			n := 0
			for i, s := range steps {
				got[s.Path] = s.Action
				if s.Conflict {
					n++
				}
				if i > 0 && steps[i-1].Path >= s.Path {
					t.Errorf("steps not sorted: %q before %q", steps[i-1].Path, s.Path)
				}
			}
			if len(got) != len(c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
			for p, a := range c.want {
				if got[p] != a {
					t.Errorf("%s: got action %d, want %d", p, got[p], a)
				}
			}
			if n != c.conflicts {
				t.Errorf("%d conflicts, want %d", n, c.conflicts)
			}
		})
	}
}

func (e Entry) withSize(n int64) Entry { e.Size = n; return e }
