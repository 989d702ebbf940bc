package policy

import (
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// ctMask is the ct state mask as the kernel wants it: host byte order.
func ctMask(bits uint32) string { return hex.EncodeToString(binaryutil.NativeEndian.PutUint32(bits)) }

// TestRenderGolden pins the complete table for a small policy. The
// expected text was checked against `nft list ruleset`, which decodes the
// rules as: iifname "mesh0" jump policy; ct state established,related
// accept; ip saddr 10.42.0.0/16 ip daddr 10.43.0.0/16 tcp dport 8080
// accept; ... udp dport 53-60; meta l4proto icmp; ip6 ... meta l4proto
// ipv6-icmp; ip6 saddr ... ip6 daddr fd43::7/128 meta l4proto tcp. The
// mss rule is expression for expression what `nft --debug=netlink add
// rule inet meshd mss oifname "mesh0" tcp flags & (syn | rst) == syn
// counter tcp option maxseg size set rt mtu` prints (nft 1.0.6), which
// TestClampNetns also checks against the kernel. nft lists the fast path
// as: ip saddr 10.42.0.0/16 ip daddr 10.42.0.0/16 accept at the head of
// the policy chain; ip saddr 10.42.0.0/16 ip daddr 10.42.0.0/16 iifname
// "mesh0" notrack accept and ip saddr ... fib daddr . mark oifname
// "mesh0" notrack in notrack-prerouting; ip saddr ... oifname "mesh0"
// notrack in notrack-output.
func TestRenderGolden(t *testing.T) {
	rs, err := Compile([]Segment{testSegs[0], testSegs[1], testSegs[2], testSegs[3]}, []Rule{
		{From: "blue", To: "green", Ports: []string{"tcp/8080", "udp/53-60", "icmp"}},
		{From: "blue6", To: "fd43::7/128", Ports: []string{"icmp", "tcp"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rs.Untracked = true // the golden shows the fast path too; TestFastPathIsOptIn the default
	rs.Local = []netip.Prefix{netip.MustParsePrefix("10.42.1.0/24"), netip.MustParsePrefix("fd42:0:0:1::/64")}
	plan, err := Render(rs, "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	const (
		ifname    = "0x6d657368300000000000000000000000" // "mesh0" NUL-padded to IFNAMSIZ
		v4        = "meta load nfproto => reg 1; cmp eq reg 1 0x02; "
		v6        = "meta load nfproto => reg 1; cmp eq reg 1 0x0a; "
		blueS     = "payload load 4b @ network header + 12 => reg 1; bitwise reg 1 = (reg 1 & 0xffff0000) ^ 0x00000000; cmp eq reg 1 0x0a2a0000; "
		blueD     = "payload load 4b @ network header + 16 => reg 1; bitwise reg 1 = (reg 1 & 0xffff0000) ^ 0x00000000; cmp eq reg 1 0x0a2a0000; "
		greenS    = "payload load 4b @ network header + 12 => reg 1; bitwise reg 1 = (reg 1 & 0xffff0000) ^ 0x00000000; cmp eq reg 1 0x0a2b0000; "
		greenD    = "payload load 4b @ network header + 16 => reg 1; bitwise reg 1 = (reg 1 & 0xffff0000) ^ 0x00000000; cmp eq reg 1 0x0a2b0000; "
		mask48    = "bitwise reg 1 = (reg 1 & 0xffffffffffff00000000000000000000) ^ 0x00000000000000000000000000000000; "
		b6S       = "payload load 16b @ network header + 8 => reg 1; " + mask48 + "cmp eq reg 1 0xfd420000000000000000000000000000; "
		b6D       = "payload load 16b @ network header + 24 => reg 1; " + mask48 + "cmp eq reg 1 0xfd420000000000000000000000000000; "
		g6S       = "payload load 16b @ network header + 8 => reg 1; " + mask48 + "cmp eq reg 1 0xfd430000000000000000000000000000; "
		g6D       = "payload load 16b @ network header + 24 => reg 1; " + mask48 + "cmp eq reg 1 0xfd430000000000000000000000000000; "
		host6D    = "payload load 16b @ network header + 24 => reg 1; cmp eq reg 1 0xfd430000000000000000000000000007; "
		dport     = "payload load 2b @ transport header + 2 => reg 1; "
		accept    = "counter; accept"
		notTunnel = "meta load oifname => reg 1; cmp neq reg 1 " + ifname + "; counter; drop"
	)
	want := strings.Join([]string{
		"table inet meshd",
		"chain policy",
		"chain forward {type filter hook forward priority 0 policy accept}",
		"chain input {type filter hook input priority 0 policy accept}",
		"chain output {type filter hook output priority 0 policy accept}",
		"chain mss {type filter hook forward priority -150 policy accept}",
		"chain guard {type filter hook postrouting priority 0 policy accept}",
		"chain notrack-prerouting {type filter hook prerouting priority -300 policy accept}",
		"chain notrack-output {type filter hook output priority -300 policy accept}",
		// Transit is judged by the hosts at both ends, not the gateway.
		"forward transit: meta load iifname => reg 1; cmp eq reg 1 " + ifname + "; meta load oifname => reg 1; cmp eq reg 1 " + ifname + "; counter; accept",
		"forward tunnel-in: meta load iifname => reg 1; cmp eq reg 1 " + ifname + "; jump policy",
		"forward tunnel-out: meta load oifname => reg 1; cmp eq reg 1 " + ifname + "; jump policy",
		"input tunnel-in: meta load iifname => reg 1; cmp eq reg 1 " + ifname + "; jump policy",
		"output tunnel-out: meta load oifname => reg 1; cmp eq reg 1 " + ifname + "; jump policy",
		"policy segment:blue: " + v4 + blueS + blueD + accept,
		"policy segment:green: " + v4 + greenS + greenD + accept,
		"policy segment:blue6: " + v6 + b6S + b6D + accept,
		"policy segment:green6: " + v6 + g6S + g6D + accept,
		"policy established: ct load state => reg 1; bitwise reg 1 = (reg 1 & 0x" + ctMask(6) + ") ^ 0x00000000; cmp neq reg 1 0x00000000; " + accept,
		"policy invalid: ct load state => reg 1; bitwise reg 1 = (reg 1 & 0x" + ctMask(1) + ") ^ 0x00000000; cmp neq reg 1 0x00000000; counter; drop",
		"policy link-local: " + v6 + "payload load 16b @ network header + 24 => reg 1; bitwise reg 1 = (reg 1 & 0xffff" + strings.Repeat("0", 28) + ") ^ 0x" + strings.Repeat("0", 32) +
			"; cmp eq reg 1 0xff02" + strings.Repeat("0", 28) + "; counter; drop",
		"policy allow[0]: " + v4 + blueS + greenD + "meta load l4proto => reg 1; cmp eq reg 1 0x06; " + dport + "cmp eq reg 1 0x1f90; " + accept,
		"policy allow[0]: " + v4 + blueS + greenD + "meta load l4proto => reg 1; cmp eq reg 1 0x11; " + dport + "cmp gte reg 1 0x0035; cmp lte reg 1 0x003c; " + accept,
		"policy allow[0]: " + v4 + blueS + greenD + "meta load l4proto => reg 1; cmp eq reg 1 0x01; " + accept,
		"policy allow[1]: " + v6 + b6S + host6D + "meta load l4proto => reg 1; cmp eq reg 1 0x3a; " + accept,
		"policy allow[1]: " + v6 + b6S + host6D + "meta load l4proto => reg 1; cmp eq reg 1 0x06; " + accept,
		"policy default-deny: counter; drop",
		"mss mss-clamp: meta load oifname => reg 1; cmp eq reg 1 " + ifname + "; meta load l4proto => reg 1; cmp eq reg 1 0x06; " +
			"payload load 1b @ transport header + 13 => reg 1; bitwise reg 1 = (reg 1 & 0x06) ^ 0x00; cmp eq reg 1 0x02; counter; " +
			"rt load tcpmss => reg 1; byteorder reg 1 = hton(reg 1, 2, 2); exthdr write tcpopt reg 1 => 2b @ 2 + 2",
		// Everything addressed into a segment, outside this host's own
		// slices, that leaves by another interface than the tunnel.
		"guard no-plaintext: " + v4 + blueD + "payload load 4b @ network header + 16 => reg 1; bitwise reg 1 = (reg 1 & 0xffffff00) ^ 0x00000000; cmp neq reg 1 0x0a2a0100; " + notTunnel,
		"guard no-plaintext: " + v4 + greenD + notTunnel,
		"guard no-plaintext: " + v6 + b6D + "payload load 16b @ network header + 24 => reg 1; bitwise reg 1 = (reg 1 & 0xffffffffffffffff0000000000000000) ^ 0x00000000000000000000000000000000; cmp neq reg 1 0xfd420000000000010000000000000000; " + notTunnel,
		"guard no-plaintext: " + v6 + g6D + notTunnel,
		notrack(v4+blueS+blueD, ifname), notrack(v4+greenS+greenD, ifname), notrack(v6+b6S+b6D, ifname), notrack(v6+g6S+g6D, ifname),
	}, "\n") + "\n"
	if got := plan.String(); got != want {
		t.Errorf("plan differs.\n got:\n%s\nwant:\n%s", got, want)
	}
}

// notrack is the fast path's three rules for one segment, whose
// same-segment match is within: from the tunnel; from elsewhere when the
// route lookup says the packet leaves through the tunnel; and from the
// host itself into the tunnel.
func notrack(within, ifname string) string {
	return strings.Join([]string{
		"notrack-prerouting notrack-in: " + within + "meta load iifname => reg 1; cmp eq reg 1 " + ifname + "; notrack; accept",
		"notrack-prerouting notrack-out: " + within + "fib daddr . mark oifname => reg 1; cmp eq reg 1 " + ifname + "; notrack",
		"notrack-output notrack-out: " + within + "meta load oifname => reg 1; cmp eq reg 1 " + ifname + "; notrack",
	}, "\n")
}

func formatExprs(es []expr.Any) string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = FormatExpr(e)
	}
	return strings.Join(parts, "; ")
}

func TestPortExprs(t *testing.T) {
	const dport = "payload load 2b @ transport header + 2 => reg 1; "
	tests := []struct {
		fam  int
		spec string
		want string
	}{
		{4, "tcp/22", "meta load l4proto => reg 1; cmp eq reg 1 0x06; " + dport + "cmp eq reg 1 0x0016"},
		{6, "udp/65535", "meta load l4proto => reg 1; cmp eq reg 1 0x11; " + dport + "cmp eq reg 1 0xffff"},
		{4, "tcp/1-1024", "meta load l4proto => reg 1; cmp eq reg 1 0x06; " + dport + "cmp gte reg 1 0x0001; cmp lte reg 1 0x0400"},
		{4, "tcp", "meta load l4proto => reg 1; cmp eq reg 1 0x06"},
		{4, "icmp", "meta load l4proto => reg 1; cmp eq reg 1 0x01"},
		{6, "icmp", "meta load l4proto => reg 1; cmp eq reg 1 0x3a"},
		{0, "any", ""},
	}
	for _, tc := range tests {
		spec, err := ParsePort(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		es, err := portExprs(tc.fam, spec)
		if err != nil {
			t.Fatalf("%s: %v", tc.spec, err)
		}
		if got := formatExprs(es); got != tc.want {
			t.Errorf("%s (IPv%d):\n got  %s\n want %s", tc.spec, tc.fam, got, tc.want)
		}
	}
}

func TestAddrExprs(t *testing.T) {
	tests := []struct {
		prefix string
		source bool
		want   string
	}{
		{"10.42.7.7/32", true, "payload load 4b @ network header + 12 => reg 1; cmp eq reg 1 0x0a2a0707"},
		{"10.42.7.0/25", false, "payload load 4b @ network header + 16 => reg 1; bitwise reg 1 = (reg 1 & 0xffffff80) ^ 0x00000000; cmp eq reg 1 0x0a2a0700"},
		{"fd42::1/128", true, "payload load 16b @ network header + 8 => reg 1; cmp eq reg 1 0xfd420000000000000000000000000001"},
		{"0.0.0.0/0", true, ""},
	}
	for _, tc := range tests {
		if got := formatExprs(addrExprs(pfx(tc.prefix)[0], tc.source)); got != tc.want {
			t.Errorf("%s source=%v:\n got  %s\n want %s", tc.prefix, tc.source, got, tc.want)
		}
	}
}

func TestRenderErrors(t *testing.T) {
	good, err := Compile(testSegs, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		rs    *Ruleset
		iface string
	}{
		"nil ruleset":         {nil, "mesh0"},
		"empty iface":         {good, ""},
		"iface too long":      {good, "a-very-long-name"},
		"icmp without family": {&Ruleset{Entries: []Entry{{Label: "x", Action: Accept, Ports: []PortSpec{{Proto: ProtoICMP}}}}}, "mesh0"},
		"unknown action":      {&Ruleset{Entries: []Entry{{Label: "x", Action: "reject"}}}, "mesh0"},
		"no label":            {&Ruleset{Entries: []Entry{{Action: Drop}}}, "mesh0"},
		"long label":          {&Ruleset{Entries: []Entry{{Label: strings.Repeat("x", 255), Action: Drop}}}, "mesh0"},
		"inverted range":      {&Ruleset{Entries: []Entry{{Label: "x", Action: Accept, Ports: []PortSpec{{ProtoTCP, 9, 1}}}}}, "mesh0"},
		"unknown proto":       {&Ruleset{Entries: []Entry{{Label: "x", Action: Accept, Ports: []PortSpec{{Proto: "gre"}}}}}, "mesh0"},
	}
	for name, tc := range tests {
		if _, err := Render(tc.rs, tc.iface); err == nil {
			t.Errorf("%s: Render succeeded", name)
		}
	}
}

// TestRenderSkipsMixedFamilies: a Src × Dst pair of different families
// can match no packet, so it yields no kernel rule (and Explain agrees).
func TestRenderSkipsMixedFamilies(t *testing.T) {
	rs := &Ruleset{Entries: []Entry{{Label: "x", Action: Accept, Src: pfx("10.42.0.0/16", "fd42::/48"), Dst: pfx("fd43::/48")}}}
	plan, err := Render(rs, "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, r := range plan.Rules {
		if labelOf(r.UserData) == "x" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("got %d rules for the entry, want 1:\n%s", n, plan)
	}
}

// A prefix with host bits set (a hand-edited claim, a caller that did not
// mask) is rendered as its canonical form, so the kernel matches what
// Explain says: unmasked, the comparison with the masked packet address
// would never match, and a guard's exception for this host's own slice
// would silently drop its pods' traffic.
func TestRenderMasksPrefixes(t *testing.T) {
	build := func(seg, src, dst, local string) *Ruleset {
		return &Ruleset{
			Segments: []Segment{{Name: "blue", CIDR: netip.MustParsePrefix(seg)}},
			Entries:  []Entry{{Label: "allow[0]", Action: Accept, Src: pfx(src), Dst: pfx(dst)}},
			Local:    pfx(local),
		}
	}
	loose, err := Render(build("10.42.0.7/16", "10.42.1.9/24", "10.42.2.1/24", "10.42.3.5/24"), "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	exact, err := Render(build("10.42.0.0/16", "10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"), "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	if len(loose.Rules) != len(exact.Rules) {
		t.Fatalf("%d rules, want %d", len(loose.Rules), len(exact.Rules))
	}
	for i := range exact.Rules {
		if got, want := formatExprs(loose.Rules[i].Exprs), formatExprs(exact.Rules[i].Exprs); got != want {
			t.Errorf("rule %d (chain %s):\n got  %s\n want %s", i, exact.Rules[i].Chain.Name, got, want)
		}
	}
}
