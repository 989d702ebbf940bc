package policy

import (
	"net/netip"
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
