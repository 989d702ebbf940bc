package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/meshd/meshd/internal/clustertest"
	"github.com/meshd/meshd/mesh"
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

// Hosts started together: c's seed b is not up yet, and a joins c. c is
// then not alone, but it never reached a seed, so it must keep trying b,
// or a and c would stay a cluster of their own that never meets b.
func TestJoinKeepsReachingForASeedWhenOthersJoinedFirst(t *testing.T) {
	pool := newTestPool(t, func(c *memberlist.Config) {
		c.ProbeInterval, c.ProbeTimeout = 100*time.Millisecond, 50*time.Millisecond
	}, "a", "b", "c")
	start := pool.start
	c := start("c", "b")
	a := start("a", "c")
	knows := func(m *Membership, name string) bool {
		for _, mem := range m.Members() {
			if mem.Name == name && mem.Status == mesh.StatusAlive {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(5 * time.Second)
	for !knows(c, "a") {
		if time.Now().After(deadline) {
			t.Fatal("a never joined c")
		}
		time.Sleep(20 * time.Millisecond)
	}
	start("b")
	deadline = time.Now().Add(20 * time.Second) // c's retries back off to at most 10 s
	for !knows(a, "b") || !knows(c, "b") {
		if time.Now().After(deadline) {
			t.Fatalf("b started after a joined c, and after 20 s a knows b: %v, c knows b: %v; a and c stayed a cluster of their own", knows(a, "b"), knows(c, "b"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Merged, c stops joining: no stream opened for longer than its
	// longest backoff (push/pull runs every 30 s here).
	time.Sleep(time.Second)
	dials := pool.tr["c"].Dials()
	time.Sleep(maxJoinBackoff + 2*time.Second)
	if n := pool.tr["c"].Dials() - dials; n > 0 {
		t.Errorf("c opened %d streams after it merged: it keeps joining", n)
	}
}

// syncBuffer is a log sink safe for serf's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A host that never finds another member says so at warn level, naming
// the seeds it tries and why they fail, instead of staying silent.
func TestAHostThatNeverJoinsWarns(t *testing.T) {
	network := clustertest.NewNetwork()
	seed := network.NewTransport("seed") // never started: connections are refused
	tr := network.NewTransport("lonely")
	key := make([]byte, 32)
	rand.Read(key)
	var logs syncBuffer
	m, err := Join(MembershipConfig{NodeName: "lonely", GossipKey: key, Tags: map[string]string{}, Join: []string{seed.Addr()},
		Log:  slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Tune: func(c *serf.Config) { c.MemberlistConfig.Transport = tr }}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer m.serf.Shutdown()
	deadline := time.Now().Add(25 * time.Second) // the first warning comes after 10 s alone
	for !strings.Contains(logs.String(), "still alone") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning after 25 s alone; log:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	out := logs.String()
	if !strings.Contains(out, seed.Addr()) || !strings.Contains(out, "refused") {
		t.Errorf("the warning does not name the seed %s and the last error:\n%s", seed.Addr(), out)
	}
}

// testPool is members in-process on one clustertest network, with one
// gossip key and the given memberlist timers.
type testPool struct {
	t       *testing.T
	network *clustertest.Network
	key     []byte
	tr      map[string]*clustertest.Transport
	tune    func(*memberlist.Config)
}

func newTestPool(t *testing.T, tune func(*memberlist.Config), names ...string) *testPool {
	p := &testPool{t: t, network: clustertest.NewNetwork(), key: make([]byte, 32), tr: map[string]*clustertest.Transport{}, tune: tune}
	rand.Read(p.key)
	for _, n := range names {
		p.tr[n] = p.network.NewTransport(n)
	}
	return p
}

// start joins name to the pool through seeds; the test's end shuts it down.
func (p *testPool) start(name string, seeds ...string) *Membership {
	var join []string
	for _, s := range seeds {
		join = append(join, p.tr[s].Addr())
	}
	m, err := Join(MembershipConfig{NodeName: name, GossipKey: p.key, Tags: map[string]string{}, Join: join,
		Log: slog.New(slog.DiscardHandler),
		Tune: func(c *serf.Config) {
			c.MemberlistConfig.Transport = p.tr[name]
			c.MemberlistConfig.GossipInterval = 20 * time.Millisecond
			p.tune(c.MemberlistConfig)
		}}, func() {})
	if err != nil {
		p.t.Fatalf("%s: %v", name, err)
	}
	p.t.Cleanup(func() { m.serf.Shutdown() })
	return m
}
