package policy_test

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshd/meshd/policy"
)

// conntrackFlows reads the router's conntrack table over netlink.
func conntrackFlows(t *testing.T, name string) []*netlink.ConntrackFlow {
	t.Helper()
	nsh, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatalf("netfilter netlink in %s: %v", name, err)
	}
	defer h.Close()
	var flows []*netlink.ConntrackFlow
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		fs, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			t.Fatalf("read the conntrack table of %s: %v", name, err)
		}
		flows = append(flows, fs...)
	}
	return flows
}

// flowsWithin returns the flows whose original direction runs between two
// addresses of p.
func flowsWithin(flows []*netlink.ConntrackFlow, p netip.Prefix) []*netlink.ConntrackFlow {
	var out []*netlink.ConntrackFlow
	for _, f := range flows {
		src, _ := netip.AddrFromSlice(f.Forward.SrcIP)
		dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
		if p.Contains(src.Unmap()) && p.Contains(dst.Unmap()) {
			out = append(out, f)
		}
	}
	return out
}

// TestSameSegmentUntrackedNetns: same-segment traffic through the tunnel,
// whichever way it goes (a pod to a far pod, a far pod to the pod, the
// router itself to a far pod, IPv4 and IPv6), leaves no conntrack entry
// yet is counted under its segment; an allowed cross-segment flow is
// tracked, its replies pass, and the way back stays closed.
func TestSameSegmentUntrackedNetns(t *testing.T) {
	tp := setup(t)
	p, x, r := tp.pod, tp.remote, tp.router
	for _, a := range []string{farBlue + ":8080", "[" + farBlue6 + "]:8080", farGreen + ":8080"} {
		echoTCP(t, x, a)
	}
	echoTCP(t, p, podBlue+":8080")
	e := policy.NewEnforcer(tp.conn, tunIface, nil)
	rs := compile(t, policy.Rule{From: "blue", To: "green", Ports: []string{"tcp/8080"}})
	rs.Untracked = true
	if err := e.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if n := len(conntrackFlows(t, r)); n != 0 {
		t.Fatalf("%d conntrack entries before any traffic; the test needs a fresh namespace", n)
	}

	long, err := dialTCP(p, podBlue, farBlue+":8080")
	if err != nil {
		t.Fatalf("same-segment connection: %v", err)
	}
	defer long.Close()
	expect(t, "same segment", map[string]probe{
		"pod -> far pod tcp, both ways": {roundTrip(long, "hello\n") == nil, true},
		"far pod -> pod tcp":            {tcpOK(x, farBlue, podBlue+":8080"), true},
		"pod -> far pod icmp":           {pingOK(p, podBlue, farBlue), true},
		"router -> far pod icmp":        {pingOK(r, routerBlue, farBlue), true},
		"pod -> far pod tcp over IPv6":  {tcpOK(p, podBlue6, "["+farBlue6+"]:8080"), true},
		"long connection, second round": {roundTrip(long, "again\n") == nil, true},
	})
	flows := conntrackFlows(t, r)
	for _, seg := range []string{"10.42.0.0/16", "fd42::/48"} {
		if got := flowsWithin(flows, netip.MustParsePrefix(seg)); len(got) != 0 {
			t.Errorf("%d conntrack entries for same-segment traffic in %s, want none: %v", len(got), seg, got)
		}
	}
	// Every packet is counted, not only each connection's first: at least
	// the handshake, two round trips and the close of the long connection.
	if c := counter(t, e, "segment:blue"); c.Packets < 10 {
		t.Errorf("segment:blue counted %d packets, want every same-segment packet (>= 10)", c.Packets)
	}
	if c := counter(t, e, "segment:blue6"); c.Packets < 5 {
		t.Errorf("segment:blue6 counted %d packets, want the IPv6 connection's (>= 5)", c.Packets)
	}

	cross, err := dialTCP(p, podBlue, farGreen+":8080")
	if err != nil {
		t.Fatalf("allowed cross-segment connection: %v", err)
	}
	defer cross.Close()
	expect(t, "cross segment", map[string]probe{
		"allowed blue -> green, replies included": {roundTrip(cross, "hello\n") == nil, true},
		"new connection green -> blue":            {tcpOK(x, farGreen, podBlue+":8080"), false},
	})
	var tracked int
	for _, f := range conntrackFlows(t, r) {
		src, _ := netip.AddrFromSlice(f.Forward.SrcIP)
		dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
		if src.String() == podBlue && dst.String() == farGreen && f.Forward.DstPort == 8080 && f.Forward.Protocol == unix.IPPROTO_TCP {
			tracked++
		}
	}
	if tracked != 1 {
		t.Errorf("%d conntrack entries for the allowed blue -> green connection, want 1", tracked)
	}
}
