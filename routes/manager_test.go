package routes_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/meshd/meshd/internal/routestest"
	"github.com/meshd/meshd/routes"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	table4 = 51800
	table6 = 51801
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ipnet(s string) *net.IPNet {
	p := pfx(s)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// seg4 is a segment in which this host owns 10.42.1.0/24 and peers b and c
// own the next two slices.
func seg4() *routes.Config {
	return &routes.Config{
		Link: "mesh0",
		Routes: []routes.Route{
			{Table: table4, Dst: pfx("10.42.0.0/16"), Kind: routes.Unreachable},
			{Table: table4, Dst: pfx("10.42.1.0/24"), Kind: routes.Throw},
			{Table: table4, Dst: pfx("10.42.2.0/24"), Kind: routes.Tunnel, Peer: "b"},
			{Table: table4, Dst: pfx("10.42.3.0/24"), Kind: routes.Tunnel, Peer: "c"},
		},
		Rules: []routes.Rule{
			{Priority: 100, Table: table4, From: pfx("10.42.0.0/16")},
			{Priority: 101, Table: table4, To: pfx("10.42.0.0/16")},
		},
	}
}

func seg6() *routes.Config {
	return &routes.Config{
		Link: "mesh0",
		Routes: []routes.Route{
			{Table: table6, Dst: pfx("fd42::/48"), Kind: routes.Unreachable},
			{Table: table6, Dst: pfx("fd42:0:0:1::/64"), Kind: routes.Throw},
			{Table: table6, Dst: pfx("fd42:0:0:2::/64"), Kind: routes.Tunnel, Peer: "b"},
		},
		Rules: []routes.Rule{
			{Priority: 100, Table: table6, From: pfx("fd42::/48")},
			{Priority: 101, Table: table6, To: pfx("fd42::/48")},
		},
	}
}

func both() *routes.Config {
	c := seg4()
	s6 := seg6()
	c.Routes = append(c.Routes, s6.Routes...)
	c.Rules = append(c.Rules, s6.Rules...)
	return c
}

var seg4Adds = []string{
	"route add table 51800 10.42.0.0/16 unreachable",
	"route add table 51800 10.42.1.0/24 throw",
	"route add table 51800 10.42.2.0/24 tunnel dev mesh0",
	"route add table 51800 10.42.3.0/24 tunnel dev mesh0",
	"rule add prio 100 from 10.42.0.0/16 lookup 51800",
	"rule add prio 101 to 10.42.0.0/16 lookup 51800",
}

func newFake(t *testing.T) *routestest.Fake {
	t.Helper()
	f := routestest.NewFake()
	f.AddLink("mesh0")
	return f
}

// seed installs cfg through a throwaway Manager and forgets the ops.
func seed(t *testing.T, f *routestest.Fake, cfg *routes.Config) {
	t.Helper()
	if err := routes.New(f, nil).Set(cfg); err != nil {
		t.Fatalf("seed: %v", err)
	}
	f.TakeOps()
}

func mustRaw(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("seeding the fake: %v", err)
	}
}

func foreignRule(prio, table int, from string) *netlink.Rule {
	r := netlink.NewRule()
	r.Priority = prio
	r.Table = table
	r.Src = ipnet(from)
	return r
}

func TestSetOpLog(t *testing.T) {
	tests := []struct {
		name string
		seed func(t *testing.T, f *routestest.Fake)
		cfg  *routes.Config
		want []string
	}{
		{
			name: "empty kernel, IPv4 segment",
			cfg:  seg4(),
			want: seg4Adds,
		},
		{
			name: "empty kernel, IPv6 segment",
			cfg:  seg6(),
			want: []string{
				"route add table 51801 fd42::/48 unreachable",
				"route add table 51801 fd42:0:0:1::/64 throw",
				"route add table 51801 fd42:0:0:2::/64 tunnel dev mesh0",
				"rule add prio 100 from fd42::/48 lookup 51801",
				"rule add prio 101 to fd42::/48 lookup 51801",
			},
		},
		{
			name: "already converged",
			seed: func(t *testing.T, f *routestest.Fake) { seed(t, f, both()) },
			cfg:  both(),
			want: nil,
		},
		{
			name: "partial state is completed",
			seed: func(t *testing.T, f *routestest.Fake) {
				c := seg4()
				c.Routes = c.Routes[:2]
				c.Rules = c.Rules[:1]
				seed(t, f, c)
			},
			cfg: seg4(),
			want: []string{
				"route add table 51800 10.42.2.0/24 tunnel dev mesh0",
				"route add table 51800 10.42.3.0/24 tunnel dev mesh0",
				"rule add prio 101 to 10.42.0.0/16 lookup 51800",
			},
		},
		{
			name: "wrong kind in the slot is replaced",
			seed: func(t *testing.T, f *routestest.Fake) {
				c := seg4()
				c.Routes[1].Kind = routes.Tunnel
				seed(t, f, c)
			},
			cfg:  seg4(),
			want: []string{"route replace table 51800 10.42.1.0/24 throw"},
		},
		{
			name: "tunnel through a recreated link is replaced",
			seed: func(t *testing.T, f *routestest.Fake) {
				seed(t, f, seg4())
				f.AddLink("mesh0-new") // the fake links names to indexes; move the index
			},
			cfg: func() *routes.Config { c := seg4(); c.Link = "mesh0-new"; return c }(),
			want: []string{
				"route replace table 51800 10.42.2.0/24 tunnel dev mesh0-new",
				"route replace table 51800 10.42.3.0/24 tunnel dev mesh0-new",
			},
		},
		{
			name: "foreign routes and rules are left alone",
			seed: func(t *testing.T, f *routestest.Fake) {
				mustRaw(t, f.RouteReplace(&netlink.Route{Table: table4, Dst: ipnet("10.42.9.0/24"), Type: unix.RTN_THROW, Protocol: unix.RTPROT_BOOT}))
				mustRaw(t, f.RouteReplace(&netlink.Route{Dst: ipnet("10.42.1.0/24"), LinkIndex: 1, Protocol: unix.RTPROT_KERNEL}))
				mustRaw(t, f.RuleAdd(foreignRule(100, table4, "10.99.0.0/16")))
				f.TakeOps()
			},
			cfg:  seg4(),
			want: seg4Adds,
		},
		{
			name: "stale meshd entries are removed after the adds",
			seed: func(t *testing.T, f *routestest.Fake) {
				c := seg4()
				c.Routes = append(c.Routes, routes.Route{Table: 51899, Dst: pfx("10.43.0.0/16"), Kind: routes.Unreachable})
				c.Rules = append(c.Rules, routes.Rule{Priority: 99, Table: 51899, From: pfx("10.43.0.0/16")})
				c.Routes[3].Dst = pfx("10.42.4.0/24")
				seed(t, f, c)
			},
			cfg: seg4(),
			want: []string{
				"route add table 51800 10.42.3.0/24 tunnel dev mesh0",
				"rule del prio 99 from 10.43.0.0/16 lookup 51899",
				"route del table 51800 10.42.4.0/24 tunnel dev mesh0",
				"route del table 51899 10.43.0.0/16 unreachable",
			},
		},
		{
			name: "leftover under another metric is removed",
			seed: func(t *testing.T, f *routestest.Fake) {
				seed(t, f, seg4())
				mustRaw(t, f.RouteReplace(&netlink.Route{Table: table4, Dst: ipnet("10.42.2.0/24"), Type: unix.RTN_THROW, Priority: 5, Protocol: routes.Protocol}))
				f.TakeOps()
			},
			cfg:  seg4(),
			want: []string{"route del table 51800 10.42.2.0/24 throw metric 5"},
		},
		{
			name: "meshd rule with an extra selector is swapped for the plain one",
			seed: func(t *testing.T, f *routestest.Fake) {
				c := seg4()
				c.Rules = c.Rules[1:]
				seed(t, f, c)
				r := foreignRule(100, table4, "10.42.0.0/16")
				r.IifName = "eth0"
				r.Protocol = routes.Protocol
				mustRaw(t, f.RuleAdd(r))
				f.TakeOps()
			},
			cfg: seg4(),
			want: []string{
				"rule add prio 100 from 10.42.0.0/16 lookup 51800",
				"rule del prio 100 from 10.42.0.0/16 iif eth0 lookup 51800",
			},
		},
		{
			name: "nil removes rules before routes",
			seed: func(t *testing.T, f *routestest.Fake) { seed(t, f, both()) },
			cfg:  nil,
			want: []string{
				"rule del prio 100 from 10.42.0.0/16 lookup 51800",
				"rule del prio 100 from fd42::/48 lookup 51801",
				"rule del prio 101 to 10.42.0.0/16 lookup 51800",
				"rule del prio 101 to fd42::/48 lookup 51801",
				"route del table 51800 10.42.0.0/16 unreachable",
				"route del table 51800 10.42.1.0/24 throw",
				"route del table 51800 10.42.2.0/24 tunnel dev mesh0",
				"route del table 51800 10.42.3.0/24 tunnel dev mesh0",
				"route del table 51801 fd42::/48 unreachable",
				"route del table 51801 fd42:0:0:1::/64 throw",
				"route del table 51801 fd42:0:0:2::/64 tunnel dev mesh0",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			if tt.seed != nil {
				tt.seed(t, f)
			}
			m := routes.New(f, nil)
			if err := m.Set(tt.cfg); err != nil {
				t.Fatalf("Set: %v", err)
			}
			got := f.TakeOps()
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ops (-want +got):\n%s", diff)
			}
			if m.Ops() != len(got) {
				t.Errorf("Ops() = %d, fake saw %d writes", m.Ops(), len(got))
			}
			if err := m.Set(tt.cfg); err != nil {
				t.Fatalf("second Set: %v", err)
			}
			if ops := f.TakeOps(); len(ops) != 0 {
				t.Errorf("second identical Set wrote %q", ops)
			}
		})
	}
}

func TestSetTwiceWritesNothing(t *testing.T) {
	f := newFake(t)
	m := routes.New(f, nil)
	for i := range 2 {
		if err := m.Set(both()); err != nil {
			t.Fatal(err)
		}
		if i == 0 && m.Ops() != 11 {
			t.Fatalf("first Set: %d writes, want 11", m.Ops())
		}
	}
	if m.Ops() != 11 {
		t.Errorf("second Set wrote %d times", m.Ops()-11)
	}
}

// many is a segment with n remote /24 slices behind peers p0..pn-1.
func many(n int) *routes.Config {
	c := seg4()
	c.Routes = c.Routes[:2]
	for i := range n {
		c.Routes = append(c.Routes, routes.Route{
			Table: table4,
			Dst:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 42, byte(2 + i), 0}), 24),
			Kind:  routes.Tunnel,
			Peer:  fmt.Sprintf("p%d", i),
		})
	}
	return c
}

func TestOnePeerChangeCostsConstantWrites(t *testing.T) {
	f := newFake(t)
	m := routes.New(f, nil)
	cfg := many(200)
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	f.TakeOps()

	// p7 moves to another slice: one add, one delete.
	cfg.Routes[2+7].Dst = pfx("10.42.250.0/24")
	before := m.Ops()
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"route add table 51800 10.42.250.0/24 tunnel dev mesh0",
		"route del table 51800 10.42.9.0/24 tunnel dev mesh0",
	}
	if diff := cmp.Diff(want, f.TakeOps()); diff != "" {
		t.Errorf("moving one peer (-want +got):\n%s", diff)
	}
	if got := m.Ops() - before; got != 2 {
		t.Errorf("moving one peer cost %d writes, want 2", got)
	}

	// This host takes over p8's slice: one replace.
	cfg.Routes[2+8].Kind = routes.Throw
	cfg.Routes[2+8].Peer = ""
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"route replace table 51800 10.42.10.0/24 throw"}, f.TakeOps()); diff != "" {
		t.Errorf("taking over a slice (-want +got):\n%s", diff)
	}

	// A peer renamed behind the same slice is not a kernel change.
	cfg.Routes[2+9].Peer = "renamed"
	if err := m.Set(cfg); err != nil {
		t.Fatal(err)
	}
	if ops := f.TakeOps(); len(ops) != 0 {
		t.Errorf("renaming a peer wrote %q", ops)
	}
}

func TestSetNilRemovesEverythingMeshdOwns(t *testing.T) {
	f := newFake(t)
	mustRaw(t, f.RouteReplace(&netlink.Route{Table: table4, Dst: ipnet("10.99.0.0/16"), Type: unix.RTN_THROW, Protocol: unix.RTPROT_BOOT}))
	mustRaw(t, f.RuleAdd(foreignRule(100, table4, "10.99.0.0/16")))
	m := routes.New(f, nil)
	if err := m.Set(both()); err != nil {
		t.Fatal(err)
	}
	if err := m.Set(nil); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"table 51800 10.99.0.0/16 throw proto 3"}, f.Routes()); diff != "" {
		t.Errorf("routes left (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"prio 100 from 10.99.0.0/16 lookup 51800 proto 0"}, f.Rules()); diff != "" {
		t.Errorf("rules left (-want +got):\n%s", diff)
	}
}

func TestAddsComeBeforeDeletes(t *testing.T) {
	f := newFake(t)
	m := routes.New(f, nil)
	if err := m.Set(both()); err != nil {
		t.Fatal(err)
	}
	f.TakeOps()

	// Renumber everything: every entry is both added and deleted.
	c := both()
	for i := range c.Routes {
		c.Routes[i].Table += 10
	}
	for i := range c.Rules {
		c.Rules[i].Table += 10
		c.Rules[i].Priority += 10
	}
	if err := m.Set(c); err != nil {
		t.Fatal(err)
	}
	ops := f.TakeOps()
	if len(ops) != 22 {
		t.Fatalf("got %d ops, want 22: %q", len(ops), ops)
	}
	phase := func(op string) int {
		for i, p := range []string{"route add", "rule add", "rule del", "route del"} {
			if strings.HasPrefix(op, p) {
				return i
			}
		}
		t.Fatalf("unexpected op %q", op)
		return 0
	}
	if !slices.IsSortedFunc(ops, func(a, b string) int { return phase(a) - phase(b) }) {
		t.Errorf("ops not in route add, rule add, rule del, route del order:\n%s", strings.Join(ops, "\n"))
	}
}

func TestFailedWriteDoesNotStopTheOthers(t *testing.T) {
	f := newFake(t)
	boom := errors.New("boom")
	f.FailOn("10.42.2.0/24", boom)
	f.FailOn("rule add prio 101", boom)
	m := routes.New(f, nil)
	err := m.Set(seg4())
	if !errors.Is(err, boom) {
		t.Fatalf("Set error %v, want one wrapping %v", err, boom)
	}
	for _, name := range []string{
		"route table 51800 10.42.2.0/24 tunnel dev mesh0 (peer b): replace: boom",
		"rule prio 101 to 10.42.0.0/16 lookup 51800: add: boom",
	} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %q", err, name)
		}
	}
	want := []string{
		"table 51800 10.42.0.0/16 unreachable",
		"table 51800 10.42.1.0/24 throw",
		"table 51800 10.42.3.0/24 tunnel dev mesh0",
	}
	if diff := cmp.Diff(want, f.Routes()); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}

	f.ClearFailures()
	f.TakeOps()
	if err := m.Set(seg4()); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"route add table 51800 10.42.2.0/24 tunnel dev mesh0",
		"rule add prio 101 to 10.42.0.0/16 lookup 51800",
	}
	if diff := cmp.Diff(want, f.TakeOps()); diff != "" {
		t.Errorf("retry (-want +got):\n%s", diff)
	}
}

func TestFailedDeleteIsNamed(t *testing.T) {
	f := newFake(t)
	m := routes.New(f, nil)
	if err := m.Set(seg4()); err != nil {
		t.Fatal(err)
	}
	f.FailOn("route del table 51800 10.42.3.0/24", unix.EBUSY)
	err := m.Set(nil)
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "route table 51800 10.42.3.0/24 tunnel (peer c): delete") {
		t.Fatalf("Set(nil) error %v, want one naming the route and its peer", err)
	}
	if diff := cmp.Diff([]string{"table 51800 10.42.3.0/24 tunnel dev mesh0"}, f.Routes()); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
}

func TestMissingLinkChangesNothing(t *testing.T) {
	f := newFake(t)
	m := routes.New(f, nil)
	if err := m.Set(seg4()); err != nil {
		t.Fatal(err)
	}
	f.TakeOps()
	f.DelLink("mesh0")
	before := f.Routes()

	err := m.Set(seg4())
	if err == nil || !strings.Contains(err.Error(), `link "mesh0"`) {
		t.Fatalf("Set with missing link: %v, want an error naming the link", err)
	}
	if ops := f.TakeOps(); len(ops) != 0 {
		t.Errorf("Set with missing link wrote %q", ops)
	}
	if diff := cmp.Diff(before, f.Routes()); diff != "" {
		t.Errorf("routes changed (-before +after):\n%s", diff)
	}

	// With no tunnel routes (no peers yet) the link is not needed.
	c := seg4()
	c.Routes = c.Routes[:2]
	if err := m.Set(c); err != nil {
		t.Errorf("Set without tunnel routes: %v", err)
	}
}

func TestDumpInterruptedIsRetried(t *testing.T) {
	f := newFake(t)
	m := routes.New(f, nil)
	f.InterruptDumps(3)
	if err := m.Set(seg4()); err != nil {
		t.Fatalf("Set after 3 interrupted dumps: %v", err)
	}
	if diff := cmp.Diff(seg4Adds, f.TakeOps()); diff != "" {
		t.Errorf("ops (-want +got):\n%s", diff)
	}

	f.InterruptDumps(1000)
	err := m.Set(nil)
	if !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatalf("Set with dumps always interrupted: %v, want ErrDumpInterrupted", err)
	}
	if ops := f.TakeOps(); len(ops) != 0 {
		t.Errorf("Set acted on an interrupted dump: %q", ops)
	}
}

func TestInvalidConfigChangesNothing(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *routes.Config)
		want   string
	}{
		{"host bits", func(c *routes.Config) { c.Routes[2].Dst = pfx("10.42.2.1/24") }, "host bits"},
		{"no table", func(c *routes.Config) { c.Routes[0].Table = 0 }, "table 0"},
		{"no prefix", func(c *routes.Config) { c.Routes[0].Dst = netip.Prefix{} }, "no destination"},
		{"mapped", func(c *routes.Config) { c.Routes[0].Dst = pfx("::ffff:10.42.0.0/112") }, "IPv4-mapped"},
		{"bad kind", func(c *routes.Config) { c.Routes[0].Kind = 7 }, "unknown kind"},
		{"conflict", func(c *routes.Config) {
			c.Routes = append(c.Routes, routes.Route{Table: table4, Dst: pfx("10.42.2.0/24"), Kind: routes.Throw})
		}, "conflicts"},
		{"rule with both", func(c *routes.Config) { c.Rules[0].To = pfx("10.42.0.0/16") }, "exactly one"},
		{"rule with none", func(c *routes.Config) { c.Rules[0].From = netip.Prefix{} }, "exactly one"},
		{"no link", func(c *routes.Config) { c.Link = "" }, "no link"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			c := seg4()
			tt.mutate(c)
			err := routes.New(f, nil).Set(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Set: %v, want an error containing %q", err, tt.want)
			}
			if ops := f.Ops(); len(ops) != 0 {
				t.Errorf("invalid config wrote %q", ops)
			}
		})
	}
}

func TestDuplicatesAreWrittenOnce(t *testing.T) {
	f := newFake(t)
	c := seg4()
	c.Routes = append(c.Routes, c.Routes...)
	c.Rules = append(c.Rules, c.Rules...)
	if err := routes.New(f, nil).Set(c); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(seg4Adds, f.Ops()); diff != "" {
		t.Errorf("ops (-want +got):\n%s", diff)
	}
}

func TestSetLeavesCallerConfigAlone(t *testing.T) {
	c := seg4()
	slices.Reverse(c.Routes)
	slices.Reverse(c.Rules)
	orig := &routes.Config{Link: c.Link, Routes: slices.Clone(c.Routes), Rules: slices.Clone(c.Rules)}
	if err := routes.New(newFake(t), nil).Set(c); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(orig, c, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("Set modified the caller's config (-before +after):\n%s", diff)
	}
}

func TestCrashRecoveryAndCleanup(t *testing.T) {
	f := newFake(t)
	mustRaw(t, f.RouteReplace(&netlink.Route{Table: table4, Dst: ipnet("10.99.0.0/16"), Type: unix.RTN_THROW, Protocol: unix.RTPROT_BOOT}))
	if err := routes.New(f, nil).Set(both()); err != nil {
		t.Fatal(err)
	}
	f.TakeOps()

	// A restarted meshd knows nothing but what the kernel holds.
	m := routes.New(f, nil)
	if err := m.Set(both()); err != nil {
		t.Fatal(err)
	}
	if m.Ops() != 0 {
		t.Errorf("a fresh Manager rewrote converged state: %q", f.Ops())
	}

	if err := routes.Cleanup(f); err != nil {
		t.Fatal(err)
	}
	if got := len(f.TakeOps()); got != 11 {
		t.Errorf("Cleanup made %d writes, want 11", got)
	}
	if diff := cmp.Diff([]string{"table 51800 10.99.0.0/16 throw proto 3"}, f.Routes()); diff != "" {
		t.Errorf("routes after Cleanup (-want +got):\n%s", diff)
	}
	if rules := f.Rules(); len(rules) != 0 {
		t.Errorf("rules after Cleanup: %q", rules)
	}
}

func TestChangesAreLoggedOnceWithPeer(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	f := newFake(t)
	m := routes.New(f, log)
	if err := m.Set(seg4()); err != nil {
		t.Fatal(err)
	}
	c := seg4()
	c.Routes = c.Routes[:3]
	c.Routes[1].Kind = routes.Tunnel
	c.Routes[1].Peer = "d"
	if err := m.Set(c); err != nil {
		t.Fatal(err)
	}
	if err := m.Set(c); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`level=INFO msg="route added" table=51800 dst=10.42.0.0/16 kind=unreachable`,
		`level=INFO msg="route added" table=51800 dst=10.42.1.0/24 kind=throw`,
		`level=INFO msg="route added" table=51800 dst=10.42.2.0/24 kind=tunnel dev=mesh0 peer=b`,
		`level=INFO msg="route added" table=51800 dst=10.42.3.0/24 kind=tunnel dev=mesh0 peer=c`,
		`level=INFO msg="rule added" rule="prio 100 from 10.42.0.0/16 lookup 51800"`,
		`level=INFO msg="rule added" rule="prio 101 to 10.42.0.0/16 lookup 51800"`,
		`level=INFO msg="route replaced" table=51800 dst=10.42.1.0/24 kind=tunnel dev=mesh0 peer=d was=throw`,
		`level=INFO msg="route removed" table=51800 dst=10.42.3.0/24 kind=tunnel peer=c`,
	}
	got := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("log (-want +got):\n%s", diff)
	}
}
