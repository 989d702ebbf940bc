package policy

import (
	"net/netip"
	"slices"

	// Aliased: a policy test declares a function named segment.
	overlay "github.com/meshd/meshd/segment"
)

// Span is an inclusive range of addresses of one family.
type Span struct{ From, To netip.Addr }

// SpanOf is every address of p.
func SpanOf(p netip.Prefix) Span { return Span{p.Masked().Addr(), overlay.LastAddr(p)} }

// String is the address, the prefix or "from-to", whichever is exact.
func (s Span) String() string {
	if s.From == s.To {
		return s.From.String()
	}
	for bits := 0; bits <= s.From.BitLen(); bits++ {
		if p := netip.PrefixFrom(s.From, bits); p.Masked().Addr() == s.From && overlay.LastAddr(p) == s.To {
			return p.String()
		}
	}
	return s.From.String() + "-" + s.To.String()
}

// Part is a piece of a question that has one verdict.
type Part struct {
	Src, Dst Span
	// Traffic is the piece's protocol and ports in the config's notation
	// ("tcp/8081-9000", "tcp" for every port, "icmp", or "other
	// protocols"); "" when the verdict holds for all the traffic asked
	// about.
	Traffic string
	Verdict
}

// ExplainAll answers for every packet from src to dst that traffic
// covers: a range of ports, a bare protocol or "any" (ICMP, TCP and UDP
// on every port, and every other protocol), and every address of src
// and dst. It asks Explain once for each stretch of addresses and ports
// that no entry tells apart, and joins neighbouring stretches with the
// same verdict, so "tcp/8080-9000" comes back as tcp/8080 allowed by a
// rule and tcp/8081-9000 denied by default. Parts come in address order,
// then in the order of the traffic.
func (rs *Ruleset) ExplainAll(src, dst netip.Prefix, traffic PortSpec) []Part {
	if src.Addr().Is4() != dst.Addr().Is4() {
		return []Part{{Src: SpanOf(src), Dst: SpanOf(dst), Verdict: Verdict{Explanation: "no packet has one IPv4 and one IPv6 address"}}}
	}
	var srcCuts, dstCuts []netip.Prefix
	for _, e := range rs.Entries {
		srcCuts = append(srcCuts, e.Src...)
		dstCuts = append(dstCuts, e.Dst...)
	}
	for _, seg := range rs.Segments {
		// A default deny names the segments of both ends.
		srcCuts, dstCuts = append(srcCuts, seg.CIDR), append(dstCuts, seg.CIDR)
	}
	type dstRow struct {
		span  Span
		parts []Part
	}
	type srcRow struct {
		span Span
		dsts []dstRow
	}
	sameRows := func(a, b []dstRow) bool {
		return slices.EqualFunc(a, b, func(x, y dstRow) bool { return x.span == y.span && slices.Equal(x.parts, y.parts) })
	}
	var rows []srcRow
	for _, s := range cut(src, srcCuts) {
		var dsts []dstRow
		for _, d := range cut(dst, dstCuts) {
			parts := rs.explainTraffic(s.From, d.From, traffic)
			if n := len(dsts); n > 0 && slices.Equal(dsts[n-1].parts, parts) {
				dsts[n-1].span.To = d.To
				continue
			}
			dsts = append(dsts, dstRow{d, parts})
		}
		if n := len(rows); n > 0 && sameRows(rows[n-1].dsts, dsts) {
			rows[n-1].span.To = s.To
			continue
		}
		rows = append(rows, srcRow{s, dsts})
	}
	var out []Part
	for _, r := range rows {
		for _, d := range r.dsts {
			for _, p := range d.parts {
				p.Src, p.Dst = r.span, d.span
				out = append(out, p)
			}
		}
	}
	return out
}

// explainTraffic splits the traffic between two addresses by verdict.
// Its parts carry no addresses, so that neighbours compare equal.
func (rs *Ruleset) explainTraffic(src, dst netip.Addr, traffic PortSpec) []Part {
	var parts []Part
	for _, q := range expand(traffic) {
		if q.Proto != ProtoTCP && q.Proto != ProtoUDP {
			parts = append(parts, Part{Traffic: q.display(), Verdict: rs.Explain(src, dst, q.Proto, 0)})
			continue
		}
		var last PortSpec
		for _, r := range rs.portRanges(q) {
			v := rs.Explain(src, dst, q.Proto, r.From)
			if n := len(parts); n > 0 && last.Proto == q.Proto && parts[n-1].Verdict == v {
				last.To = r.To
				parts[n-1].Traffic = last.display()
				continue
			}
			last = r
			parts = append(parts, Part{Traffic: r.display(), Verdict: v})
		}
	}
	if !slices.ContainsFunc(parts, func(p Part) bool { return p.Verdict != parts[0].Verdict }) {
		return []Part{{Verdict: parts[0].Verdict}}
	}
	return parts
}

// expand turns "any" into the protocols it stands for, and a bare
// protocol into its ports from 1 (what ParsePort accepts).
func expand(traffic PortSpec) []PortSpec {
	all := func(proto string) PortSpec { return PortSpec{Proto: proto, From: 1, To: 65535} }
	switch {
	case traffic.Proto == ProtoAny:
		return []PortSpec{{Proto: ProtoICMP}, all(ProtoTCP), all(ProtoUDP), {Proto: ProtoAny}}
	case traffic.allPorts():
		return []PortSpec{all(traffic.Proto)}
	}
	return []PortSpec{traffic}
}

// display is String, but "tcp" for every port a rule can name and
// "other protocols" for what "any" adds to ICMP, TCP and UDP.
func (p PortSpec) display() string {
	switch {
	case p.Proto == ProtoAny:
		return "other protocols"
	case (p.Proto == ProtoTCP || p.Proto == ProtoUDP) && p.From <= 1 && p.To == 65535:
		return p.Proto
	}
	return p.String()
}

// portRanges cuts q's ports where any entry's port spec of the same
// protocol starts or ends.
func (rs *Ruleset) portRanges(q PortSpec) []PortSpec {
	cuts := []int{int(q.From)}
	for _, e := range rs.Entries {
		for _, s := range e.Ports {
			if s.Proto != q.Proto {
				continue
			}
			for _, c := range []int{int(s.From), int(s.To) + 1} {
				if c > int(q.From) && c <= int(q.To) {
					cuts = append(cuts, c)
				}
			}
		}
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	out := make([]PortSpec, len(cuts))
	for i, c := range cuts {
		to := int(q.To)
		if i+1 < len(cuts) {
			to = cuts[i+1] - 1
		}
		out[i] = PortSpec{Proto: q.Proto, From: uint16(c), To: uint16(to)}
	}
	return out
}

// cut splits q where any of the prefixes of its family starts or ends.
func cut(q netip.Prefix, prefixes []netip.Prefix) []Span {
	whole := SpanOf(q)
	points := []netip.Addr{whole.From}
	for _, p := range prefixes {
		if p.Addr().Is4() != whole.From.Is4() || !p.Overlaps(q) {
			continue
		}
		if a := p.Masked().Addr(); a.Compare(whole.From) > 0 {
			points = append(points, a)
		}
		if b := overlay.LastAddr(p); b.Compare(whole.To) < 0 {
			points = append(points, b.Next())
		}
	}
	slices.SortFunc(points, netip.Addr.Compare)
	points = slices.Compact(points)
	out := make([]Span, len(points))
	for i, a := range points {
		to := whole.To
		if i+1 < len(points) {
			to = points[i+1].Prev()
		}
		out[i] = Span{a, to}
	}
	return out
}
