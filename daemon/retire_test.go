package daemon

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

// retiringCluster records the members it was told to retire.
type retiringCluster struct {
	*fakeCluster
	mu      sync.Mutex
	retired []string
}

func (r *retiringCluster) Retire(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.retired = append(r.retired, name)
}

func (r *retiringCluster) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.retired
	r.retired = nil
	return out
}

// A gateway whose site pool lost another of the site's gateways tells
// the WAN pool at once, once per failure, and only of its own site's
// gateways that the WAN pool still has alive.
func TestGatewayRetiresAFellowGatewayItsSiteLost(t *testing.T) {
	d, _, _, _ := newTestDaemon(t, 0)
	wan := &retiringCluster{fakeCluster: newFakeCluster()}
	d.wan = wan
	gateway := func(name, site string, status mesh.Status) mesh.Member {
		m := memberN(t, len(name), sliceN(len(name)))
		ann, err := mesh.DecodeTags(m.Tags)
		if err != nil {
			t.Fatal(err)
		}
		ann.Site, ann.Role.Gateway = site, true
		if m.Tags, err = ann.Tags(); err != nil {
			t.Fatal(err)
		}
		m.Name, m.Status = name, status
		return m
	}
	site := d.ann.local().Site
	sitePool := []mesh.Member{gateway("gw-a", site, mesh.StatusFailed), gateway("host-b", site, mesh.StatusFailed)}
	remote := []mesh.Member{
		gateway("gw-a", site, mesh.StatusAlive),
		gateway("gw-far", "elsewhere", mesh.StatusAlive),
		// The WAN pool already knows: nothing to tell.
		gateway("gw-c", site, mesh.StatusFailed),
	}
	sitePool = append(sitePool, gateway("gw-c", site, mesh.StatusFailed), gateway("gw-far", site, mesh.StatusFailed))

	d.retireFellowGateways(sitePool, remote)
	if got := wan.take(); !slices.Equal(got, []string{"gw-a"}) {
		t.Fatalf("retired %v, want [gw-a]: the one of this site the WAN pool has alive", got)
	}
	d.retireFellowGateways(sitePool, remote)
	if got := wan.take(); len(got) != 0 {
		t.Fatalf("retired %v again for the same failure", got)
	}
	// gw-a comes back to its site, then fails again: a new failure.
	sitePool[0].Status = mesh.StatusAlive
	d.retireFellowGateways(sitePool, remote)
	sitePool[0].Status = mesh.StatusFailed
	d.retireFellowGateways(sitePool, remote)
	if got := wan.take(); !slices.Equal(got, []string{"gw-a"}) {
		t.Fatalf("after it came back and failed again, retired %v, want [gw-a]", got)
	}
	// A host that is not a gateway has no WAN pool to tell.
	d.wan = nil
	d.retireFellowGateways(sitePool, remote)
}

// broadcastCounter counts the user events sent into a site pool.
type broadcastCounter struct {
	*fakeCluster
	mu   sync.Mutex
	sent int
}

func (b *broadcastCounter) Broadcast(string, []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sent++
	return nil
}

func (b *broadcastCounter) take() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.sent
	b.sent = 0
	return n
}

// A gateway that takes over relaying relays everything at once and once
// more relaySettle later, when the gateway that relayed before has
// stopped: what that one sent meanwhile no longer stands.
func TestNewRelayerRelaysAgainOnceSettled(t *testing.T) {
	d, _, _, _ := newTestDaemon(t, 0)
	site := &broadcastCounter{fakeCluster: newFakeCluster()}
	d.members = site
	far := memberN(t, 7, sliceN(7))
	ann, err := mesh.DecodeTags(far.Tags)
	if err != nil {
		t.Fatal(err)
	}
	ann.Site, ann.Role.Gateway = "elsewhere", true
	if far.Tags, err = ann.Tags(); err != nil {
		t.Fatal(err)
	}
	d.wan = &retiringCluster{fakeCluster: newFakeCluster()}
	remote := []mesh.Member{far}
	if err := d.relayDirectory(nil, remote); err != nil {
		t.Fatal(err)
	}
	if n := site.take(); n != 1 {
		t.Fatalf("taking over relayed %d announcements, want 1", n)
	}
	if err := d.relayDirectory(nil, remote); err != nil {
		t.Fatal(err)
	}
	if n := site.take(); n != 0 {
		t.Fatalf("an unchanged WAN pool relayed %d announcements again at once", n)
	}
	d.directory.settleAt = time.Now().Add(-time.Millisecond) // relaySettle has passed
	if err := d.relayDirectory(nil, remote); err != nil {
		t.Fatal(err)
	}
	if n := site.take(); n != 1 {
		t.Fatalf("once settled, relayed %d announcements, want all (1)", n)
	}
	if err := d.relayDirectory(nil, remote); err != nil {
		t.Fatal(err)
	}
	if n := site.take(); n != 0 {
		t.Fatalf("after the settling relay, %d more", n)
	}
}
