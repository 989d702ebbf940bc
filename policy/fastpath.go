package policy

import (
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The same-segment fast path.
//
// Traffic inside one segment is allowed in both directions whatever the
// rules say, so it needs no connection state: neither replies nor new
// connections depend on who spoke first. Tracking it anyway costs every
// packet through the tunnel a conntrack lookup, a state update (for TCP,
// window tracking) and, for a flow's first packet, an entry to create
// and later expire. So same-segment packets on the tunnel are marked
// untracked before conntrack sees them, in chains at raw priority, and
// the policy chain accepts them before its conntrack rules. Cross-segment
// traffic is tracked as before: replies to allowed flows pass, new
// connections the other way do not.
//
// Untracked packets also skip everything else that needs conntrack on
// the host: NAT, and "ct state established" rules in other tables.
// Same-segment overlay traffic has no business being NATed, and a host
// firewall with a drop policy must accept the overlay explicitly.
const (
	// NotrackPrerouting marks same-segment packets arriving from the
	// tunnel, and those a pod sends that will leave through it.
	NotrackPrerouting = "notrack-prerouting"
	// NotrackOutput marks same-segment packets the host itself sends
	// into the tunnel.
	NotrackOutput = "notrack-output"
)

// Labels of the notrack rules (comments only: they count nothing).
const (
	labelNotrackIn  = "notrack-in"
	labelNotrackOut = "notrack-out"
)

// linkLocalMulticast is what LabelLinkLocal drops.
var linkLocalMulticast = netip.MustParsePrefix("ff02::/16")

// sameSegment reports whether e is a segment's own accept: every packet
// between two addresses of one prefix, on any port. Compile emits one per
// segment; a hand-made Ruleset may have others, which are treated alike.
func sameSegment(e *Entry) (netip.Prefix, bool) {
	if e.Action != Accept || len(e.Src) != 1 || len(e.Dst) != 1 || e.Src[0] != e.Dst[0] || len(e.Ports) != 0 ||
		!e.Src[0].IsValid() || e.Src[0].Bits() == 0 {
		return netip.Prefix{}, false
	}
	return e.Src[0], true
}

// fastPath lists, by index into entries, the same-segment entries whose
// accept can move to the head of the policy chain without changing any
// packet's verdict or the label that counts it: no earlier entry can
// match a packet inside the segment (an [[allow]] rule within one
// segment would; the segment's accept then keeps its place after the
// rules, so that rule keeps counting what it matched and Explain stays
// exact), and the segment holds no link-scope multicast. The conntrack
// rules it moves ahead of are what the fast path exists to skip.
func fastPath(entries []Entry) []int {
	var out []int
	for i := range entries {
		p, ok := sameSegment(&entries[i])
		if !ok || p.Overlaps(linkLocalMulticast) {
			continue
		}
		if !slices.ContainsFunc(entries[:i], func(e Entry) bool { return mayMatchWithin(&e, p) }) {
			out = append(out, i)
		}
	}
	return out
}

// mayMatchWithin reports whether e could match a packet whose source and
// destination both lie in p.
func mayMatchWithin(e *Entry, p netip.Prefix) bool {
	overlaps := func(ps []netip.Prefix) bool {
		return len(ps) == 0 || slices.ContainsFunc(ps, func(q netip.Prefix) bool { return !q.IsValid() || q.Overlaps(p) })
	}
	return overlaps(e.Src) && overlaps(e.Dst)
}

// notrackChains are the raw-priority base chains, hooked before
// conntrack (priority -200) sees a packet.
func notrackChains(t *nftables.Table) (pre, out *nftables.Chain) {
	pre = baseChain(t, NotrackPrerouting, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)
	out = baseChain(t, NotrackOutput, nftables.ChainHookOutput, nftables.ChainPriorityRaw)
	return pre, out
}

// addNotrack renders the notrack rules for every same-segment entry
// (untracked packets of a segment whose accept could not move to the
// head still reach it, after walking the rules before it).
//
// These chains see every packet of the host, the tunnel's own UDP on the
// underlay included, so each rule tests the addresses first: anything
// outside the segment fails after two comparisons, before the costlier
// interface name is loaded. In prerouting the packet's way out is not
// known yet, so a pod's packet is recognised by a route lookup: fib
// daddr . mark oifname, the lookup routing is about to make (policy
// rules on source and mark included), paid only by same-segment packets
// that did not come from the tunnel (those are accepted, which ends only
// this chain, by the rule before). In output the route is known.
func (p *Plan) addNotrack(pre, out *nftables.Chain, iface string, entries []Entry) {
	for i := range entries {
		seg, ok := sameSegment(&entries[i])
		if !ok {
			continue
		}
		within := sameSegmentExprs(seg)
		exprs := func(more ...expr.Any) []expr.Any { return append(slices.Clone(within), more...) }
		iif := ifNameExprs(expr.MetaKeyIIFNAME, iface)
		p.add(pre, labelNotrackIn, exprs(iif[0], iif[1], &expr.Notrack{}, &expr.Verdict{Kind: expr.VerdictAccept})...)
		p.add(pre, labelNotrackOut, exprs(&expr.Fib{Register: 1, FlagDADDR: true, FlagMARK: true, ResultOIFNAME: true},
			ifNameCmp(iface), &expr.Notrack{})...)
		oif := ifNameExprs(expr.MetaKeyOIFNAME, iface)
		p.add(out, labelNotrackOut, exprs(oif[0], oif[1], &expr.Notrack{})...)
	}
}

// sameSegmentExprs matches packets from and to seg.
func sameSegmentExprs(seg netip.Prefix) []expr.Any {
	nfproto := byte(unix.NFPROTO_IPV4)
	if seg.Addr().Is6() {
		nfproto = unix.NFPROTO_IPV6
	}
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
	}
	exprs = append(exprs, addrExprs(seg, true)...)
	return append(exprs, addrExprs(seg, false)...)
}
