// Package policy turns meshd's [[allow]] rules into nftables rules that
// filter overlay traffic crossing the WireGuard interface, and explains
// verdicts from the very same compiled entries so a preview never drifts
// from what the kernel enforces.
package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Rule is one [[allow]] table exactly as written in the config.
type Rule struct {
	From  string   // a segment name or a canonical CIDR inside a segment
	To    string   // likewise
	Ports []string // "tcp/8080", "udp/53", "tcp/8000-8100", "icmp"; empty: all traffic
}

// Segment is the part of an overlay segment that policy needs.
type Segment struct {
	Name string
	CIDR netip.Prefix
}

// Protocols a PortSpec may name.
const (
	ProtoTCP  = "tcp"
	ProtoUDP  = "udp"
	ProtoICMP = "icmp" // ICMP on IPv4, ICMPv6 on IPv6
	ProtoAny  = "any"  // every protocol
)

// PortSpec is one parsed entry of a rule's ports. From and To are only
// meaningful for tcp and udp; 0-65535 means every port of the protocol.
type PortSpec struct {
	Proto    string
	From, To uint16
}

// String renders the spec in the config's own notation, so messages quote
// what the operator would write.
func (p PortSpec) String() string {
	switch {
	case p.Proto != ProtoTCP && p.Proto != ProtoUDP:
		return p.Proto
	case p.allPorts():
		return p.Proto
	case p.From == p.To:
		return fmt.Sprintf("%s/%d", p.Proto, p.From)
	default:
		return fmt.Sprintf("%s/%d-%d", p.Proto, p.From, p.To)
	}
}

// allPorts lets Render skip the port comparison entirely, which is also
// what makes a bare "tcp" match port 0 the same way in Explain.
func (p PortSpec) allPorts() bool { return p.From == 0 && p.To == 65535 }

// matches must agree exactly with portExprs: Explain relies on it.
func (p PortSpec) matches(proto string, port uint16) bool {
	switch p.Proto {
	case ProtoAny:
		return true
	case ProtoICMP:
		return proto == ProtoICMP
	case ProtoTCP, ProtoUDP:
		return proto == p.Proto && p.From <= port && port <= p.To
	}
	return false
}

// RuleError describes one bad value in an [[allow]] rule in terms the
// config package can turn into its own error without parsing strings.
type RuleError struct {
	// Index is the rule's position in the list given to Compile, -1 when
	// the error came from ParseRule or ParsePort alone.
	Index int
	// Field is "from", "to" or "ports[i]"; empty for a bare ParsePort.
	Field   string
	Problem string
	Fix     string
}

// Key names the value at fault the way the config file spells it
// ("allow[2].ports[1]"), so an operator can find it.
func (e *RuleError) Key() string {
	switch {
	case e.Index < 0:
		return e.Field
	case e.Field == "":
		return fmt.Sprintf("allow[%d]", e.Index)
	default:
		return fmt.Sprintf("allow[%d].%s", e.Index, e.Field)
	}
}

func (e *RuleError) Error() string {
	msg := e.Problem
	if k := e.Key(); k != "" {
		msg = k + ": " + msg
	}
	if e.Fix != "" {
		msg += "; " + e.Fix
	}
	return msg
}

func ruleErr(field, problem, fix string) *RuleError {
	return &RuleError{Index: -1, Field: field, Problem: problem, Fix: fix}
}

const portFix = `use "tcp/PORT", "udp/PORT", a range such as "tcp/8000-8100", "icmp" or "any"`

// ParsePort parses one ports entry (also the CLI's --port). Protocol names
// are case-insensitive; a bare "tcp" or "udp" means every port.
func ParsePort(s string) (PortSpec, error) {
	raw := strings.TrimSpace(s)
	proto, ports, hasPorts := strings.Cut(strings.ToLower(raw), "/")
	switch proto {
	case ProtoTCP, ProtoUDP:
		if !hasPorts {
			return PortSpec{Proto: proto, From: 0, To: 65535}, nil
		}
		return parsePortRange(raw, proto, ports)
	case ProtoICMP, ProtoAny:
		if hasPorts {
			return PortSpec{}, ruleErr("", fmt.Sprintf("%q: %s has no ports", raw, proto),
				fmt.Sprintf("write just %q", proto))
		}
		return PortSpec{Proto: proto}, nil
	case "icmpv6", "ipv6-icmp", "icmp6":
		return PortSpec{}, ruleErr("", fmt.Sprintf("%q is not a protocol meshd knows", raw),
			`write "icmp": it means ICMPv6 for IPv6 segments`)
	case "":
		return PortSpec{}, ruleErr("", fmt.Sprintf("%q has no protocol", raw), portFix)
	}
	if _, err := strconv.ParseUint(proto, 10, 16); err == nil && !hasPorts {
		return PortSpec{}, ruleErr("", fmt.Sprintf("%q has no protocol", raw),
			fmt.Sprintf("did you mean \"tcp/%s\" or \"udp/%s\"?", proto, proto))
	}
	return PortSpec{}, ruleErr("", fmt.Sprintf("%q: unknown protocol %q", raw, proto), portFix)
}

func parsePortRange(raw, proto, ports string) (PortSpec, error) {
	lo, hi, isRange := strings.Cut(ports, "-")
	from, err := parsePortNumber(raw, lo)
	if err != nil {
		return PortSpec{}, err
	}
	to := from
	if isRange {
		if to, err = parsePortNumber(raw, hi); err != nil {
			return PortSpec{}, err
		}
	}
	if from > to {
		return PortSpec{}, ruleErr("", fmt.Sprintf("%q is an inverted range", raw),
			fmt.Sprintf("did you mean \"%s/%d-%d\"?", proto, to, from))
	}
	return PortSpec{Proto: proto, From: from, To: to}, nil
}

func parsePortNumber(raw, s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, ruleErr("", fmt.Sprintf("%q: %q is not a port number", raw, s), portFix)
	}
	if n < 1 || n > 65535 {
		return 0, ruleErr("", fmt.Sprintf("%q: port %d is out of range", raw, n), "use ports between 1 and 65535")
	}
	return uint16(n), nil
}

// ParseRule resolves one rule against the segments. The entry it returns
// has no Label yet: only Compile knows the rule's position.
func ParseRule(r Rule, segs []Segment) (Entry, error) {
	from, err := parseEnd("from", r.From, segs)
	if err != nil {
		return Entry{}, err
	}
	to, err := parseEnd("to", r.To, segs)
	if err != nil {
		return Entry{}, err
	}
	// A packet has one family, so a mixed rule could never match; saying
	// so beats silently installing a dead rule.
	if from.prefix.Addr().Is4() != to.prefix.Addr().Is4() {
		return Entry{}, ruleErr("to", fmt.Sprintf("%s (%s) and from %s (%s) are different address families",
			to.name, familyName(to.prefix), from.name, familyName(from.prefix)),
			"a packet is either IPv4 or IPv6, so write separate rules for IPv4 and IPv6 segments")
	}
	e := Entry{
		From: from.name, To: to.name,
		Src:    []netip.Prefix{from.prefix},
		Dst:    []netip.Prefix{to.prefix},
		Action: Accept,
	}
	for i, s := range r.Ports {
		p, err := ParsePort(s)
		if err != nil {
			var re *RuleError
			if errors.As(err, &re) {
				re.Field = fmt.Sprintf("ports[%d]", i)
			}
			return Entry{}, err
		}
		e.Ports = append(e.Ports, p)
	}
	return e, nil
}

func familyName(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

type end struct {
	name   string // as messages show it: segment name or prefix
	prefix netip.Prefix
}

func parseEnd(field, s string, segs []Segment) (end, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return end{}, ruleErr(field, "is missing",
			fmt.Sprintf(`name a segment or a CIDR inside one, e.g. %s = "%s"`, field, exampleName(segs)))
	}
	if strings.Contains(s, "/") {
		p, err := parseCIDR(field, s, segs)
		return end{name: p.String(), prefix: p}, err
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return end{}, ruleErr(field, fmt.Sprintf("%q is an address, not a CIDR", s),
			fmt.Sprintf("write %s", netip.PrefixFrom(a, a.BitLen())))
	}
	for _, seg := range segs {
		if seg.Name == s {
			return end{name: s, prefix: seg.CIDR}, nil
		}
	}
	return end{}, ruleErr(field, fmt.Sprintf("%q is not a defined segment", s), unknownSegmentFix(s, segs))
}

func exampleName(segs []Segment) string {
	if len(segs) == 0 {
		return "blue"
	}
	return segs[0].Name
}

func unknownSegmentFix(s string, segs []Segment) string {
	for _, seg := range segs {
		if editDistance(s, seg.Name) <= 2 {
			return fmt.Sprintf("did you mean %q?", seg.Name)
		}
	}
	return "use a segment name (" + segmentNames(segs) + ") or a CIDR inside a segment"
}

func segmentNames(segs []Segment) string {
	names := make([]string, len(segs))
	for i, seg := range segs {
		names[i] = seg.Name
	}
	return strings.Join(names, ", ")
}

// parseCIDR insists on canonical prefixes inside one segment: rules only
// govern overlay traffic, and "10.42.1.7/24" is more likely a typo than an
// intent to cover 10.42.1.0/24.
func parseCIDR(field, s string, segs []Segment) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, ruleErr(field, fmt.Sprintf("%q is not a valid CIDR", s),
			"write it in CIDR form, e.g. 10.42.1.0/24 or fd42:0:0:1::/64")
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, ruleErr(field, fmt.Sprintf("%s has host bits set", p), fmt.Sprintf("did you mean %s?", m))
	}
	if _, ok := segmentOfPrefix(p, segs); ok {
		return p, nil
	}
	for _, seg := range segs {
		if p.Overlaps(seg.CIDR) {
			return netip.Prefix{}, ruleErr(field, fmt.Sprintf("%s is larger than segment %q (%s)", p, seg.Name, seg.CIDR),
				fmt.Sprintf("name the segment instead (%s = %q), or use a prefix inside it", field, seg.Name))
		}
	}
	return netip.Prefix{}, ruleErr(field, fmt.Sprintf("%s is not inside any segment", p),
		"rules only cover overlay traffic, so use a segment name or a prefix inside one of: "+segmentCIDRs(segs))
}

func segmentCIDRs(segs []Segment) string {
	parts := make([]string, len(segs))
	for i, seg := range segs {
		parts[i] = fmt.Sprintf("%s (%s)", seg.Name, seg.CIDR)
	}
	return strings.Join(parts, ", ")
}

func segmentOfPrefix(p netip.Prefix, segs []Segment) (Segment, bool) {
	for _, seg := range segs {
		if seg.CIDR.Bits() <= p.Bits() && seg.CIDR.Contains(p.Addr()) {
			return seg, true
		}
	}
	return Segment{}, false
}

// editDistance is plain Levenshtein; good enough to catch "blu" for "blue".
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
