package mesh

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func testKey(t testing.TB, seed byte) wgtypes.Key {
	t.Helper()
	var k wgtypes.Key
	k[0], k[31] = seed, 1
	return k
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func localH1(t testing.TB) Local {
	return Local{
		Name: "h1", PublicKey: testKey(t, 1), Link: "mesh0", TableBase: 100, RulePriority: 31000,
		Keepalive: 25 * time.Second,
		Segments: []LocalSegment{
			{Name: "blue", CIDR: pfx("10.42.0.0/16"), Subnet: pfx("10.42.1.0/24")},
			{Name: "v6", CIDR: pfx("fd42::/48"), Subnet: pfx("fd42:0:0:1::/64")},
		},
	}
}

func member(t testing.TB, name string, seed byte, endpoint string, slices ...Slice) Member {
	t.Helper()
	tags, err := Announcement{PublicKey: testKey(t, seed), Endpoint: netip.MustParseAddrPort(endpoint), Slices: slices}.Tags()
	if err != nil {
		t.Fatal(err)
	}
	return Member{Name: name, Status: StatusAlive, Tags: tags}
}

func sl(seg, p string) Slice { return Slice{Segment: seg, Prefix: pfx(p)} }

func TestComputeTwoPeersExactState(t *testing.T) {
	local := localH1(t)
	members := []Member{
		{Name: "h1", Status: StatusAlive}, // ourselves: ignored
		member(t, "h3", 3, "192.0.2.3:51820", sl("blue", "10.42.3.0/24")),
		member(t, "h2", 2, "[2001:db8::2]:51820", sl("blue", "10.42.2.0/24"), sl("v6", "fd42:0:0:2::/64")),
	}
	st := Compute(local, members, nil)
	if len(st.Rejected) != 0 {
		t.Fatalf("unexpected rejections: %v", st.Rejected)
	}
	want := []Peer{
		{Name: "h2", PublicKey: testKey(t, 2), Endpoint: netip.MustParseAddrPort("[2001:db8::2]:51820"),
			Slices:     []Slice{sl("blue", "10.42.2.0/24"), sl("v6", "fd42:0:0:2::/64")},
			AllowedIPs: []netip.Prefix{pfx("10.42.2.0/24"), pfx("fd42:0:0:2::/64")}, Keepalive: 25 * time.Second},
		{Name: "h3", PublicKey: testKey(t, 3), Endpoint: netip.MustParseAddrPort("192.0.2.3:51820"),
			Slices: []Slice{sl("blue", "10.42.3.0/24")}, AllowedIPs: []netip.Prefix{pfx("10.42.3.0/24")}, Keepalive: 25 * time.Second},
	}
	if len(st.Peers) != len(want) {
		t.Fatalf("peers = %+v, want %+v", st.Peers, want)
	}
	for i := range want {
		if !peerEqual(st.Peers[i], want[i]) {
			t.Errorf("peer %d = %+v\nwant %+v", i, st.Peers[i], want[i])
		}
	}
	wantRoutes := RouteConfig{
		Link: "mesh0",
		Routes: []Route{
			{Table: 100, Dst: pfx("10.42.0.0/16"), Kind: Unreachable},
			{Table: 100, Dst: pfx("10.42.1.0/24"), Kind: Throw},
			{Table: 100, Dst: pfx("10.42.2.0/24"), Kind: Tunnel, Peer: "h2"},
			{Table: 100, Dst: pfx("10.42.3.0/24"), Kind: Tunnel, Peer: "h3"},
			{Table: 101, Dst: pfx("fd42::/48"), Kind: Unreachable},
			{Table: 101, Dst: pfx("fd42:0:0:1::/64"), Kind: Throw},
			{Table: 101, Dst: pfx("fd42:0:0:2::/64"), Kind: Tunnel, Peer: "h2"},
		},
		Rules: []Rule{
			{Priority: 31000, Table: 100, From: pfx("10.42.0.0/16")},
			{Priority: 31000, Table: 101, From: pfx("fd42::/48")},
			{Priority: 31001, Table: 100, To: pfx("10.42.0.0/16")},
			{Priority: 31001, Table: 101, To: pfx("fd42::/48")},
		},
	}
	if !st.Routes.Equal(&wantRoutes) {
		t.Errorf("routes =\n%+v\nwant\n%+v", st.Routes, wantRoutes)
	}
	for i, r := range st.Routes.Routes {
		if r.Peer != wantRoutes.Routes[i].Peer {
			t.Errorf("route %v peer %q, want %q", r.Dst, r.Peer, wantRoutes.Routes[i].Peer)
		}
	}
}

func peerEqual(a, b Peer) bool {
	if a.Name != b.Name || a.PublicKey != b.PublicKey || a.Endpoint != b.Endpoint || a.Keepalive != b.Keepalive ||
		len(a.Slices) != len(b.Slices) || len(a.AllowedIPs) != len(b.AllowedIPs) {
		return false
	}
	for i := range a.Slices {
		if a.Slices[i] != b.Slices[i] {
			return false
		}
	}
	for i := range a.AllowedIPs {
		if a.AllowedIPs[i] != b.AllowedIPs[i] {
			return false
		}
	}
	return true
}

func TestComputeRejectsBadClaims(t *testing.T) {
	local := localH1(t)
	good := member(t, "h2", 2, "192.0.2.2:51820", sl("blue", "10.42.2.0/24"))
	cases := []struct {
		name   string
		m      Member
		reason string
	}{
		{"slice outside segment", member(t, "h9", 9, "192.0.2.9:51820", sl("blue", "10.99.0.0/24")), "outside segment blue"},
		{"slice wider than segment", member(t, "h9", 9, "192.0.2.9:51820", sl("blue", "10.0.0.0/8")), "outside segment blue"},
		{"family mismatch", member(t, "h9", 9, "192.0.2.9:51820", sl("v6", "10.42.9.0/24")), "outside segment v6"},
		{"our own slice", member(t, "h9", 9, "192.0.2.9:51820", sl("blue", "10.42.1.128/25")), "owned by h1"},
		{"another live host's slice", member(t, "h9", 9, "192.0.2.9:51820", sl("blue", "10.42.2.0/24")), "owned by h2"},
		{"our own key", member(t, "h9", 1, "192.0.2.9:51820", sl("blue", "10.42.9.0/24")), "already used by h1"},
		{"another host's key", member(t, "h9", 2, "192.0.2.9:51820", sl("blue", "10.42.9.0/24")), "already used by h2"},
		{"bad version", Member{Name: "h9", Status: StatusAlive, Tags: map[string]string{"v": "7"}}, "version"},
		{"bad key", Member{Name: "h9", Status: StatusAlive, Tags: withTag(good.Tags, "k", "nope")}, "public key"},
		{"unspecified endpoint", Member{Name: "h9", Status: StatusAlive, Tags: withTag(good.Tags, "e", "0.0.0.0:51820")}, "endpoint"},
		{"zero port", Member{Name: "h9", Status: StatusAlive, Tags: withTag(good.Tags, "e", "192.0.2.9:0")}, "endpoint"},
		{"host bits set", Member{Name: "h9", Status: StatusAlive, Tags: withTag(withTag(good.Tags, "k", testKey(t, 9).String()), "s", "blue=10.42.9.1/24")}, "host bits"},
		{"garbage slices", Member{Name: "h9", Status: StatusAlive, Tags: withTag(withTag(good.Tags, "k", testKey(t, 9).String()), "s", "blue")}, "segment=cidr"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := Compute(local, []Member{good, tc.m}, nil)
			if _, ok := st.PeerByName("h9"); ok {
				t.Fatalf("h9 was accepted as a peer")
			}
			if _, ok := st.PeerByName("h2"); !ok {
				t.Fatalf("the honest host h2 lost its place: %+v", st)
			}
			if len(st.Rejected) != 1 || st.Rejected[0].Member != "h9" || !strings.Contains(st.Rejected[0].Reason, tc.reason) {
				t.Fatalf("rejected = %+v, want h9 with reason containing %q", st.Rejected, tc.reason)
			}
			for _, r := range st.Routes.Routes {
				if r.Peer == "h9" {
					t.Fatalf("route to rejected host: %+v", r)
				}
			}
		})
	}
}

func withTag(tags map[string]string, k, v string) map[string]string {
	out := map[string]string{}
	for a, b := range tags {
		out[a] = b
	}
	out[k] = v
	return out
}

func TestComputeLiveOwnerKeepsSliceAgainstNewcomer(t *testing.T) {
	local := localH1(t)
	// "a-intruder" sorts before "h5", so only stickiness protects h5.
	owner := member(t, "h5", 5, "192.0.2.5:51820", sl("blue", "10.42.5.0/24"))
	intruder := member(t, "a-intruder", 6, "192.0.2.6:51820", sl("blue", "10.42.5.0/24"))

	first := Compute(local, []Member{owner}, nil)
	second := Compute(local, []Member{owner, intruder}, &first)
	if _, ok := second.PeerByName("h5"); !ok {
		t.Fatal("the live owner h5 lost its slice to a newcomer")
	}
	if _, ok := second.PeerByName("a-intruder"); ok {
		t.Fatal("a newcomer took over a live host's slice")
	}
	// Without history the tie is broken by name, the same on every host.
	fresh := Compute(local, []Member{owner, intruder}, nil)
	if _, ok := fresh.PeerByName("a-intruder"); !ok {
		t.Fatal("without history the lower name must win")
	}
}

func TestComputeDropsMembersThatAreNotAlive(t *testing.T) {
	local := localH1(t)
	var members []Member
	for i, status := range []Status{StatusAlive, StatusLeaving, StatusLeft, StatusFailed} {
		n := 2 + i
		m := member(t, fmt.Sprintf("h%d", n), byte(n), fmt.Sprintf("192.0.2.%d:51820", n), sl("blue", fmt.Sprintf("10.42.%d.0/24", n)))
		m.Status = status
		members = append(members, m)
	}
	st := Compute(local, members, nil)
	if len(st.Peers) != 1 || st.Peers[0].Name != "h2" {
		t.Fatalf("peers = %+v, want only the alive h2", st.Peers)
	}
	for _, r := range st.Routes.Routes {
		if r.Kind == Tunnel && r.Peer != "h2" {
			t.Fatalf("route to a host that is not alive: %+v", r)
		}
	}
}

func TestComputeIgnoresSegmentsWeDoNotHave(t *testing.T) {
	local := localH1(t)
	m := member(t, "h2", 2, "192.0.2.2:51820", sl("blue", "10.42.2.0/24"), sl("red", "10.50.2.0/24"))
	onlyRed := member(t, "h3", 3, "192.0.2.3:51820", sl("red", "10.50.3.0/24"))
	st := Compute(local, []Member{m, onlyRed}, nil)
	p, ok := st.PeerByName("h2")
	if !ok || len(p.AllowedIPs) != 1 || p.AllowedIPs[0] != pfx("10.42.2.0/24") {
		t.Fatalf("h2 = %+v, want only its blue slice", p)
	}
	if _, ok := st.PeerByName("h3"); ok {
		t.Fatal("a host sharing no segment became a peer")
	}
}

func TestComputeWithoutMembersStillFencesSegments(t *testing.T) {
	st := Compute(localH1(t), nil, nil)
	var unreachable int
	for _, r := range st.Routes.Routes {
		if r.Kind == Tunnel {
			t.Fatalf("tunnel route with no peers: %+v", r)
		}
		if r.Kind == Unreachable {
			unreachable++
		}
	}
	if unreachable != 2 {
		t.Fatalf("want an unreachable route per segment so nothing leaks to the underlay, got %d", unreachable)
	}
}

// Compute must leave prev as it found it: callers keep it (the daemon
// after a failed pass) and may pass it again. And each peer's slices are
// its own, even though Compute cuts them from shared arrays.
func TestComputeLeavesPrevAlone(t *testing.T) {
	local := localH1(t)
	var members []Member
	for i := 2; i < 40; i++ {
		members = append(members, member(t, fmt.Sprintf("h%02d", i), byte(i), fmt.Sprintf("192.0.2.%d:51820", i),
			sl("blue", fmt.Sprintf("10.42.%d.0/24", i)), sl("v6", fmt.Sprintf("fd42:0:0:%x::/64", i))))
	}
	// A newcomer claiming h05's slice is refused.
	members = append(members, member(t, "a-intruder", 99, "192.0.2.99:51820", sl("blue", "10.42.5.0/24")))
	prev := Compute(local, members, nil)
	snapshot := Compute(local, members, nil)
	next := slices.Clone(members)
	next[7] = member(t, "h09", 9, "192.0.2.9:51821", sl("blue", "10.42.9.0/24"))
	next = slices.Delete(next, 3, 4)
	first := Compute(local, next, &prev)
	second := Compute(local, next, &prev)
	if !reflect.DeepEqual(prev, snapshot) {
		t.Fatal("Compute changed prev")
	}
	if !reflect.DeepEqual(first, second) {
		t.Fatal("Compute from the same prev gave different states")
	}
	first.Peers[0].Slices = append(first.Peers[0].Slices, sl("blue", "10.42.200.0/24"))
	first.Peers[0].AllowedIPs = append(first.Peers[0].AllowedIPs, pfx("10.42.200.0/24"))
	if !reflect.DeepEqual(first.Peers[1:], second.Peers[1:]) {
		t.Fatal("growing one peer's slices changed another's")
	}
}
