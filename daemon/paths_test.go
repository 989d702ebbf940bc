package daemon

import (
	"encoding/json"
	"fmt"
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
	// Nowhere to aim yet (its observed endpoint unknown): no clock runs.
	if got := p.updateNoDirect(st, true, t0); len(got) != 0 || !p.decideAt.IsZero() {
		t.Fatalf("without an endpoint: no direct %v, decide at %s", got, p.decideAt)
	}
	if got := p.updateNoDirect(st, true, t0.Add(time.Hour)); len(got) != 0 {
		t.Fatalf("given up on a tunnel that had nowhere to aim: %v", got)
	}
	st.Peers[0].Endpoint = netip.MustParseAddrPort("203.0.113.7:4000")
	t0 = t0.Add(2 * time.Hour)
	if got := p.updateNoDirect(st, true, t0); len(got) != 0 || !p.decideAt.After(t0.Add(directTimeout)) {
		t.Fatalf("no direct %v, decide at %s; want none yet, a decision after %s", got, p.decideAt, directTimeout)
	}
	if got := p.updateNoDirect(st, true, p.decideAt); len(got) != 1 || got[0] != "b" || !p.decideAt.IsZero() {
		t.Fatalf("at the deadline: no direct %v, decide at %s; want [b] and nothing left to decide", got, p.decideAt)
	}
}

// Any member of the site can send directory events: a relayed entry is
// kept only with a valid name and room to spare, and a signed one is
// never replaced by an older copy (a replay).
func TestDirectoryRefusesReplaysAndJunk(t *testing.T) {
	dir := newDirectory()
	record := func(name string, counter uint64) []byte {
		ann := mesh.Announcement{PublicKey: wgtypes.Key{1}, Endpoint: netip.MustParseAddrPort("203.0.113.1:51820"), Site: "b",
			Role: mesh.Role{Gateway: true}, Cert: []byte{1}, Counter: counter}
		tags, err := ann.SignedTags(name, func([]byte) []byte { return make([]byte, 64) })
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(dirRecord{Name: name, Status: "alive", Tags: tags})
		return raw
	}
	dir.receive(eventGateway, record("b1", 20), 5)
	dir.receive(eventGateway, record("b1", 10), 6) // a replay
	got := dir.members(time.Now())
	if len(got) != 1 || signedCounter(got[0].Tags) != 20 {
		t.Fatalf("after a replay: %+v", got)
	}
	dir.receive(eventGateway, record("b1", 30), 1)
	if got := dir.members(time.Now()); signedCounter(got[0].Tags) != 30 {
		t.Errorf("a newer copy was not taken: %+v", got)
	}
	dir.receive(eventGateway, record("bad\u200bname", 1), 9)
	dir.receive(eventGateway, []byte("{not json"), 9)
	if got := dir.members(time.Now()); len(got) != 1 {
		t.Errorf("junk kept: %+v", got)
	}
	for i := range maxDirectory + 10 {
		dir.receive(eventGateway, record(fmt.Sprintf("g%05d", i), 1), 9)
	}
	if n := len(dir.members(time.Now())); n != maxDirectory {
		t.Errorf("%d entries, want at most %d", n, maxDirectory)
	}
}

// Relayed copies of one announcement are ordered by their events' Lamport
// time, whatever order gossip delivers them in: the old relayer's
// "failed" for a gateway that came back must not outlive the new
// relayer's "alive".
func TestDirectoryKeepsTheLatestRelayedStatus(t *testing.T) {
	dir := newDirectory()
	tags, err := mesh.Announcement{PublicKey: wgtypes.Key{1}, Endpoint: netip.MustParseAddrPort("203.0.113.1:51820"), Site: "a",
		Role: mesh.Role{Gateway: true}}.Tags()
	if err != nil {
		t.Fatal(err)
	}
	record := func(status mesh.Status) []byte {
		raw, _ := json.Marshal(dirRecord{Name: "a1", Status: string(status), Tags: tags})
		return raw
	}
	dir.receive(eventGateway, record(mesh.StatusAlive), 40) // the new relayer, after a1 came back
	dir.receive(eventGateway, record(mesh.StatusLeft), 31)  // the old relayer, from before
	if got := dir.members(time.Now()); len(got) != 1 || got[0].Status != mesh.StatusAlive {
		t.Fatalf("an older relay replaced a newer one: %+v", got)
	}
	dir.receive(eventGateway, record(mesh.StatusFailed), 41)
	if got := dir.members(time.Now()); got[0].Status != mesh.StatusFailed {
		t.Errorf("a newer relay was not taken: %+v", got)
	}
}
