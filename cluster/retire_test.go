package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/meshd/meshd/mesh"
)

func statusIn(m *Membership, name string) mesh.Status {
	for _, mem := range m.Members() {
		if mem.Name == name {
			return mem.Status
		}
	}
	return "absent"
}

// A member retired while it was cut off misses the leave intent and never
// refutes it: the others hold it as leaving while it is back and alive,
// push/pull after push/pull. Rejoin, which meshd asks of it once its site
// sees it alive, makes it alive everywhere again.
func TestARetiredMemberThatMissedItComesBackByRejoining(t *testing.T) {
	pool := newTestPool(t, func(c *memberlist.Config) {
		// Failure detection slower than the test: only the leave intent
		// can make g leave.
		c.ProbeInterval, c.ProbeTimeout = 3*time.Second, 500*time.Millisecond
		c.PushPullInterval = time.Second
	}, "a", "f", "g")
	network, start := pool.network, pool.start
	g := start("g")
	a := start("a", "g")
	f := start("f", "g")
	waitStatus := func(within time.Duration, want mesh.Status) error {
		deadline := time.Now().Add(within)
		for {
			sa, sf := statusIn(a, "g"), statusIn(f, "g")
			if sa == want && sf == want {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("a sees g %s, f sees g %s; want %s", sa, sf, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := waitStatus(10*time.Second, mesh.StatusAlive); err != nil {
		t.Fatal(err)
	}
	network.Cut("g")
	a.Retire("g")
	if err := waitStatus(5*time.Second, mesh.StatusLeaving); err != nil {
		t.Fatal(err)
	}
	network.Heal("g")
	// Several push/pulls: g is reachable, and still leaving.
	time.Sleep(4 * time.Second)
	if err := waitStatus(0, mesh.StatusLeaving); err != nil {
		t.Logf("serf refuted the missed intent by itself this time: %v", err)
	}
	g.Rejoin()
	if err := waitStatus(10*time.Second, mesh.StatusAlive); err != nil {
		t.Fatalf("after Rejoin: %v", err)
	}
}
