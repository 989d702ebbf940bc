package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestMedianAndSpread(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{7}, 7},
	} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 {
		t.Error("median sorted its input in place")
	}
	if got := fmtMedian([]float64{0.5, 0.91, 0.8}, 2); got != "0.80 (0.50-0.91)" {
		t.Errorf("fmtMedian = %q", got)
	}
	if got := fmtMedian([]float64{1.234}, 1); got != "1.2" {
		t.Errorf("fmtMedian of one value = %q", got)
	}
	if got := fmtMedian(nil, 1); got != "-" {
		t.Errorf("fmtMedian of none = %q", got)
	}
}

func TestCoresPerGbps(t *testing.T) {
	// 10 s at 1 Gbit/s is 1.25e9 bytes; 9 CPU seconds over it is 0.9
	// cores per Gbit/s.
	if got := coresPerGbps(9, 1_250_000_000); math.Abs(got-0.9) > 1e-9 {
		t.Errorf("coresPerGbps = %v, want 0.9", got)
	}
	if !math.IsNaN(coresPerGbps(1, 0)) || !math.IsNaN(coresPerGbps(-1, 100)) {
		t.Error("nothing carried or a vanished process must give NaN")
	}
}

// stream builds records: one request every 100 ms from t0, answered after
// 1 ms unless lost.
func stream(t0 time.Time, n int, lost func(i int) bool) []echoRecord {
	recs := make([]echoRecord, n)
	for i := range recs {
		recs[i].sent = t0.Add(time.Duration(i) * 100 * time.Millisecond)
		if !lost(i) {
			recs[i].recv = recs[i].sent.Add(time.Millisecond)
		}
	}
	return recs
}

func TestOutageAcrossAKill(t *testing.T) {
	t0 := time.Unix(1000, 0)
	// Requests 0..19 answered, 20..79 lost (6 s), then back.
	recs := stream(t0, 100, func(i int) bool { return i >= 20 && i < 80 })
	kill := t0.Add(1950 * time.Millisecond)
	back, gap, ok := outage(recs, kill)
	if !ok {
		t.Fatal("no outage measured")
	}
	// First reply to a request sent after the kill: request 80, sent at
	// 8.0 s, answered at 8.001 s. Last reply before: request 19 at 1.901 s.
	if want := 8001*time.Millisecond - 1950*time.Millisecond; back != want {
		t.Errorf("back %s, want %s", back, want)
	}
	if want := 8001*time.Millisecond - 1901*time.Millisecond; gap != want {
		t.Errorf("gap %s, want %s", gap, want)
	}
	if n := lostBetween(recs, kill, t0.Add(10*time.Second)); n != 60 {
		t.Errorf("%d lost, want 60", n)
	}
}

func TestOutageIgnoresARequestInFlightAtTheKill(t *testing.T) {
	t0 := time.Unix(1000, 0)
	recs := stream(t0, 50, func(i int) bool { return i >= 11 && i < 40 })
	// Request 10 is sent at 1.000 s and answered at 1.001 s; the kill at
	// 1.0005 s falls in between. Its reply says nothing about the path
	// after the kill.
	kill := t0.Add(1000*time.Millisecond + 500*time.Microsecond)
	back, _, _ := outage(recs, kill)
	if want := 4001*time.Millisecond - 1000500*time.Microsecond; back != want {
		t.Errorf("back %s, want %s (request 40)", back, want)
	}
}

func TestFirstReplySentAfterTakesTheEarliestArrival(t *testing.T) {
	t0 := time.Unix(1000, 0)
	// A request queued during the outage is answered after a later one.
	recs := []echoRecord{
		{sent: t0, recv: t0.Add(time.Millisecond)},
		{sent: t0.Add(time.Second), recv: t0.Add(5 * time.Second)},
		{sent: t0.Add(2 * time.Second), recv: t0.Add(3 * time.Second)},
	}
	got, ok := firstReplySentAfter(recs, t0.Add(500*time.Millisecond))
	if !ok || !got.Equal(t0.Add(3*time.Second)) {
		t.Errorf("got %v %v, want the reply at 3 s", got, ok)
	}
	if _, _, ok := outage(recs[:1], t0.Add(time.Second)); ok {
		t.Error("an outage was measured for a stream that never came back")
	}
}

func TestLongestSilence(t *testing.T) {
	t0 := time.Unix(1000, 0)
	recs := stream(t0, 100, func(i int) bool { return i >= 30 && i < 45 })
	// Replies at 2.901 s then 4.501 s: 1.6 s of silence inside [2 s, 10 s].
	if got, want := longestSilence(recs, t0.Add(2*time.Second), t0.Add(10*time.Second)), 1600*time.Millisecond; got != want {
		t.Errorf("silence %s, want %s", got, want)
	}
	// A window with no reply at all is silent from its start.
	if got := longestSilence(nil, t0, t0.Add(3*time.Second)); got != 3*time.Second {
		t.Errorf("silence of nothing %s", got)
	}
	// A stream that stopped answering is silent until the window's end.
	quiet := stream(t0, 100, func(i int) bool { return i >= 50 })
	if got, want := longestSilence(quiet, t0, t0.Add(9*time.Second)), 9*time.Second-4901*time.Millisecond; got != want {
		t.Errorf("silence %s, want %s", got, want)
	}
}

func TestSteady(t *testing.T) {
	t0 := time.Unix(1000, 0)
	recs := stream(t0, 50, func(i int) bool { return i == 20 })
	now := t0.Add(5 * time.Second)
	if !steady(recs, now, 2*time.Second, 500*time.Millisecond) {
		t.Error("no loss in [2.5 s, 4.5 s] but not steady")
	}
	if steady(recs, t0.Add(3*time.Second), 2*time.Second, 500*time.Millisecond) {
		t.Error("request 20 (2.0 s) lost but steady")
	}
	if steady(nil, now, time.Second, 0) {
		t.Error("a stream without requests is not steady")
	}
}

func TestSameRoundRatios(t *testing.T) {
	gw := []tpSample{{Round: 0, Gbps: 0.5}, {Round: 1, Gbps: 0.6}, {Round: 2, Gbps: 0.9}}
	direct := []tpSample{{Round: 0, Gbps: 1.0}, {Round: 2, Gbps: 1.0}}
	got := sameRoundRatios(gw, direct)
	if len(got) != 2 || got[0] != 0.5 || got[1] != 0.9 {
		t.Errorf("ratios %v, want [0.5 0.9] (round 1 has no direct sample)", got)
	}
}

func TestPathCoresPerGbps(t *testing.T) {
	s := tpSample{Bytes: 1_250_000_000, CPU: []float64{2, 3, 4}}
	if got := pathCoresPerGbps(s); math.Abs(got-0.9) > 1e-9 {
		t.Errorf("path %v, want 0.9", got)
	}
	if got := roleCoresPerGbps(s, 1); math.Abs(got-0.3) > 1e-9 {
		t.Errorf("role %v, want 0.3", got)
	}
	s.CPU[0] = -1
	if !math.IsNaN(pathCoresPerGbps(s)) {
		t.Error("a vanished process must make the path's figure NaN")
	}
}

func TestParseIperf(t *testing.T) {
	out := `{"start":{},"end":{"sum_sent":{"bytes":1300,"retransmits":7},"sum_received":{"bytes":1250000000,"bits_per_second":1.0e9}}}`
	gbps, bytes, retr, err := parseIperf(out)
	if err != nil {
		t.Fatal(err)
	}
	if gbps != 1 || bytes != 1250000000 || retr != 7 {
		t.Errorf("got %v %v %v", gbps, bytes, retr)
	}
	if _, _, _, err := parseIperf(`{"error":"unable to connect to server"}`); err == nil || !strings.Contains(err.Error(), "unable to connect") {
		t.Errorf("iperf3's own error not reported: %v", err)
	}
	if _, _, _, err := parseIperf(`{"end":{}}`); err == nil {
		t.Error("a result without sums accepted")
	}
}

func TestCheckPath(t *testing.T) {
	m := &tpMode{via: "gw", notVia: "other"}
	if err := checkPath(m, 1000, 1040, 5); err != nil {
		t.Errorf("a good path refused: %v", err)
	}
	if err := checkPath(m, 1000, 100, 5); err == nil || !strings.Contains(err.Error(), "gw sent 100") {
		t.Errorf("traffic that skipped the gateway accepted: %v", err)
	}
	if err := checkPath(m, 1000, 1040, 900); err == nil || !strings.Contains(err.Error(), "other sent 900") {
		t.Errorf("traffic through the wrong host accepted: %v", err)
	}
}

func TestPickModesAndTests(t *testing.T) {
	all := []*tpMode{{key: "direct"}, {key: "gateways"}}
	ms, err := pickModes(all, "gateways, direct")
	if err != nil || len(ms) != 2 || ms[0].key != "gateways" {
		t.Errorf("pickModes: %v %v", ms, err)
	}
	if _, err := pickModes(all, "raw"); err == nil {
		t.Error("unknown mode accepted")
	}
	ts, err := pickTests("tcp4")
	if err != nil || len(ts) != 1 || ts[0].args[1] != "4" {
		t.Errorf("pickTests: %v %v", ts, err)
	}
	if _, err := pickTests("udp"); err == nil {
		t.Error("unknown test accepted")
	}
}

func TestRefTunnelsAreSymmetric(t *testing.T) {
	// Every tunnel of the reference chain is configured at both ends, and
	// the routes lead every packet from the sender to the receivers and
	// back: follow the slices hop by hop.
	for h, peers := range refTunnels {
		for _, p := range peers {
			found := false
			for _, back := range refTunnels[p.host] {
				found = found || back.host == h
			}
			if !found {
				t.Errorf("h%d has peer h%d, which lacks h%d", h, p.host, h)
			}
		}
	}
	hops := func(from, to int) []int {
		path := []int{from}
		for at := from; at != to && len(path) < 6; {
			next := 0
			for _, p := range refTunnels[at] {
				for _, b := range p.behind {
					if b == to {
						next = p.host
					}
				}
			}
			if next == 0 {
				return nil
			}
			path = append(path, next)
			at = next
		}
		return path
	}
	for _, c := range []struct {
		from, to int
		want     string
	}{
		{roleSender, roleRemote, "[2 1 4 5]"},
		{roleRemote, roleSender, "[5 4 1 2]"},
		{roleSender, roleDirect, "[2 3]"},
		{roleDirect, roleSender, "[3 2]"},
	} {
		if got := fmt.Sprint(hops(c.from, c.to)); got != c.want {
			t.Errorf("h%d -> h%d goes %s, want %s", c.from, c.to, got, c.want)
		}
	}
}
