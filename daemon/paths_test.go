package daemon

import (
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/mesh"
)

// A symmetric NAT shows as public gateways seeing different ports; a
// query that only one of them answered cannot undo that.
func TestWhoamiSymmetricNeedsTwoAnswers(t *testing.T) {
	p := newPaths()
	ep := netip.MustParseAddrPort("203.0.113.9:4000")
	if !p.setObserved(ep, true, 2) {
		t.Fatal("first answer changed nothing")
	}
	p.setObserved(ep, false, 1)
	if _, sym := p.observedEndpoint(); !sym {
		t.Error("one answer cleared the symmetric NAT two answers found")
	}
	p.setObserved(ep, false, 3)
	if _, sym := p.observedEndpoint(); sym {
		t.Error("three agreeing answers did not clear it")
	}
}

// Queries repeat every 3 s while fewer than two public gateways answer,
// for the first minute; then every whoamiEvery.
func TestWhoamiAsksAgainUntilTwoAnswer(t *testing.T) {
	p := newPaths()
	t0 := time.Unix(1000, 0)
	if !p.askDue(t0) {
		t.Fatal("no first query")
	}
	p.setObserved(netip.MustParseAddrPort("203.0.113.9:4000"), false, 1)
	if !p.askDue(t0.Add(4 * time.Second)) {
		t.Error("one answer: no quick second query")
	}
	p.setObserved(netip.MustParseAddrPort("203.0.113.9:4000"), false, 2)
	if p.askDue(t0.Add(8 * time.Second)) {
		t.Error("two answers: still asking every 3 s")
	}
	p.setObserved(netip.MustParseAddrPort("203.0.113.9:4000"), false, 1)
	if p.askDue(t0.Add(70*time.Second)) != true {
		t.Error("no query after whoamiEvery")
	}
	if p.askDue(t0.Add(75 * time.Second)) {
		t.Error("after the first minute one answer no longer makes queries quick")
	}
}

// A direct NAT-to-NAT tunnel that never handshakes is given up on at its
// deadline, and the loop is told when that deadline is even if no event
// brings a pass.
func TestNoDirectDeadline(t *testing.T) {
	p := newPaths()
	st := &mesh.State{Peers: []mesh.Peer{{Name: "b1", PublicKey: wgtypes.Key{1}, WAN: true, NAT: true, Site: "b"}}}
	t0 := time.Unix(1000, 0)
	if got := p.updateNoDirect(st, true, t0); len(got) != 0 || !p.decideAt.After(t0.Add(directTimeout)) {
		t.Fatalf("no direct %v, decide at %s; want none yet, a decision after %s", got, p.decideAt, directTimeout)
	}
	if got := p.updateNoDirect(st, true, p.decideAt); len(got) != 1 || got[0] != "b" || !p.decideAt.IsZero() {
		t.Fatalf("at the deadline: no direct %v, decide at %s; want [b] and nothing left to decide", got, p.decideAt)
	}
}
