// Package bounded puts a deadline on calls that have none of their own
// (wgctrl's UAPI and genetlink calls, nftables batches). A dependency
// that stops answering must cost the caller an error after a known time,
// not a goroutine stuck forever: the reconciler, the status socket and
// shutdown all wait on these calls.
package bounded

import (
	"errors"
	"fmt"
	"time"
)

// ErrTimeout is returned when a call did not finish in time.
var ErrTimeout = errors.New("did not answer in time")

// Gate runs calls with a deadline. A call that times out keeps running
// in the background until it returns; at most Slots calls exist at once.
// A new call waits for a slot within its own deadline and fails with
// ErrTimeout if none frees up, so stuck calls never pile up goroutines
// and no caller waits longer than the timeout.
type Gate struct {
	timeout time.Duration
	slots   chan struct{}
}

// NewGate returns a gate giving each call timeout, with slots calls in
// flight at most.
func NewGate(timeout time.Duration, slots int) *Gate {
	return &Gate{timeout: timeout, slots: make(chan struct{}, slots)}
}

// Do runs fn within the gate's deadline; what names the call in errors.
func (g *Gate) Do(what string, fn func() error) error {
	deadline := time.NewTimer(g.timeout)
	defer deadline.Stop()
	select {
	case g.slots <- struct{}{}:
	case <-deadline.C:
		return fmt.Errorf("%s: %w (earlier calls are still waiting)", what, ErrTimeout)
	}
	done := make(chan error, 1)
	go func() {
		defer func() { <-g.slots }()
		done <- fn()
	}()
	select {
	case err := <-done:
		return err
	case <-deadline.C:
		return fmt.Errorf("%s: %w (%s)", what, ErrTimeout, g.timeout)
	}
}
