package policy

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// fastPathRuleset has a segment the fast path can serve (blue), one an
// [[allow]] rule reaches into (green: allow[1] runs inside it), and one
// holding link-scope multicast (mc).
func fastPathRuleset(t *testing.T) *Ruleset {
	t.Helper()
	segs := []Segment{testSegs[0], testSegs[1], {Name: "mc", CIDR: netip.MustParsePrefix("ff00::/8")}}
	rs, err := Compile(segs, []Rule{
		{From: "blue", To: "green", Ports: []string{"tcp/8080"}},
		{From: "10.43.1.0/24", To: "green", Ports: []string{"tcp/22"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rs.Untracked = true
	return rs
}

// TestFastPathIsOptIn: without Untracked the table has no notrack chains
// and the policy chain keeps its conntrack rules first, as before.
func TestFastPathIsOptIn(t *testing.T) {
	rs := fastPathRuleset(t)
	rs.Untracked = false
	plan, err := Render(rs, "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range plan.Chains {
		if c.Name == NotrackPrerouting || c.Name == NotrackOutput {
			t.Errorf("chain %s rendered without the fast path", c.Name)
		}
	}
	if first := labelOf(chainRules(plan, PolicyChain)[0].UserData); first != "established" {
		t.Errorf("the policy chain starts with %q, want the conntrack rules first", first)
	}
}

func chainRules(plan *Plan, chain string) []*nftables.Rule {
	var out []*nftables.Rule
	for _, r := range plan.Rules {
		if r.Chain.Name == chain {
			out = append(out, r)
		}
	}
	return out
}

// TestFastPathOrder: a segment's accept moves ahead of the conntrack rules
// only where no earlier entry could have matched its packets, and every
// segment's traffic is untracked.
func TestFastPathOrder(t *testing.T) {
	plan, err := Render(fastPathRuleset(t), "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, r := range chainRules(plan, PolicyChain) {
		if l := labelOf(r.UserData); len(labels) == 0 || labels[len(labels)-1] != l {
			labels = append(labels, l)
		}
	}
	want := []string{"segment:blue", "established", "invalid", "link-local", "allow[0]", "allow[1]", "segment:green", "segment:mc", "default-deny"}
	if !slices.Equal(labels, want) {
		t.Errorf("policy chain order %q, want %q", labels, want)
	}
	if n := len(chainRules(plan, NotrackPrerouting)); n != 2*3 {
		t.Errorf("%d prerouting notrack rules, want 2 per segment (from the tunnel, towards it)", n)
	}
	if n := len(chainRules(plan, NotrackOutput)); n != 3 {
		t.Errorf("%d output notrack rules, want 1 per segment", n)
	}
}

// TestFastPathKeepsExplainExact: with the segment accepts moved, the
// policy chain still decides every first packet as Explain does, with
// the same label, including inside a segment an [[allow]] rule reaches.
func TestFastPathKeepsExplainExact(t *testing.T) {
	rs := fastPathRuleset(t)
	plan, err := Render(rs, "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	chain := chainRules(plan, PolicyChain)
	// ff02::/16 stays out: Explain does not model the link-local drop.
	addrs := []string{"10.42.1.1", "10.42.9.9", "10.43.1.5", "10.43.2.5", "192.0.2.1", "ff05::2", "ff0e::3", "fd42::1"}
	for _, s := range addrs {
		for _, d := range addrs {
			src, dst := netip.MustParseAddr(s), netip.MustParseAddr(d)
			if src.Is4() != dst.Is4() {
				continue
			}
			for _, port := range []uint16{22, 8080, 9} {
				v := rs.Explain(src, dst, "tcp", port)
				ok, label := evalChain(t, chain, packet{src, dst, unix.IPPROTO_TCP, port})
				if v.Allowed != ok || v.Label != label {
					t.Errorf("%s -> %s tcp/%d: Explain says %v (%s), rules say %v (%s)", src, dst, port, v.Allowed, v.Label, ok, label)
				}
			}
		}
	}
}
