package config

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/meshd/meshd/segment"
)

func (l *loader) segments(c *Config) *Error {
	tables, e := l.segmentTables()
	if e != nil {
		return e
	}
	if len(tables) == 0 {
		return fail(keySegments, "no segments are defined",
			`add at least one [[segments]] table with name and cidr (and subnet, or let the host claim one)`)
	}
	for i, t := range tables {
		seg, e := parseSegment(i, t)
		if e != nil {
			return e
		}
		if e := checkAgainstEarlier(i, seg, c.Segments); e != nil {
			return e
		}
		c.Segments = append(c.Segments, seg)
	}
	return nil
}

// segmentTables unpacks [[segments]], which viper hands back untyped.
func (l *loader) segmentTables() ([]map[string]any, *Error) {
	return l.arrayOfTables(keySegments, "write each segment under its own [[segments]] header (double brackets)")
}

// arrayOfTables unpacks a TOML array of tables ([[key]]), which viper
// hands back untyped, naming the entry that is not a table.
func (l *loader) arrayOfTables(key, fix string) ([]map[string]any, *Error) {
	var items []any
	switch x := l.v.Get(key).(type) {
	case nil:
		return nil, nil
	case []map[string]any:
		return x, nil
	case []any:
		items = x
	default:
		return nil, l.fail(key, "must be an array of tables, not "+describe(x), fix)
	}
	out := make([]map[string]any, 0, len(items))
	for i, item := range items {
		t, ok := item.(map[string]any)
		if !ok {
			return nil, fail(indexedKey(key, i, ""), "must be a table, not "+describe(item), fix)
		}
		out = append(out, t)
	}
	return out, nil
}

// indexedKey names field k of entry i of an array of tables, as errors
// show it: segments[1].subnet.
func indexedKey(key string, i int, k string) string {
	if k == "" {
		return fmt.Sprintf("%s[%d]", key, i)
	}
	return fmt.Sprintf("%s[%d].%s", key, i, k)
}

func segKey(i int, k string) string { return indexedKey(keySegments, i, k) }

func parseSegment(i int, t map[string]any) (Segment, *Error) {
	if e := checkTableKeys(t, segmentKeys, "a segment", func(k string) string { return segKey(i, k) }); e != nil {
		return Segment{}, e
	}
	var seg Segment
	name, e := segString(i, t, segKeyName)
	if e != nil {
		return Segment{}, e
	}
	if !segment.ValidName(name) {
		return Segment{}, fail(segKey(i, segKeyName), fmt.Sprintf("%q is not a valid segment name", name), segment.NameFix)
	}
	seg.Name = name
	if seg.CIDR, e = segPrefix(i, t, segKeyCIDR); e != nil {
		return Segment{}, e
	}
	if e := checkCIDR(i, seg.CIDR); e != nil {
		return Segment{}, e
	}
	if seg.HostPrefix, e = segHostPrefix(i, t, seg.CIDR); e != nil {
		return Segment{}, e
	}
	if _, given := t[segKeySubnet]; !given {
		return seg, nil // claimed at run time
	}
	if seg.Subnet, e = segPrefix(i, t, segKeySubnet); e != nil {
		return Segment{}, e
	}
	return seg, checkSubnet(i, seg)
}

// segHostPrefix reads the length of the slice a host claims when it has
// no configured subnet: /24 of an IPv4 segment, /64 of an IPv6 one.
func segHostPrefix(i int, t map[string]any, cidr netip.Prefix) (int, *Error) {
	def := 24
	if cidr.Addr().Is6() {
		def = 64
	}
	raw, ok := t[segKeyHostPrefix]
	if !ok {
		// A small segment still splits: at least 16 slices.
		return max(def, min(cidr.Bits()+4, cidr.Addr().BitLen())), nil
	}
	n, isInt := raw.(int64)
	if !isInt {
		return 0, fail(segKey(i, segKeyHostPrefix), "must be a whole number, not "+describe(raw), "write e.g. host_prefix = 24")
	}
	if int(n) <= cidr.Bits() || int(n) > cidr.Addr().BitLen() {
		return 0, fail(segKey(i, segKeyHostPrefix), fmt.Sprintf("/%d does not fit segment %s", n, cidr),
			fmt.Sprintf("use a length from %d to %d: a slice must be smaller than its segment", cidr.Bits()+1, cidr.Addr().BitLen()))
	}
	return int(n), nil
}

func segString(i int, t map[string]any, k string) (string, *Error) {
	switch x := t[k].(type) {
	case nil:
		return "", fail(segKey(i, k), "is missing", "every [[segments]] table needs name and cidr")
	case string:
		return strings.TrimSpace(x), nil
	default:
		return "", fail(segKey(i, k), "must be a string, not "+describe(x), "quote the value")
	}
}

// segPrefix insists on canonical prefixes: "10.42.1.0/16" is ambiguous
// (segment 10.42.0.0/16, or a typo for /24?) and guessing would route the
// wrong range.
func segPrefix(i int, t map[string]any, k string) (netip.Prefix, *Error) {
	s, e := segString(i, t, k)
	if e != nil {
		return netip.Prefix{}, e
	}
	key := segKey(i, k)
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if !strings.Contains(s, "/") {
			return netip.Prefix{}, fail(key, fmt.Sprintf("%q has no prefix length", s),
				"write it in CIDR form, e.g. 10.42.0.0/16")
		}
		return netip.Prefix{}, fail(key, fmt.Sprintf("%q is not a valid CIDR prefix", s),
			"write it in CIDR form, e.g. 10.42.0.0/16 or fd42::/48")
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fail(key, fmt.Sprintf("%s has host bits set", p), fmt.Sprintf("did you mean %s?", m))
	}
	return p, nil
}

// checkCIDR refuses ranges meshd's rules would turn against the host: a
// default route sends every packet of the host into a segment table whose
// unreachable route then drops it (on a server, SSH with it).
func checkCIDR(i int, cidr netip.Prefix) *Error {
	key := segKey(i, segKeyCIDR)
	if cidr.Bits() == 0 {
		return fail(key, fmt.Sprintf("%s is a default route: meshd would route every packet of this host into the overlay and cut it off", cidr),
			"use the overlay's own range, e.g. 10.42.0.0/16 or fd42::/48")
	}
	if cidr.Addr().Is4In6() {
		return fail(key, fmt.Sprintf("%s is an IPv4-mapped IPv6 range, which the kernel routes as IPv6 and IPv4 packets never match", cidr),
			"write the IPv4 range itself, e.g. "+netip.PrefixFrom(cidr.Addr().Unmap(), max(cidr.Bits()-96, 0)).Masked().String())
	}
	return nil
}

func checkSubnet(i int, seg Segment) *Error {
	key := segKey(i, segKeySubnet)
	if seg.Subnet.Addr().Is4() != seg.CIDR.Addr().Is4() {
		return fail(key, fmt.Sprintf("%s is not the same address family as cidr %s", seg.Subnet, seg.CIDR),
			"use a slice of "+seg.CIDR.String())
	}
	if seg.Subnet.Bits() < seg.CIDR.Bits() || !seg.CIDR.Contains(seg.Subnet.Addr()) {
		return fail(key, fmt.Sprintf("%s is not inside segment %q's cidr %s", seg.Subnet, seg.Name, seg.CIDR),
			"pick this host's slice from within "+seg.CIDR.String())
	}
	// The segment table holds the CIDR as unreachable and the slice as
	// throw; one prefix cannot be both, and a segment is for several hosts.
	if seg.Subnet == seg.CIDR {
		return fail(key, fmt.Sprintf("%s is the whole segment", seg.Subnet),
			"give this host a smaller slice of "+seg.CIDR.String()+", e.g. a /24")
	}
	return nil
}

// checkAgainstEarlier enforces what routing relies on: each segment owns
// its own table and address range, so names and CIDRs must not collide.
func checkAgainstEarlier(i int, seg Segment, earlier []Segment) *Error {
	for j, prev := range earlier {
		if prev.Name == seg.Name {
			return fail(segKey(i, segKeyName), fmt.Sprintf("%q is already used by %s", seg.Name, segKey(j, "")),
				"give every segment a unique name")
		}
		if prev.CIDR.Overlaps(seg.CIDR) {
			return fail(segKey(i, segKeyCIDR),
				fmt.Sprintf("%s overlaps %s (segment %q)", seg.CIDR, prev.CIDR, prev.Name),
				"segments must use disjoint address ranges")
		}
	}
	return nil
}
