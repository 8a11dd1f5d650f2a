// This file is the state machine: every state a VM is in, the events
// that move it, and the transitions allowed between them.

package vm

import (
	"errors"
	"fmt"
)

// State is where a VM is in its life. The string values are the API's.
type State string

const (
	Created  State = "created"  // disks made, never started
	Starting State = "starting" // VMM launched, waiting for the agent
	Running  State = "running"  // the agent said ready
	Paused   State = "paused"   // frozen by the user: the VMM runs, the guest does not
	Stopping State = "stopping" // asked to shut down
	Stopped  State = "stopped"  // no VMM process
	Error    State = "error"    // failed to start or died; can be started again
)

// Event moves a VM from one state to another.
type Event string

const (
	EvStart   Event = "start"   // the user starts it
	EvReady   Event = "ready"   // the agent announced readiness
	EvFail    Event = "fail"    // start failed or timed out
	EvStop    Event = "stop"    // the user stops it
	EvExited  Event = "exited"  // the VMM process is gone
	EvKill    Event = "kill"    // the user kills it
	EvRecover Event = "recover" // the daemon found its process alive after a restart
	EvPause   Event = "pause"   // the user freezes the guest
	EvResume  Event = "resume"  // the user thaws it
	EvCrash   Event = "crash"   // the VMM was killed for what the VM did (out of memory)
)

// ErrInvalidState means an operation does not apply to the VM's state.
var ErrInvalidState = errors.New("invalid state")

var transitions = map[State]map[Event]State{
	Created:  {EvStart: Starting},
	Starting: {EvReady: Running, EvFail: Error, EvExited: Error, EvKill: Stopped, EvStop: Stopping},
	Running:  {EvStop: Stopping, EvExited: Stopped, EvKill: Stopped, EvRecover: Running, EvPause: Paused, EvCrash: Error},
	// A paused VM is stopped by thawing it first, so that its guest can
	// sync and power off.
	Paused:   {EvResume: Running, EvStop: Stopping, EvExited: Stopped, EvKill: Stopped, EvRecover: Paused, EvCrash: Error},
	Stopping: {EvExited: Stopped, EvKill: Stopped, EvRecover: Stopping},
	Stopped:  {EvStart: Starting},
	Error:    {EvStart: Starting, EvKill: Error, EvExited: Error},
}

// Next returns the state after ev, or ErrInvalidState with a message a
// user can act on.
func Next(s State, ev Event) (State, error) {
	if to, ok := transitions[s][ev]; ok {
		return to, nil
	}
	hint := ""
	switch ev {
	case EvStart:
		hint = ": it is already " + string(s)
	case EvStop, EvKill:
		hint = ": it is not running"
	case EvPause:
		hint = ": only a running VM can be paused"
	case EvResume:
		hint = ": it is not paused"
	}
	return s, fmt.Errorf("%w: cannot %s a VM that is %s%s", ErrInvalidState, ev, s, hint)
}

// Live reports whether a VMM process should exist in state s.
func (s State) Live() bool { return s == Starting || s == Running || s == Paused || s == Stopping }
