package mesh

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestNthSlice(t *testing.T) {
	cases := []struct {
		cidr string
		bits int
		n    uint64
		want string
	}{
		{"10.42.0.0/16", 24, 0, "10.42.0.0/24"},
		{"10.42.0.0/16", 24, 7, "10.42.7.0/24"},
		{"10.42.0.0/16", 24, 255, "10.42.255.0/24"},
		{"10.42.0.0/16", 26, 5, "10.42.1.64/26"},
		{"10.0.0.0/8", 20, 300, "10.18.192.0/20"},
		{"10.0.0.0/8", 16, 255, "10.255.0.0/16"},
		{"fd42::/48", 64, 1, "fd42:0:0:1::/64"},
		{"fd42::/48", 64, 0xabcd, "fd42:0:0:abcd::/64"},
		{"fd42::/48", 56, 3, "fd42:0:0:300::/56"},
	}
	for _, c := range cases {
		if got := nthSlice(netip.MustParsePrefix(c.cidr), c.bits, c.n); got.String() != c.want {
			t.Errorf("nthSlice(%s, /%d, %d) = %s, want %s", c.cidr, c.bits, c.n, got, c.want)
		}
	}
}

func TestChooseSliceIsDeterministicAndAvoidsTaken(t *testing.T) {
	seg := netip.MustParsePrefix("10.42.0.0/16")
	a, err := ChooseSlice(seg, 24, "h7", nil)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := ChooseSlice(seg, 24, "h7", nil)
	if a != again {
		t.Fatalf("same host, same view: %s then %s", a, again)
	}
	if !contains(seg, a) || a.Bits() != 24 {
		t.Fatalf("chose %s outside %s", a, seg)
	}
	b, _ := ChooseSlice(seg, 24, "h7", []netip.Prefix{a})
	if b == a || b.Overlaps(a) {
		t.Fatalf("re-claim after losing %s chose %s", a, b)
	}
	seen := map[netip.Prefix]bool{}
	var taken []netip.Prefix
	for i := range 50 {
		p, err := ChooseSlice(seg, 24, fmt.Sprintf("host-%d", i), taken)
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("%s chosen twice", p)
		}
		seen[p] = true
		taken = append(taken, p)
	}
}

func TestChooseSliceFullSegment(t *testing.T) {
	seg := netip.MustParsePrefix("10.42.0.0/23")
	taken := []netip.Prefix{netip.MustParsePrefix("10.42.0.0/24"), netip.MustParsePrefix("10.42.1.0/24")}
	if _, err := ChooseSlice(seg, 24, "h1", taken); err == nil {
		t.Fatal("a full segment yielded a slice")
	}
	if _, err := ChooseSlice(seg, 16, "h1", nil); err == nil {
		t.Fatal("a slice wider than its segment was accepted")
	}
}

func TestEarlierClaimWinsEverywhere(t *testing.T) {
	local := localH1(t)
	local.Segments[0].Subnet = pfx("10.42.9.0/24")
	local.Segments[0].ClaimedAt = 50
	earlier := member(t, "h8", 8, "192.0.2.8:51820", Slice{Segment: "blue", Prefix: pfx("10.42.9.0/24"), ClaimedAt: 40})
	st := Compute(local, []Member{earlier}, nil)
	if len(st.Lost) != 1 || st.Lost[0] != "blue" {
		t.Fatalf("lost = %v; h1 claimed later and must yield", st.Lost)
	}
	if _, ok := st.PeerByName("h8"); !ok {
		t.Fatalf("the earlier claimant was not accepted: %+v", st.Rejected)
	}
	for _, r := range st.Routes.Routes {
		if r.Dst == pfx("10.42.9.0/24") && r.Peer != "h8" {
			t.Fatalf("h1 still routes the lost slice locally: %+v", r)
		}
	}

	later := member(t, "h8", 8, "192.0.2.8:51820", Slice{Segment: "blue", Prefix: pfx("10.42.9.0/24"), ClaimedAt: 60})
	st = Compute(local, []Member{later}, nil)
	if len(st.Lost) != 0 {
		t.Fatalf("h1 claimed first and must keep its slice, lost = %v", st.Lost)
	}
	if _, ok := st.PeerByName("h8"); ok {
		t.Fatal("the later claimant was accepted for a slice h1 holds")
	}

	tie := member(t, "h0", 9, "192.0.2.9:51820", Slice{Segment: "blue", Prefix: pfx("10.42.9.0/24"), ClaimedAt: 50})
	if st := Compute(local, []Member{tie}, nil); len(st.Lost) != 1 {
		t.Fatal("on equal Lamport times the lower name (h0 < h1) must win")
	}

	configured := member(t, "h9", 10, "192.0.2.10:51820", sl("blue", "10.42.9.0/24"))
	if st := Compute(local, []Member{configured}, nil); len(st.Lost) != 1 {
		t.Fatal("a configured subnet must beat any claim")
	}
}
