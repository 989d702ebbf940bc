package cluster

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestMemberlistProfile(t *testing.T) {
	for _, tc := range []struct {
		profile                    string
		override                   time.Duration
		probe, timeout, gossipEach time.Duration
	}{
		{"lan", 0, time.Second, 500 * time.Millisecond, 200 * time.Millisecond},
		{"", 0, time.Second, 500 * time.Millisecond, 200 * time.Millisecond},
		{"wan", 0, 5 * time.Second, 3 * time.Second, 500 * time.Millisecond},
		{"local", 0, time.Second, 200 * time.Millisecond, 100 * time.Millisecond},
		// The probe timeout must stay below a shortened interval.
		{"lan", 400 * time.Millisecond, 400 * time.Millisecond, 200 * time.Millisecond, 200 * time.Millisecond},
		{"lan", 3 * time.Second, 3 * time.Second, 500 * time.Millisecond, 200 * time.Millisecond},
	} {
		ml := memberlistProfile(tc.profile, tc.override)
		if ml.ProbeInterval != tc.probe || ml.ProbeTimeout != tc.timeout || ml.GossipInterval != tc.gossipEach {
			t.Errorf("%q with probe_interval %s: probe %s timeout %s gossip %s; want %s %s %s", tc.profile, tc.override,
				ml.ProbeInterval, ml.ProbeTimeout, ml.GossipInterval, tc.probe, tc.timeout, tc.gossipEach)
		}
	}
}

// A leave intent only moves serf's clock; the reconciler must still hear
// of it, once when the clock moves and once more after the member's
// status has caught up, and never while nothing changes.
func TestKickOnClockChange(t *testing.T) {
	var clock, kicks atomic.Uint64
	clock.Store(7)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	// Unbuffered: a send returns only once the loop has taken the tick,
	// and the next send only once it has handled it, so the count read
	// after settle is exact however loaded the machine is.
	tick := make(chan time.Time)
	go func() {
		kickOnClockChange(ctx, clock.Load, tick, func() { kicks.Add(1) })
		close(done)
	}()
	defer func() { cancel(); <-done }()

	settle := func() { // 30 polls, and one more so the last is handled
		for range 31 {
			tick <- time.Time{}
		}
	}
	settle()
	if n := kicks.Load(); n != 0 {
		t.Fatalf("%d kicks with a still clock, want 0", n)
	}
	clock.Store(8)
	settle()
	if n := kicks.Load(); n != 2 {
		t.Fatalf("%d kicks after one clock change, want 2 (the change and the poll after it)", n)
	}
	clock.Store(9)
	settle()
	clock.Store(10)
	settle()
	if n := kicks.Load(); n != 6 {
		t.Fatalf("%d kicks after three clock changes, want 6", n)
	}
}
