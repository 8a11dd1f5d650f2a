package vm

import (
	"errors"
	"testing"
)

// Every (state, event) pair: the allowed ones and their target, and that
// every other pair is refused with ErrInvalidState.
func TestTransitions(t *testing.T) {
	states := []State{Created, Starting, Running, Paused, Stopping, Stopped, Error}
	events := []Event{EvStart, EvReady, EvFail, EvStop, EvExited, EvKill, EvRecover, EvPause, EvResume, EvCrash}
	allowed := map[[2]string]State{
		{"created", "start"}:    Starting,
		{"starting", "ready"}:   Running,
		{"starting", "fail"}:    Error,
		{"starting", "exited"}:  Error,
		{"starting", "kill"}:    Stopped,
		{"starting", "stop"}:    Stopping,
		{"running", "stop"}:     Stopping,
		{"running", "exited"}:   Stopped,
		{"running", "kill"}:     Stopped,
		{"running", "recover"}:  Running,
		{"running", "pause"}:    Paused,
		{"running", "crash"}:    Error,
		{"paused", "resume"}:    Running,
		{"paused", "stop"}:      Stopping,
		{"paused", "exited"}:    Stopped,
		{"paused", "kill"}:      Stopped,
		{"paused", "recover"}:   Paused,
		{"paused", "crash"}:     Error,
		{"stopping", "exited"}:  Stopped,
		{"stopping", "kill"}:    Stopped,
		{"stopping", "recover"}: Stopping,
		{"stopped", "start"}:    Starting,
		{"error", "start"}:      Starting,
		{"error", "kill"}:       Error,
		{"error", "exited"}:     Error,
	}
	for _, s := range states {
		for _, ev := range events {
			got, err := Next(s, ev)
			want, ok := allowed[[2]string{string(s), string(ev)}]
			switch {
			case ok && (err != nil || got != want):
				t.Errorf("%s --%s--> %s, %v; want %s", s, ev, got, err, want)
			case !ok && !errors.Is(err, ErrInvalidState):
				t.Errorf("%s --%s--> %s allowed; want ErrInvalidState", s, ev, got)
			case !ok && got != s:
				t.Errorf("refused %s --%s--> changed the state to %s", s, ev, got)
			}
		}
	}
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
