package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestExplain(t *testing.T) {
	rs, err := Compile(testSegs, []Rule{
		{From: "blue", To: "green", Ports: []string{"tcp/8080", "udp/53", "tcp/9000-9100"}},
		{From: "10.43.1.0/24", To: "10.42.7.7/32", Ports: []string{"icmp"}},
		{From: "blue6", To: "green6", Ports: []string{"icmp", "tcp"}},
		{From: "green6", To: "fd42:0:0:5::/64"},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		src, dst, proto string
		port            uint16
		want            string
		label           string
	}{
		// Defaults.
		{"10.42.1.2", "10.42.9.9", "tcp", 22, "allow (default: same segment blue)", "segment:blue"},
		{"10.43.1.2", "10.43.2.2", "any", 0, "allow (default: same segment green)", "segment:green"},
		{"fd43::1", "fd43:0:0:1::1", "udp", 5, "allow (default: same segment green6)", "segment:green6"},
		{"10.43.1.2", "10.42.1.2", "tcp", 8080, "deny (default: different segments green -> blue)", "default-deny"},
		{"10.42.1.2", "192.0.2.1", "tcp", 80, "deny (default: 192.0.2.1 is outside every segment)", "default-deny"},
		{"192.0.2.1", "10.42.1.2", "tcp", 80, "deny (default: 192.0.2.1 is outside every segment)", "default-deny"},
		// Only the named ports and protocols.
		{"10.42.1.2", "10.43.1.2", "tcp", 8080, "allow (rule allow[0]: blue -> green tcp/8080)", "allow[0]"},
		{"10.42.1.2", "10.43.1.2", "TCP", 8080, "allow (rule allow[0]: blue -> green tcp/8080)", "allow[0]"},
		{"10.42.1.2", "10.43.1.2", "tcp", 8081, "deny (default: different segments blue -> green)", "default-deny"},
		{"10.42.1.2", "10.43.1.2", "udp", 8080, "deny (default: different segments blue -> green)", "default-deny"},
		{"10.42.1.2", "10.43.1.2", "udp", 53, "allow (rule allow[0]: blue -> green udp/53)", "allow[0]"},
		{"10.42.1.2", "10.43.1.2", "icmp", 0, "deny (default: different segments blue -> green)", "default-deny"},
		{"10.42.1.2", "10.43.1.2", "any", 0, "deny (default: different segments blue -> green)", "default-deny"},
		// Rules are directional: replies ride on conntrack, new connections do not.
		{"10.43.1.2", "10.42.1.2", "udp", 53, "deny (default: different segments green -> blue)", "default-deny"},
		// Ranges, inclusive at both ends.
		{"10.42.1.2", "10.43.1.2", "tcp", 8999, "deny (default: different segments blue -> green)", "default-deny"},
		{"10.42.1.2", "10.43.1.2", "tcp", 9000, "allow (rule allow[0]: blue -> green tcp/9000-9100)", "allow[0]"},
		{"10.42.1.2", "10.43.1.2", "tcp", 9100, "allow (rule allow[0]: blue -> green tcp/9000-9100)", "allow[0]"},
		{"10.42.1.2", "10.43.1.2", "tcp", 9101, "deny (default: different segments blue -> green)", "default-deny"},
		// CIDR rules and icmp.
		{"10.43.1.9", "10.42.7.7", "icmp", 0, "allow (rule allow[1]: 10.43.1.0/24 -> 10.42.7.7/32 icmp)", "allow[1]"},
		{"10.43.2.9", "10.42.7.7", "icmp", 0, "deny (default: different segments green -> blue)", "default-deny"},
		{"10.43.1.9", "10.42.7.8", "icmp", 0, "deny (default: different segments green -> blue)", "default-deny"},
		{"10.43.1.9", "10.42.7.7", "tcp", 80, "deny (default: different segments green -> blue)", "default-deny"},
		// IPv6: icmp is ICMPv6; a bare protocol covers every port.
		{"fd42::1", "fd43::1", "icmp", 0, "allow (rule allow[2]: blue6 -> green6 icmp)", "allow[2]"},
		{"fd42::1", "fd43::1", "icmpv6", 0, "allow (rule allow[2]: blue6 -> green6 icmp)", "allow[2]"},
		{"fd42::1", "fd43::1", "tcp", 1, "allow (rule allow[2]: blue6 -> green6 tcp)", "allow[2]"},
		{"fd42::1", "fd43::1", "udp", 1, "deny (default: different segments blue6 -> green6)", "default-deny"},
		// A rule without ports allows everything, including unknown protocols.
		{"fd43::1", "fd42:0:0:5::1", "gre", 0, "allow (rule allow[3]: green6 -> fd42:0:0:5::/64 any)", "allow[3]"},
		{"fd43::1", "fd42:0:0:6::1", "gre", 0, "deny (default: different segments green6 -> blue6)", "default-deny"},
		// Families never mix in one packet.
		{"10.42.1.2", "fd42::1", "tcp", 80, "deny (no packet has one IPv4 and one IPv6 address)", ""},
	}
	for _, tc := range tests {
		v := rs.Explain(netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst), tc.proto, tc.port)
		if v.String() != tc.want || v.Label != tc.label || v.Allowed != (tc.want[0] == 'a') {
			t.Errorf("Explain(%s, %s, %s, %d) = %+v (%s)\nwant %s [%s]", tc.src, tc.dst, tc.proto, tc.port, v, v, tc.want, tc.label)
		}
	}
}

// TestExplainFallsThrough pins what the kernel does when no entry
// matches: the policy chain returns and the base chain accepts.
func TestExplainFallsThrough(t *testing.T) {
	rs := &Ruleset{Entries: []Entry{{Label: "x", Src: pfx("10.0.0.0/8"), Action: Drop}}}
	v := rs.Explain(netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), "tcp", 1)
	if !v.Allowed || v.Label != "" {
		t.Errorf("got %+v", v)
	}
	v = rs.Explain(netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("192.0.2.2"), "tcp", 1)
	if v.Allowed || v.Label != "x" || v.String() != "deny (entry x: drop)" {
		t.Errorf("got %+v", v)
	}
}

// ExplainAll answers for a range, a bare protocol or "any" port by port,
// and for a segment address by address, joining neighbours that share a
// verdict.
func TestExplainAll(t *testing.T) {
	rs, err := Compile(testSegs, []Rule{
		{From: "blue", To: "green", Ports: []string{"tcp/8080", "udp/53", "tcp/9000-9100"}},
		{From: "10.43.1.0/24", To: "10.42.7.7/32", Ports: []string{"icmp"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	blueCIDR, greenCIDR := netip.MustParsePrefix("10.42.0.0/16"), netip.MustParsePrefix("10.43.0.0/16")
	pod := func(s string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(s), 32) }
	port := func(s string) PortSpec {
		p, err := ParsePort(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	deny := "deny (default: different segments blue -> green)"
	for _, tc := range []struct {
		name     string
		src, dst netip.Prefix
		traffic  PortSpec
		want     []string
	}{
		{"one port", pod("10.42.1.2"), pod("10.43.1.2"), port("tcp/8080"), []string{
			"10.42.1.2 -> 10.43.1.2 : allow (rule allow[0]: blue -> green tcp/8080)"}},
		{"a range allowed at its ends only", pod("10.42.1.2"), pod("10.43.1.2"), port("tcp/8080-9000"), []string{
			"10.42.1.2 -> 10.43.1.2 tcp/8080: allow (rule allow[0]: blue -> green tcp/8080)",
			"10.42.1.2 -> 10.43.1.2 tcp/8081-8999: " + deny,
			"10.42.1.2 -> 10.43.1.2 tcp/9000: allow (rule allow[0]: blue -> green tcp/9000-9100)"}},
		{"a range inside one rule", pod("10.42.1.2"), pod("10.43.1.2"), port("tcp/9000-9050"), []string{
			"10.42.1.2 -> 10.43.1.2 : allow (rule allow[0]: blue -> green tcp/9000-9100)"}},
		{"any", pod("10.42.1.2"), pod("10.43.1.2"), port("any"), []string{
			"10.42.1.2 -> 10.43.1.2 icmp: " + deny,
			"10.42.1.2 -> 10.43.1.2 tcp/1-8079: " + deny,
			"10.42.1.2 -> 10.43.1.2 tcp/8080: allow (rule allow[0]: blue -> green tcp/8080)",
			"10.42.1.2 -> 10.43.1.2 tcp/8081-8999: " + deny,
			"10.42.1.2 -> 10.43.1.2 tcp/9000-9100: allow (rule allow[0]: blue -> green tcp/9000-9100)",
			"10.42.1.2 -> 10.43.1.2 tcp/9101-65535: " + deny,
			"10.42.1.2 -> 10.43.1.2 udp/1-52: " + deny,
			"10.42.1.2 -> 10.43.1.2 udp/53: allow (rule allow[0]: blue -> green udp/53)",
			"10.42.1.2 -> 10.43.1.2 udp/54-65535: " + deny,
			"10.42.1.2 -> 10.43.1.2 other protocols: " + deny}},
		{"any within a segment", pod("10.42.1.2"), pod("10.42.9.9"), port("any"), []string{
			"10.42.1.2 -> 10.42.9.9 : allow (default: same segment blue)"}},
		{"a bare protocol", pod("10.43.1.2"), pod("10.42.1.2"), port("udp"), []string{
			"10.43.1.2 -> 10.42.1.2 : deny (default: different segments green -> blue)"}},
		{"segments, cut where a rule's CIDR starts and ends", greenCIDR, blueCIDR, port("icmp"), []string{
			"10.43.0.0/24 -> 10.42.0.0/16 : deny (default: different segments green -> blue)",
			"10.43.1.0/24 -> 10.42.0.0-10.42.7.6 : deny (default: different segments green -> blue)",
			"10.43.1.0/24 -> 10.42.7.7 : allow (rule allow[1]: 10.43.1.0/24 -> 10.42.7.7/32 icmp)",
			"10.43.1.0/24 -> 10.42.7.8-10.42.255.255 : deny (default: different segments green -> blue)",
			"10.43.2.0-10.43.255.255 -> 10.42.0.0/16 : deny (default: different segments green -> blue)"}},
		{"families never mix", blueCIDR, netip.MustParsePrefix("fd42::/48"), port("any"), []string{
			"10.42.0.0/16 -> fd42::/48 : deny (no packet has one IPv4 and one IPv6 address)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, p := range rs.ExplainAll(tc.src, tc.dst, tc.traffic) {
				got = append(got, fmt.Sprintf("%s -> %s %s: %s", p.Src, p.Dst, p.Traffic, p.Verdict))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}
