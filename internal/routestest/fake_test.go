package routestest_test

import (
	"errors"
	"net"
	"testing"

	"github.com/meshd/meshd/internal/routestest"
	"github.com/meshd/meshd/routes"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func ipnet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// The fake must be as unforgiving as the kernel where a caller could get
// away with a mistake against a laxer fake.
func TestFakeMimicsKernel(t *testing.T) {
	f := routestest.NewFake()
	tun := &netlink.Route{Table: 100, Dst: ipnet("fd42::/48"), Type: unix.RTN_UNREACHABLE, Protocol: routes.Protocol}
	if err := f.RouteReplace(tun); err != nil {
		t.Fatal(err)
	}

	// Non-main tables are invisible without RT_FILTER_TABLE.
	rs, err := f.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Protocol: routes.Protocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil || len(rs) != 0 {
		t.Errorf("dump without table filter = %v, %v; want nothing", rs, err)
	}
	rs, err = f.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{}, netlink.RT_FILTER_TABLE)
	if err != nil || len(rs) != 1 || rs[0].Priority != 1024 {
		t.Errorf("dump of all tables = %v, %v; want the route at metric 1024", rs, err)
	}
	if _, err := f.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{}, netlink.RT_FILTER_DST); err == nil {
		t.Error("an unsupported filter was accepted")
	}

	if err := f.RouteDel(&netlink.Route{Table: 100, Dst: ipnet("fd42::/48"), Type: unix.RTN_THROW}); !errors.Is(err, unix.ESRCH) {
		t.Errorf("deleting with the wrong type: %v, want ESRCH", err)
	}
	if err := f.RouteDel(&netlink.Route{Table: 100, Dst: ipnet("fd42::/48")}); err != nil {
		t.Errorf("deleting: %v", err)
	}

	r := netlink.NewRule()
	r.Priority, r.Table, r.Src, r.Protocol = 100, 100, ipnet("10.42.0.0/16"), routes.Protocol
	if err := f.RuleAdd(r); err != nil {
		t.Fatal(err)
	}
	if err := f.RuleAdd(r); !errors.Is(err, unix.EEXIST) {
		t.Errorf("adding a duplicate rule: %v, want EEXIST", err)
	}
	if rules, _ := f.RuleList(netlink.FAMILY_V6); len(rules) != 0 {
		t.Errorf("IPv6 rule dump returned IPv4 rules: %v", rules)
	}

	want := []string{
		"route add table 100 fd42::/48 unreachable",
		"route del table 100 fd42::/48 throw proto 0",
		"route del table 100 fd42::/48 type 0 proto 0",
		"rule add prio 100 from 10.42.0.0/16 lookup 100",
		"rule add prio 100 from 10.42.0.0/16 lookup 100",
	}
	got := f.Ops()
	if len(got) != len(want) {
		t.Fatalf("ops = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("op %d = %q, want %q", i, got[i], want[i])
		}
	}
}
