package daemon

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

var (
	remote1 = netip.MustParseAddr("10.42.17.254")
	remote2 = netip.MustParseAddr("10.42.33.254")
)

// rounds plays n probe rounds one second apart from t0 and returns the
// reports made in each.
func rounds(p *prober, plan []mesh.Probe, t0 time.Time, n int, result func(gw string, target netip.Addr) roundResult) [][]string {
	var out [][]string
	for i := range n {
		now := t0.Add(time.Duration(i) * time.Second)
		results := make([]roundResult, len(plan))
		for j, pr := range plan {
			results[j] = result(pr.Gateway, p.target(pr, now))
		}
		out = append(out, p.observe(plan, results, now))
	}
	return out
}

func firstReport(reports [][]string, gw string) int {
	return slices.IndexFunc(reports, func(r []string) bool { return slices.Contains(r, gw) })
}

func TestProberReportsAGatewayThatForwardsNothing(t *testing.T) {
	plan := []mesh.Probe{
		{Gateway: "g1", Via: netip.MustParseAddr("10.42.1.254"), Targets: []netip.Addr{remote1, remote2}},
		{Gateway: "g2", Via: netip.MustParseAddr("10.42.2.254"), Targets: []netip.Addr{remote1}},
	}
	t0 := time.Unix(1000, 0)
	brokenG1 := func(gw string, target netip.Addr) roundResult {
		return roundResult{target: target, viaOK: true, targetOK: gw != "g1"}
	}
	p := newProber()
	got := rounds(p, plan, t0, 30, brokenG1)
	first := firstReport(got, "g1")
	// The grace, then stuckRounds failures covering both targets.
	if want := int(probeGrace/time.Second) + stuckRounds - 1; first != want {
		t.Fatalf("g1 first reported in round %d, want %d: %v", first, want, got)
	}
	if firstReport(got, "g2") >= 0 {
		t.Errorf("g2, which forwards, was reported: %v", got)
	}
	// Renewed every reReportEvery while still broken, not every round.
	var renewals []int
	for i, r := range got {
		if slices.Contains(r, "g1") {
			renewals = append(renewals, i)
		}
	}
	if len(renewals) != 3 || renewals[1]-renewals[0] != int(reReportEvery/time.Second) {
		t.Errorf("g1 reported in rounds %v, want every %s", renewals, reReportEvery)
	}
	st, made := p.status(plan, t0.Add(29*time.Second))
	if made != 3 || !st[0].Reported || st[0].Failing == 0 || st[1].Failing != 0 {
		t.Errorf("status %+v, %d reports", st, made)
	}
}

// When nothing forwards (this host's trouble, or the site's uplink), no
// gateway is blamed; with several gateways probed, one that fails alone
// is.
func TestProberBlamesNoGatewayWhenNothingWorks(t *testing.T) {
	plan := []mesh.Probe{
		{Gateway: "g1", Via: netip.MustParseAddr("10.42.1.254"), Targets: []netip.Addr{remote1}},
		{Gateway: "g2", Via: netip.MustParseAddr("10.42.2.254"), Targets: []netip.Addr{remote2}},
	}
	t0 := time.Unix(1000, 0)
	for name, result := range map[string]func(string, netip.Addr) roundResult{
		"uplink down: both answer, neither forwards": func(gw string, target netip.Addr) roundResult {
			return roundResult{target: target, viaOK: true}
		},
		"this host cut off: nothing answers": func(gw string, target netip.Addr) roundResult {
			return roundResult{target: target}
		},
	} {
		if got := rounds(newProber(), plan, t0, 30, result); firstReport(got, "g1") >= 0 || firstReport(got, "g2") >= 0 {
			t.Errorf("%s: reported %v", name, got)
		}
	}
	// Probes that cannot be sent at all say nothing of any gateway.
	if got := rounds(newProber(), plan, t0, 30, func(gw string, target netip.Addr) roundResult {
		return roundResult{target: target, viaOK: true, unknown: gw == "g1", targetOK: gw != "g1"}
	}); firstReport(got, "g1") >= 0 {
		t.Errorf("g1 reported on probes that were never sent: %v", got)
	}
	// g1 does not even answer itself (its firewall drops everything on
	// the tunnel), but g2 forwards: that points at g1.
	got := rounds(newProber(), plan, t0, 30, func(gw string, target netip.Addr) roundResult {
		return roundResult{target: target, viaOK: gw != "g1", targetOK: gw != "g1"}
	})
	if firstReport(got, "g1") < 0 || firstReport(got, "g2") >= 0 {
		t.Errorf("g1 dark, g2 fine: reported %v", got)
	}
}

func report(by, gw string, at int64) mesh.Report {
	return mesh.Report{Reporter: by, Gateway: gw, At: uint64(at)}
}

func TestEjectorNeedsEveryProberAndSomewhereToGo(t *testing.T) {
	t0 := time.Unix(1000, 0)
	probers, usable := []string{"p1", "p2"}, []string{"g1", "g2"}

	e := newEjector()
	e.add(report("p1", "g1", 1000), t0)
	if e.decide("g1", probers, usable, t0) {
		t.Fatal("one of two probers drained the gateway")
	}
	e.add(report("p2", "g1", 1003), t0.Add(3*time.Second))
	e.farResult(true, t0.Add(2*time.Second))
	if !e.decide("g1", probers, usable, t0.Add(3*time.Second)) {
		t.Fatal("both probers reported and the gateway stayed")
	}
	if ej, by, until := e.ejected(t0.Add(4 * time.Second)); !ej || by != "p1, p2" || until != t0.Add(3*time.Second+ejectBase) {
		t.Errorf("ejected %v by %q until %s", ej, by, until)
	}

	// Reports naming both gateways (the uplink went down) drain neither.
	e = newEjector()
	for _, gw := range usable {
		for _, p := range probers {
			e.add(report(p, gw, 1000), t0)
		}
	}
	if e.decide("g1", probers, usable, t0) || e.decide("g2", probers, usable, t0) {
		t.Error("a gateway drained while every gateway was reported")
	}
	if e.takeDeclined() == "" {
		t.Error("the declined report is not there for the log")
	}

	// Old reports do not count, replays are dropped.
	e = newEjector()
	e.add(report("p1", "g1", 1000), t0)
	e.add(report("p2", "g1", 1000), t0.Add(-reportFresh-time.Second))
	if e.decide("g1", probers, usable, t0) {
		t.Error("a stale report counted")
	}
	e.add(report("p2", "g1", 900), t0)
	if e.decide("g1", probers, usable, t0) {
		t.Error("a replayed report counted")
	}
	// A signed report recorded long ago, replayed after a restart emptied
	// the replay guard, and one dated far ahead, are refused.
	e = newEjector()
	e.add(report("p1", "g1", 1000-600), t0)
	e.add(report("p2", "g1", 1000+600), t0)
	if len(e.fresh["g1"]) != 0 {
		t.Errorf("reports outside the clock skew were taken: %v", e.fresh["g1"])
	}
}

// Probers cannot tell a gateway that forwards nothing from a far gateway
// that died: the reported gateway drains only when it reaches a far
// gateway itself, and asks for that check first.
func TestEjectorAsksTheGatewayWhetherTheFarEndAnswers(t *testing.T) {
	t0 := time.Unix(1000, 0)
	probers, usable := []string{"p1", "p2"}, []string{"g1", "g2"}
	e := newEjector()
	e.setFar([]netip.Addr{remote1}, t0.Add(-2*time.Second))
	e.add(report("p1", "g1", 1000), t0)
	e.add(report("p2", "g1", 1000), t0)
	if e.decide("g1", probers, usable, t0) {
		t.Fatal("drained before checking the far end")
	}
	if !e.farCheckDue() || e.farCheckDue() {
		t.Fatal("the check of the far gateways was not asked for exactly once")
	}
	// The far gateway died: its pings fail from the gateway itself too.
	e.farResult(false, t0.Add(time.Second))
	if e.decide("g1", probers, usable, t0.Add(time.Second)) {
		t.Fatal("drained although the far end answers nobody")
	}
	if why := e.takeDeclined(); !strings.Contains(why, "not every far gateway answers this gateway either") {
		t.Errorf("declined for %q", why)
	}
	// Once that check is old, it is asked for again; this time the far
	// end answers the gateway, so its forwarding is at fault.
	later := t0.Add(time.Second + farFresh + time.Millisecond)
	if e.decide("g1", probers, usable, later) || !e.farCheckDue() {
		t.Fatal("a stale check was not renewed")
	}
	e.farResult(true, later)
	if !e.decide("g1", probers, usable, later) {
		t.Fatal("the far end answers the gateway, its probes fail through it, and it stayed")
	}

	// A far end silent for longer than membership needs to move the
	// pairs no longer explains the failures (the gateway's own device may
	// be wedged, silencing its own echoes too): the reports drain it.
	e = newEjector()
	e.setFar([]netip.Addr{remote1}, t0.Add(-2*time.Second))
	e.add(report("p1", "g1", 1000), t0)
	e.add(report("p2", "g1", 1000), t0)
	e.farResult(false, t0)
	if e.decide("g1", probers, usable, t0) {
		t.Fatal("drained while the far end's silence could explain the reports")
	}
	stale := t0.Add(farVetoMax)
	e.add(report("p1", "g1", 1000+int64(farVetoMax/time.Second)), stale)
	e.add(report("p2", "g1", 1000+int64(farVetoMax/time.Second)), stale)
	e.farResult(false, stale)
	if !e.decide("g1", probers, usable, stale) {
		t.Fatal("reports lasting past farVetoMax did not drain the gateway")
	}

	// Reports from before the gateway's pairs moved to other far
	// gateways were about the old far end: they count for nothing.
	e = newEjector()
	e.setFar([]netip.Addr{remote1}, t0)
	e.add(report("p1", "g1", 1001), t0.Add(time.Second))
	e.add(report("p2", "g1", 1001), t0.Add(time.Second))
	moved := t0.Add(1500 * time.Millisecond)
	e.setFar([]netip.Addr{remote2}, moved)
	e.farResult(true, moved)
	if e.decide("g1", probers, usable, moved) {
		t.Fatal("reports about the old far end drained the gateway")
	}
	e.add(report("p1", "g1", 1003), moved.Add(2*time.Second))
	e.add(report("p2", "g1", 1003), moved.Add(2*time.Second))
	e.farResult(true, moved.Add(2*time.Second))
	if !e.decide("g1", probers, usable, moved.Add(2*time.Second)) {
		t.Fatal("reports made after the move did not drain the gateway")
	}
}

// A prober starts over when a gateway's far gateways change: the
// failures so far were the old far end's (it died, and the pair moved).
func TestProberStartsOverWhenTheFarEndMoves(t *testing.T) {
	t0 := time.Unix(1000, 0)
	plan := []mesh.Probe{{Gateway: "g1", Via: netip.MustParseAddr("10.42.1.254"), Targets: []netip.Addr{remote1}}}
	deadRemote1 := func(gw string, target netip.Addr) roundResult {
		return roundResult{target: target, viaOK: true, targetOK: target != remote1}
	}
	p := newProber()
	// Failing just short of a report when the pair moves to remote2.
	got := rounds(p, plan, t0, int(probeGrace/time.Second)+stuckRounds-1, deadRemote1)
	if firstReport(got, "g1") >= 0 {
		t.Fatalf("reported before stuckRounds: %v", got)
	}
	moved := []mesh.Probe{{Gateway: "g1", Via: plan[0].Via, Targets: []netip.Addr{remote2}}}
	later := t0.Add(time.Duration(len(got)) * time.Second)
	got = rounds(p, moved, later, 30, func(gw string, target netip.Addr) roundResult {
		return roundResult{target: target, viaOK: true}
	})
	if first := firstReport(got, "g1"); first != int(probeGrace/time.Second)+stuckRounds-1 {
		t.Errorf("after the move g1 was first reported in round %d, want a fresh grace and %d failures: %v", first, stuckRounds, got)
	}
}

// Still broken, a gateway is ejected for twice as long each time, up to
// ejectMax, without the shift ever overflowing.
func TestEjectionDoublesAndIsCapped(t *testing.T) {
	e := newEjector()
	probers, usable := []string{"p1"}, []string{"g1", "g2"}
	now := time.Unix(1000, 0)
	var lengths []time.Duration
	for i := range 40 {
		e.add(report("p1", "g1", now.Unix()+int64(i)), now)
		e.farResult(true, now)
		if !e.decide("g1", probers, usable, now) {
			t.Fatalf("ejection %d did not start", i)
		}
		_, _, until := e.ejected(now)
		lengths = append(lengths, until.Sub(now))
		now = until.Add(5 * time.Second) // back, probed, broken again
	}
	if lengths[0] != ejectBase || lengths[1] != 2*ejectBase || lengths[39] != ejectMax {
		t.Errorf("ejections lasted %v", lengths)
	}
	for i, l := range lengths {
		if l <= 0 || l > ejectMax {
			t.Fatalf("ejection %d lasted %s", i, l)
		}
	}
}
