package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Verdict is Explain's answer for the first packet of a new connection.
type Verdict struct {
	Allowed     bool
	Label       string // the deciding entry's label; empty if none matched
	Explanation string
}

// String is the CLI's one-line form, e.g.
// "allow (rule allow[0]: blue -> green tcp/8080)".
func (v Verdict) String() string {
	word := "deny"
	if v.Allowed {
		word = "allow"
	}
	return word + " (" + v.Explanation + ")"
}

// Explain walks the same ordered entries Render turns into kernel rules,
// so the answer is what enforcement does for a new connection (replies of
// allowed connections pass by conntrack and are not modelled). proto is
// "tcp", "udp" or "icmp" ("icmpv6" is accepted for IPv6); anything else,
// including "any", stands for a protocol no port spec names, so only
// entries without ports match it. port is ignored for non-tcp/udp.
func (rs *Ruleset) Explain(src, dst netip.Addr, proto string, port uint16) Verdict {
	if src.Is4() != dst.Is4() {
		return Verdict{Explanation: "no packet has one IPv4 and one IPv6 address"}
	}
	proto = normProto(proto)
	for i := range rs.Entries {
		e := &rs.Entries[i]
		if p, ok := e.match(src, dst, proto, port); ok {
			return rs.verdict(e, p, src, dst)
		}
	}
	// The regular chain falls through to the base chain's accept policy.
	return Verdict{Allowed: true, Explanation: "no entry matched; the base chain's policy accepts"}
}

func normProto(proto string) string {
	switch p := strings.ToLower(strings.TrimSpace(proto)); p {
	case "icmpv6", "ipv6-icmp", "icmp6":
		return ProtoICMP
	default:
		return p
	}
}

// match returns the port spec that matched (zero when the entry has no
// ports), mirroring entryRules' product of Src × Dst × Ports.
func (e *Entry) match(src, dst netip.Addr, proto string, port uint16) (PortSpec, bool) {
	if !anyContains(e.Src, src) || !anyContains(e.Dst, dst) {
		return PortSpec{}, false
	}
	if len(e.Ports) == 0 {
		return PortSpec{}, true
	}
	for _, p := range e.Ports {
		if p.matches(proto, port) {
			return p, true
		}
	}
	return PortSpec{}, false
}

func anyContains(ps []netip.Prefix, a netip.Addr) bool {
	if len(ps) == 0 {
		return true
	}
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (rs *Ruleset) verdict(e *Entry, p PortSpec, src, dst netip.Addr) Verdict {
	v := Verdict{Allowed: e.Action == Accept, Label: e.Label}
	switch Reason(e.Label) {
	case "rule":
		traffic := "any"
		if p.Proto != "" {
			traffic = p.String()
		}
		v.Explanation = fmt.Sprintf("rule %s: %s -> %s %s", e.Label, e.From, e.To, traffic)
	case "same-segment":
		v.Explanation = "default: same segment " + e.From
	case LabelDefaultDeny:
		v.Explanation = "default: " + rs.describeDefault(src, dst)
	default:
		v.Explanation = fmt.Sprintf("entry %s: %s", e.Label, e.Action)
	}
	return v
}

func (rs *Ruleset) describeDefault(src, dst netip.Addr) string {
	s, sok := rs.segmentOf(src)
	d, dok := rs.segmentOf(dst)
	switch {
	case !sok:
		return fmt.Sprintf("%s is outside every segment", src)
	case !dok:
		return fmt.Sprintf("%s is outside every segment", dst)
	case s == d:
		// Only reachable with hand-built rulesets that lack segment entries.
		return "no rule allows it within segment " + s
	default:
		return fmt.Sprintf("different segments %s -> %s", s, d)
	}
}

func (rs *Ruleset) segmentOf(a netip.Addr) (string, bool) {
	for _, seg := range rs.Segments {
		if seg.CIDR.Contains(a) {
			return seg.Name, true
		}
	}
	return "", false
}
