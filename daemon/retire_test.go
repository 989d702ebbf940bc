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
	// This gateway sees most of its site alive.
	for _, name := range []string{"self", "h1", "h2", "h3", "h4"} {
		sitePool = append(sitePool, gateway(name, site, mesh.StatusAlive))
	}

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
	// Cut off from most of its site, a gateway retires nobody: it would
	// retire every other gateway at once.
	sitePool[0].Status = mesh.StatusAlive
	d.retireFellowGateways(sitePool, remote)
	sitePool[0].Status = mesh.StatusFailed
	minority := append([]mesh.Member(nil), sitePool[:4]...)
	minority = append(minority, gateway("self", site, mesh.StatusAlive))
	d.retireFellowGateways(minority, remote)
	if got := wan.take(); len(got) != 0 {
		t.Fatalf("a gateway seeing most of its site failed retired %v", got)
	}
	// A site of two gateways has no majority to ask: the one failure is
	// told.
	d.retired = map[string]bool{}
	d.retireFellowGateways([]mesh.Member{gateway("self", site, mesh.StatusAlive), gateway("gw-a", site, mesh.StatusFailed)}, remote)
	if got := wan.take(); !slices.Equal(got, []string{"gw-a"}) {
		t.Fatalf("in a site of two gateways retired %v, want [gw-a]", got)
	}
	// A host that is not a gateway has no WAN pool to tell.
	d.wan = nil
	d.retireFellowGateways(sitePool, remote)
}

// recordingSite records the events broadcast into a site pool.
type recordingSite struct {
	*fakeCluster
	mu     sync.Mutex
	events []string
}

func (r *recordingSite) Broadcast(name string, payload []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, name+" "+string(payload))
	return nil
}

func (r *recordingSite) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}

// rejoinCounter counts a WAN pool's rejoins.
type rejoinCounter struct {
	*fakeCluster
	mu      sync.Mutex
	rejoins int
}

func (r *rejoinCounter) Rejoin() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rejoins++
}

// A gateway that missed its own retirement (cut off while the leave intent
// spread) stays leaving in the WAN pool while its site has it alive: a
// fellow gateway asks it to rejoin, at most every rejoinEvery, and it
// rejoins on the request, as often.
func TestARetiredGatewayThatIsAliveIsAskedToRejoin(t *testing.T) {
	d, _, _, _ := newTestDaemon(t, 0)
	site := &recordingSite{fakeCluster: newFakeCluster()}
	wan := &rejoinCounter{fakeCluster: newFakeCluster()}
	d.members, d.wan = site, wan
	me := d.ann.local()
	member := func(name, siteName string, status mesh.Status) mesh.Member {
		m := memberN(t, len(name), sliceN(len(name)))
		ann, err := mesh.DecodeTags(m.Tags)
		if err != nil {
			t.Fatal(err)
		}
		ann.Site, ann.Role.Gateway = siteName, true
		if m.Tags, err = ann.Tags(); err != nil {
			t.Fatal(err)
		}
		m.Name, m.Status = name, status
		return m
	}
	sitePool := []mesh.Member{member(me.Name, me.Site, mesh.StatusAlive), member("gw-b", me.Site, mesh.StatusAlive)}
	remote := []mesh.Member{member(me.Name, me.Site, mesh.StatusAlive), member("gw-b", me.Site, mesh.StatusLeaving),
		member("gw-far", "elsewhere", mesh.StatusLeft)}
	d.retireFellowGateways(sitePool, remote)
	if got := site.take(); !slices.Equal(got, []string{eventRejoin + " gw-b"}) {
		t.Fatalf("sent %v, want gw-b asked to rejoin", got)
	}
	d.retireFellowGateways(sitePool, remote)
	if got := site.take(); len(got) != 0 {
		t.Fatalf("asked again at once: %v", got)
	}
	// The request for this gateway: it rejoins once, not on a repeat.
	d.onSiteEvent(eventRejoin, []byte("someone-else"), 1)
	d.onSiteEvent(eventRejoin, []byte(me.Name), 2)
	d.retireFellowGateways(sitePool, remote)
	d.onSiteEvent(eventRejoin, []byte(me.Name), 3)
	d.retireFellowGateways(sitePool, remote)
	wan.mu.Lock()
	defer wan.mu.Unlock()
	if wan.rejoins != 1 {
		t.Errorf("rejoined %d times, want 1 (at most every %s)", wan.rejoins, rejoinEvery)
	}
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

	// Taking over again, then handing over to a lower-named gateway of
	// the site within relaySettle: no settling relay is left pending
	// (it would wake the loop at every health check).
	d.directory.relaying = false
	if err := d.relayDirectory(nil, remote); err != nil {
		t.Fatal(err)
	}
	if d.directory.settleAt.IsZero() {
		t.Fatal("taking over set no settling relay")
	}
	lower := memberN(t, 8, sliceN(8))
	lann, err := mesh.DecodeTags(lower.Tags)
	if err != nil {
		t.Fatal(err)
	}
	lann.Site, lann.Role.Gateway = d.ann.local().Site, true
	if lower.Tags, err = lann.Tags(); err != nil {
		t.Fatal(err)
	}
	lower.Name = "a-lower-gateway"
	if err := d.relayDirectory(nil, append(remote, lower)); err != nil {
		t.Fatal(err)
	}
	if !d.directory.settleAt.IsZero() || d.directory.relaying {
		t.Errorf("after handing over: relaying %v, settling relay due at %v", d.directory.relaying, d.directory.settleAt)
	}
}
