package vm

import (
	"errors"
	"strings"
	"testing"
)

var (
	allStates = []State{Created, Starting, Running, Paused, Stopping, Stopped, Error}
	allEvents = []Event{EvStart, EvReady, EvFail, EvStop, EvExited, EvKill, EvRecover, EvPause, EvResume, EvCrash}
)

// The state machine's promises, each checked over every state and
// event rather than against a copy of its table: what a user may always
// do, what a VMM's exit always means, and how a refusal looks.
func TestStateMachinePromises(t *testing.T) {
	for _, s := range allStates {
		for _, ev := range allEvents {
			to, err := Next(s, ev)
			if err != nil {
				// A refusal is ErrInvalidState, changes nothing, and
				// names what was asked and of what.
				if !errors.Is(err, ErrInvalidState) || to != s || !strings.Contains(err.Error(), "cannot "+string(ev)+" a VM that is "+string(s)) {
					t.Errorf("%s --%s--> refused as %q (state %s)", s, ev, err, to)
				}
				continue
			}
			switch ev {
			case EvStart:
				// Starting launches a VMM, so only a VM without one starts.
				if s.Live() || to != Starting {
					t.Errorf("start of a %s VM went to %s", s, to)
				}
			case EvExited:
				// No VMM, no live state: wherever it was, the VM is now
				// stopped, or in error if it never got ready.
				if to.Live() || (to != Stopped && to != Error) {
					t.Errorf("%s VM whose VMM exited went to %s", s, to)
				}
			case EvCrash:
				// A VMM killed for what its VM did leaves the VM in error,
				// with the reason, whatever it was doing.
				if !s.Live() || to != Error {
					t.Errorf("crash of a %s VM went to %s", s, to)
				}
			case EvKill:
				if to.Live() {
					t.Errorf("kill of a %s VM left it %s", s, to)
				}
			case EvRecover:
				// An adopted VMM keeps the VM where it was.
				if to != s || !s.Live() {
					t.Errorf("recover of a %s VM went to %s", s, to)
				}
			case EvPause, EvResume, EvReady, EvFail, EvStop:
				if !s.Live() {
					t.Errorf("%s of a %s VM (no VMM) allowed", ev, s)
				}
			}
		}
		// Whatever state a VMM is in, the user can end it with kill, and
		// a VM whose VMM is gone can be started.
		if s.Live() {
			if to, err := Next(s, EvKill); err != nil || to != Stopped {
				t.Errorf("kill of a %s VM: %s %v, want stopped", s, to, err)
			}
			if _, err := Next(s, EvExited); err != nil {
				t.Errorf("a %s VM cannot take its VMM's exit: %v", s, err)
			}
		} else if _, err := Next(s, EvStart); err != nil {
			t.Errorf("a %s VM cannot be started: %v", s, err)
		}
	}
	// Pause only what runs, resume only what is paused, each a round trip.
	for _, s := range allStates {
		if to, err := Next(s, EvPause); (err == nil) != (s == Running) || (err == nil && to != Paused) {
			t.Errorf("pause of a %s VM: %s %v", s, to, err)
		}
		if to, err := Next(s, EvResume); (err == nil) != (s == Paused) || (err == nil && to != Running) {
			t.Errorf("resume of a %s VM: %s %v", s, to, err)
		}
	}
	// Every state is reachable from a new VM.
	seen := map[State]bool{Created: true}
	for changed := true; changed; {
		changed = false
		for s := range seen {
			for _, ev := range allEvents {
				if to, err := Next(s, ev); err == nil && !seen[to] {
					seen[to], changed = true, true
				}
			}
		}
	}
	for _, s := range allStates {
		if !seen[s] {
			t.Errorf("state %s cannot be reached from created", s)
		}
	}
	// The hints a user reads.
	if _, err := Next(Running, EvStart); err == nil || err.Error() != "invalid state: cannot start a VM that is running: it is already running" {
		t.Errorf("message: %v", err)
	}
	if _, err := Next(Stopped, EvResume); err == nil || err.Error() != "invalid state: cannot resume a VM that is stopped: it is not paused" {
		t.Errorf("message: %v", err)
	}
}

func TestLive(t *testing.T) {
	for s, want := range map[State]bool{Created: false, Starting: true, Running: true, Paused: true, Stopping: true, Stopped: false, Error: false} {
		if s.Live() != want {
			t.Errorf("%s.Live() = %v", s, !want)
		}
	}
}
