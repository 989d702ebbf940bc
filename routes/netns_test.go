package routes_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/meshd/meshd/internal/routestest"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/routes"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	tunLink = "mesh-rt"
	podLink = "pods"
)

// newNetns returns a fresh network namespace and a handle into it. The
// test's thread is switched back at once, so nothing else in the test
// binary ever runs inside the namespace; it dies with its last reference.
func newNetns(t *testing.T) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	testenv.RequireRoot(t)

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		orig.Close()
		t.Fatalf("new netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it is in the wrong namespace and the
		// runtime will retire it with this goroutine.
		t.Fatalf("restore netns: %v", err)
	}
	runtime.UnlockOSThread()
	orig.Close()
	t.Cleanup(func() { ns.Close() })

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("handle in netns: %v", err)
	}
	t.Cleanup(h.Close)
	return ns, h
}

// setupLinks creates the tunnel link and a "pods" link that owns this
// host's slices in the main table, as the pod attachment would.
func setupLinks(t *testing.T, h *netlink.Handle) {
	t.Helper()
	lo, err := h.LinkByName("lo")
	must(t, err)
	must(t, h.LinkSetUp(lo))
	for _, name := range []string{tunLink, podLink} {
		addLink(t, h, name)
	}
	pods, err := h.LinkByName(podLink)
	must(t, err)
	must(t, h.AddrAdd(pods, &netlink.Addr{IPNet: ipnet4or6("10.42.1.1/24")}))
	must(t, h.AddrAdd(pods, &netlink.Addr{IPNet: ipnet4or6("fd42:0:0:1::1/64"), Flags: unix.IFA_F_NODAD}))
}

// addLink creates an up link to route through: a dummy where the kernel
// has the driver, else one end of a veth pair (both ends up, so it has
// carrier), which routes the same for these tests.
func addLink(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	links := []netlink.Link{&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}}
	err := h.LinkAdd(links[0])
	if errors.Is(err, unix.EOPNOTSUPP) {
		peer := name + "-p"
		links = []netlink.Link{
			&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer},
			&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: peer}},
		}
		err = h.LinkAdd(links[0])
	}
	must(t, err)
	for _, l := range links {
		must(t, h.LinkSetUp(l))
	}
}

func ipnet4or6(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func kernelCfg() *routes.Config {
	c := both()
	c.Link = tunLink
	return c
}

// kernelState lists what carries routes.Protocol in the namespace, in the
// fake's notation so expectations read the same as the unit tests'.
func kernelState(t *testing.T, h *netlink.Handle) (rts, rules []string) {
	t.Helper()
	var all []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := h.RouteListFiltered(fam, &netlink.Route{Protocol: routes.Protocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		must(t, err)
		all = append(all, rs...)
	}
	routestest.SortRoutes(all)
	name := func(i int) string {
		l, err := h.LinkByIndex(i)
		if err != nil {
			return "?"
		}
		return l.Attrs().Name
	}
	for i := range all {
		rts = append(rts, routestest.FormatRoute(&all[i], name))
	}
	rl, err := h.RuleList(netlink.FAMILY_ALL)
	must(t, err)
	rl = slices.DeleteFunc(rl, func(r netlink.Rule) bool { return r.Protocol != routes.Protocol })
	routestest.SortRules(rl)
	for i := range rl {
		rules = append(rules, routestest.FormatRule(&rl[i]))
	}
	return rts, rules
}

func checkState(t *testing.T, h *netlink.Handle, wantRoutes, wantRules []string) {
	t.Helper()
	rts, rules := kernelState(t, h)
	if diff := cmp.Diff(wantRoutes, rts); diff != "" {
		t.Errorf("kernel routes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantRules, rules); diff != "" {
		t.Errorf("kernel rules (-want +got):\n%s", diff)
	}
}

var (
	wantKernelRoutes = []string{
		"table 51800 10.42.0.0/16 unreachable",
		"table 51800 10.42.1.0/24 throw",
		"table 51800 10.42.2.0/24 tunnel dev mesh-rt",
		"table 51800 10.42.3.0/24 tunnel dev mesh-rt",
		"table 51801 fd42::/48 unreachable",
		"table 51801 fd42:0:0:1::/64 throw",
		"table 51801 fd42:0:0:2::/64 tunnel dev mesh-rt",
	}
	wantKernelRules = []string{
		"prio 100 from 10.42.0.0/16 lookup 51800",
		"prio 100 from fd42::/48 lookup 51801",
		"prio 101 to 10.42.0.0/16 lookup 51800",
		"prio 101 to fd42::/48 lookup 51801",
	}
)

// lookup is `ip route get dst [from src]`: it returns the output link's
// name, "unreachable" (an unreachable route matched) or "none" (no route).
func lookup(t *testing.T, h *netlink.Handle, dst, src string) string {
	t.Helper()
	opts := &netlink.RouteGetOptions{}
	if src != "" {
		opts.SrcAddr = net.ParseIP(src)
	}
	rs, err := h.RouteGetWithOptions(net.ParseIP(dst), opts)
	if errors.Is(err, unix.EHOSTUNREACH) {
		return "unreachable"
	}
	if errors.Is(err, unix.ENETUNREACH) {
		return "none"
	}
	if err != nil {
		t.Fatalf("route get %s from %q: %v", dst, src, err)
	}
	if len(rs) != 1 {
		t.Fatalf("route get %s from %q: %d routes", dst, src, len(rs))
	}
	if rs[0].Type == unix.RTN_UNREACHABLE {
		return "unreachable"
	}
	l, err := h.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		t.Fatalf("route get %s: link %d: %v", dst, rs[0].LinkIndex, err)
	}
	return l.Attrs().Name
}

func checkLookups(t *testing.T, h *netlink.Handle, want map[[2]string]string) {
	t.Helper()
	for q, w := range want {
		if got := lookup(t, h, q[0], q[1]); got != w {
			t.Errorf("route get %s from %q = %s, want %s", q[0], q[1], got, w)
		}
	}
}

func TestKernel(t *testing.T) {
	ns, h := newNetns(t)
	setupLinks(t, h)

	// Someone else's rule must survive everything meshd does.
	foreign := netlink.NewRule()
	foreign.Priority = 50
	foreign.Table = 100
	foreign.Src = ipnet("10.99.0.0/16")
	must(t, h.RuleAdd(foreign))

	m := routes.New(h, nil)
	must(t, m.Set(kernelCfg()))
	if m.Ops() != 11 {
		t.Errorf("first Set: %d writes, want 11", m.Ops())
	}
	checkState(t, h, wantKernelRoutes, wantKernelRules)
	checkLookups(t, h, map[[2]string]string{
		{"10.42.2.5", "10.42.1.1"}:              tunLink,
		{"10.42.3.5", ""}:                       tunLink,
		{"10.42.200.5", "10.42.1.1"}:            "unreachable",
		{"10.42.200.5", ""}:                     "unreachable",
		{"10.42.1.5", "10.42.1.1"}:              podLink,
		{"fd42:0:0:2::5", "fd42:0:0:1::1"}:      tunLink,
		{"fd42:0:0:2::5", ""}:                   tunLink,
		{"fd42:0:0:99::5", "fd42:0:0:1::1"}:     "unreachable",
		{"fd42:0:0:1::5", "fd42:0:0:1::1"}:      podLink,
		{"10.42.255.255", "10.42.1.1"}:          "unreachable",
		{"fd42:0:0:ffff::1", "fd42:0:0:1::1"}:   "unreachable",
		{"fd42:0:0:2:ffff::1", "fd42:0:0:1::1"}: tunLink,
	})

	t.Run("idempotent", func(t *testing.T) {
		before := m.Ops()
		must(t, m.Set(kernelCfg()))
		if d := m.Ops() - before; d != 0 {
			t.Errorf("second Set wrote %d times", d)
		}
	})

	t.Run("change", func(t *testing.T) {
		c := kernelCfg()
		c.Routes[3].Dst = pfx("10.42.4.0/24") // peer c moved
		c.Routes[6].Kind = routes.Throw       // this host took fd42:0:0:2::/64 over
		c.Routes[6].Peer = ""
		before := m.Ops()
		must(t, m.Set(c))
		if d := m.Ops() - before; d != 3 {
			t.Errorf("change cost %d writes, want 3", d)
		}
		checkState(t, h, []string{
			"table 51800 10.42.0.0/16 unreachable",
			"table 51800 10.42.1.0/24 throw",
			"table 51800 10.42.2.0/24 tunnel dev mesh-rt",
			"table 51800 10.42.4.0/24 tunnel dev mesh-rt",
			"table 51801 fd42::/48 unreachable",
			"table 51801 fd42:0:0:1::/64 throw",
			"table 51801 fd42:0:0:2::/64 throw",
		}, wantKernelRules)
		checkLookups(t, h, map[[2]string]string{
			{"10.42.3.5", "10.42.1.1"}:         "unreachable",
			{"10.42.4.5", "10.42.1.1"}:         tunLink,
			{"fd42:0:0:2::5", "fd42:0:0:1::1"}: "none", // thrown to main, which has no route
		})
		must(t, m.Set(kernelCfg()))
		checkState(t, h, wantKernelRoutes, wantKernelRules)
	})

	t.Run("missing link changes nothing", func(t *testing.T) {
		c := kernelCfg()
		c.Link = "nope"
		before := m.Ops()
		if err := m.Set(c); err == nil {
			t.Fatal("Set with a missing link succeeded")
		}
		if d := m.Ops() - before; d != 0 {
			t.Errorf("Set with a missing link wrote %d times", d)
		}
		checkState(t, h, wantKernelRoutes, wantKernelRules)
	})

	t.Run("watch restores a deleted route", func(t *testing.T) {
		testWatch(t, ns, h, m)
	})

	t.Run("leftovers are replaced precisely", func(t *testing.T) {
		// What an older meshd or a hand-edit might leave under meshd's
		// protocol: a shadow at another metric, a rule with an extra
		// selector beside the plain one, a route in a retired table.
		for _, r := range []*netlink.Route{
			{Table: table4, Dst: ipnet("10.42.2.0/24"), Type: unix.RTN_THROW, Priority: 5, Protocol: routes.Protocol},
			{Table: table6, Dst: ipnet("fd42:0:0:2::/64"), Type: unix.RTN_THROW, Priority: 5, Protocol: routes.Protocol},
			{Table: 51899, Dst: ipnet("10.43.0.0/16"), Type: unix.RTN_BLACKHOLE, Protocol: routes.Protocol},
		} {
			must(t, h.RouteAdd(r))
		}
		iif := netlink.NewRule()
		iif.Priority = 100
		iif.Table = table4
		iif.Src = ipnet("10.42.0.0/16")
		iif.IifName = "eth0"
		iif.Protocol = routes.Protocol
		must(t, h.RuleAdd(iif))

		before := m.Ops()
		must(t, m.Set(kernelCfg()))
		if d := m.Ops() - before; d != 4 {
			t.Errorf("removing 4 leftovers cost %d writes", d)
		}
		checkState(t, h, wantKernelRoutes, wantKernelRules)
	})

	t.Run("recreated link", func(t *testing.T) {
		l, err := h.LinkByName(tunLink)
		must(t, err)
		must(t, h.LinkDel(l))
		addLink(t, h, tunLink)
		before := m.Ops()
		must(t, m.Set(kernelCfg()))
		// The kernel dropped the tunnel routes with the old link.
		if d := m.Ops() - before; d != 3 {
			t.Errorf("restoring tunnel routes cost %d writes, want 3", d)
		}
		checkState(t, h, wantKernelRoutes, wantKernelRules)
		checkLookups(t, h, map[[2]string]string{
			{"10.42.2.5", "10.42.1.1"}:         tunLink,
			{"fd42:0:0:2::5", "fd42:0:0:1::1"}: tunLink,
		})
	})

	t.Run("crash and cleanup", func(t *testing.T) {
		restarted := routes.New(h, nil)
		must(t, restarted.Set(kernelCfg()))
		if restarted.Ops() != 0 {
			t.Errorf("a fresh Manager rewrote converged kernel state %d times", restarted.Ops())
		}
		must(t, routes.Cleanup(h))
		checkState(t, h, nil, nil)
		checkLookups(t, h, map[[2]string]string{{"10.42.1.5", "10.42.1.1"}: podLink})
	})

	t.Run("set nil", func(t *testing.T) {
		must(t, m.Set(kernelCfg()))
		checkState(t, h, wantKernelRoutes, wantKernelRules)
		must(t, m.Set(nil))
		checkState(t, h, nil, nil)
		before := m.Ops()
		must(t, m.Set(nil))
		if d := m.Ops() - before; d != 0 {
			t.Errorf("Set(nil) on a clean kernel wrote %d times", d)
		}
	})

	rl, err := h.RuleList(netlink.FAMILY_V4)
	must(t, err)
	if !slices.ContainsFunc(rl, func(r netlink.Rule) bool { return r.Priority == 50 && r.Table == 100 }) {
		t.Error("the foreign rule was removed")
	}
}

func testWatch(t *testing.T, ns netns.NsHandle, h *netlink.Handle, m *routes.Manager) {
	kicks := make(chan struct{}, 1)
	kick := func() {
		select {
		case kicks <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- routes.Watch(ctx, ns, kick) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return after cancel")
		}
	})
	waitKick := func(what string) {
		t.Helper()
		select {
		case <-kicks:
		case <-time.After(5 * time.Second):
			t.Fatalf("no kick after %s", what)
		}
	}
	noKick := func(what string) {
		t.Helper()
		select {
		case <-kicks:
			t.Errorf("kicked after %s", what)
		case <-time.After(300 * time.Millisecond):
		}
	}
	waitKick("subscribing")

	// Routes that are not meshd's come and go without a kick.
	pods, err := h.LinkByName(podLink)
	must(t, err)
	other := &netlink.Route{Table: table4, Dst: ipnet("10.77.0.0/16"), LinkIndex: pods.Attrs().Index}
	must(t, h.RouteAdd(other))
	must(t, h.RouteDel(other))
	noKick("a foreign route was deleted")

	for _, r := range []struct {
		table int
		dst   string
	}{{table4, "10.42.2.0/24"}, {table6, "fd42:0:0:2::/64"}} {
		// As `ip route del` does: scope nowhere matches any scope.
		must(t, h.RouteDel(&netlink.Route{Table: r.table, Dst: ipnet(r.dst), Protocol: routes.Protocol, Scope: netlink.SCOPE_NOWHERE}))
		waitKick("deleting " + r.dst)
		before := m.Ops()
		must(t, m.Set(kernelCfg()))
		if d := m.Ops() - before; d != 1 {
			t.Errorf("restoring %s cost %d writes, want 1", r.dst, d)
		}
		checkState(t, h, wantKernelRoutes, wantKernelRules)
	}

	// As `ip rule del prio 100 from 10.42.0.0/16` does.
	rule := netlink.NewRule()
	rule.Priority, rule.Src, rule.Table = 100, ipnet("10.42.0.0/16"), table4
	must(t, h.RuleDel(rule))
	waitKick("deleting a rule")
	before := m.Ops()
	must(t, m.Set(kernelCfg()))
	if d := m.Ops() - before; d != 1 {
		t.Errorf("restoring the rule cost %d writes, want 1", d)
	}
	checkState(t, h, wantKernelRoutes, wantKernelRules)
}
