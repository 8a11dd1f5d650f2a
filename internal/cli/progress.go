package cli

import (
	"fmt"
	"io"
	"sync"
	"time"

	"banger/internal/api"
)

// pullProgress renders pull events: one rewritten status line on a
// terminal, one line per stage or finished layer otherwise.
type pullProgress struct {
	w      io.Writer
	ref    string
	tty    bool
	stage  string
	layers map[int]*layerState
	nLayer int
	last   time.Time
	drawn  bool
	// size is the source's size for an import, 0 when unknown.
	size int64
}

type layerState struct {
	cur, total int64
	cached     bool
	done       bool
}

func newPullProgress(w io.Writer, ref string, tty bool) *pullProgress {
	return &pullProgress{w: w, ref: ref, tty: tty, layers: map[int]*layerState{}}
}

var stageText = map[string]string{
	"resolve":  "resolving",
	"receive":  "reading",
	"build":    "building",
	"download": "downloading",
	"flatten":  "flattening layers",
	"ext4":     "building ext4",
	"inject":   "injecting guest agents",
	"done":     "done",
}

func (p *pullProgress) event(ev api.Event) {
	if ev.Type == api.EventResult && ev.Message != "" {
		// What the daemon says of the result ("image is up to date"):
		// a pull that had nothing to do shows no stage to say it.
		p.finish()
		p.drawn = false
		fmt.Fprintf(p.w, "%s: %s\n", p.ref, ev.Message)
		return
	}
	if ev.Type != api.EventProgress {
		return
	}
	if ev.Layers > 0 {
		p.nLayer = ev.Layers
	}
	if ev.Stage == "download" && ev.Layer > 0 {
		l := p.layers[ev.Layer]
		if l == nil {
			l = &layerState{}
			p.layers[ev.Layer] = l
		}
		l.cur, l.total, l.cached = ev.Current, ev.Total, ev.Cached
		if !p.tty && !l.done && (ev.Cached || (ev.Total > 0 && ev.Current >= ev.Total)) {
			l.done = true
			how := "downloaded"
			if ev.Cached {
				how = "cached"
			}
			fmt.Fprintf(p.w, "layer %d/%d %s %s (%s)\n", ev.Layer, ev.Layers, shortDigest(ev.Digest), how, humanBytes(ev.Total))
		}
	}
	changed := ev.Stage != p.stage
	p.stage = ev.Stage
	if !p.tty {
		if changed && ev.Stage != "download" {
			line := stageText[ev.Stage]
			if ev.Stage == "resolve" {
				line += " " + p.ref
			}
			if ev.Message != "" && ev.Stage != "resolve" {
				line += " (" + ev.Message + ")"
			}
			fmt.Fprintln(p.w, line)
		}
		return
	}
	if !changed && time.Since(p.last) < 80*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.draw(ev)
}

func (p *pullProgress) draw(ev api.Event) {
	var line string
	switch p.stage {
	case "download":
		var cur, total int64
		done := 0
		for _, l := range p.layers {
			cur += l.cur
			total += l.total
			if l.cached || (l.total > 0 && l.cur >= l.total) {
				done++
			}
		}
		line = fmt.Sprintf("%s: downloading %d/%d layers  %s / %s", p.ref, done, p.nLayer, humanBytes(cur), humanBytes(total))
	case "flatten":
		line = fmt.Sprintf("%s: flattening layer %d/%d", p.ref, ev.Layer, ev.Layers)
		if ev.Current > 0 { // a tarball flattened while it is read
			line = fmt.Sprintf("%s: flattening %s", p.ref, humanBytes(ev.Current))
			if p.size > 0 {
				line += " / " + humanBytes(p.size)
			}
		}
	case "receive":
		line = fmt.Sprintf("%s: reading %s", p.ref, humanBytes(ev.Current))
		if p.size > 0 {
			line += " / " + humanBytes(p.size)
		}
	case "build":
		line = fmt.Sprintf("%s: %s", p.ref, ev.Message)
	default:
		line = p.ref + ": " + stageText[p.stage]
		if ev.Message != "" && p.stage == "ext4" {
			line += " (" + ev.Message + ")"
		}
	}
	fmt.Fprintf(p.w, "\r\033[K%s", line)
	p.drawn = true
}

// finish ends the status line so later output starts on a clean line.
func (p *pullProgress) finish() {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// vmProgress is a VM's start on a terminal: one live line with its
// stage and the time so far, redrawn as the time passes.
type vmProgress struct {
	w     io.Writer
	name  string
	began time.Time
	mu    sync.Mutex
	stage string
	done  chan struct{}
	wg    sync.WaitGroup
}

var vmStageText = map[string]string{
	"disk":     "making its disk",
	"network":  "connecting its network",
	"vmm":      "starting the VMM",
	"boot":     "booting, waiting for its agent",
	"restore":  "restoring a snapshot",
	"identity": "giving the restored guest its own identity",
	"template": "saving a warm template for the next start",
}

func newVMProgress(w io.Writer, name string) *vmProgress {
	p := &vmProgress{w: w, name: name, began: time.Now(), stage: "starting", done: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			p.draw()
			select {
			case <-p.done:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *vmProgress) event(ev api.Event) {
	if ev.Type != api.EventProgress {
		return
	}
	p.mu.Lock()
	if t, ok := vmStageText[ev.Stage]; ok {
		p.stage = t
	} else {
		p.stage = ev.Stage
	}
	p.mu.Unlock()
	p.draw()
}

func (p *vmProgress) draw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "\r\033[K%s: %s… %.1fs", p.name, p.stage, time.Since(p.began).Seconds())
}

// finish clears the live line; a nil progress does nothing.
func (p *vmProgress) finish() {
	if p == nil {
		return
	}
	close(p.done)
	p.wg.Wait()
	fmt.Fprint(p.w, "\r\033[K")
}
