package lab

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testenv"
)

// TestSites builds issue 13's topology and checks, without meshd, that it
// behaves like the internet the multi-site test needs: private sites,
// public gateways, two kinds of NAT, and the faults the test injects.
func TestSites(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "nft")
	l := newLab(t, Spec{Sites: issueSites, Segments: []SegmentSpec{blue}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	h1, h2, h3, h4, h5, h6 := l.Host(1), l.Host(2), l.Host(3), l.Host(4), l.Host(5), l.Host(6)
	rb, redge := l.Router("b"), l.Router("edge")

	t.Run("private networks", func(t *testing.T) {
		for _, s := range l.Sites() {
			for _, from := range s.Hosts() {
				for _, to := range s.Hosts() {
					if from != to {
						reach(ctx, t, from.NS(), to.SiteAddr())
					}
				}
				reach(ctx, t, from.PodNS("blue"), from.Gateway("blue"))
			}
		}
		// Sites see nothing of each other's private networks, NAT or not.
		noReach(ctx, t, h4.NS(), h1.SiteAddr())
		noReach(ctx, t, h1.NS(), h4.SiteAddr())
		noReach(ctx, t, h6.NS(), h5.SiteAddr())
	})

	t.Run("gateways over the WAN", func(t *testing.T) {
		capt := startWANCapture(ctx, t, l)
		reach(ctx, t, h1.NS(), h2.PublicAddr())
		reach(ctx, t, h2.NS(), h1.PublicAddr())
		stop(t, capt)
		expectCount(t, capt, "icmp and src host 203.0.113.11 and dst host 203.0.113.12", 1, -1)
		expectCount(t, capt, "icmp and src host 203.0.113.12 and dst host 203.0.113.11", 1, -1)
	})

	t.Run("NAT hides private addresses", func(t *testing.T) {
		capt := startWANCapture(ctx, t, l)
		reach(ctx, t, h4.NS(), h1.PublicAddr()) // b's gateway
		reach(ctx, t, h5.NS(), h2.PublicAddr()) // b's other host: NATed all the same
		reach(ctx, t, h6.NS(), h1.PublicAddr())
		stop(t, capt)
		expectCount(t, capt, "icmp and src host "+rb.PublicAddr().String(), 2, -1)
		expectCount(t, capt, "icmp and src host "+redge.PublicAddr().String(), 1, -1)
		expectCount(t, capt, "net 172.16.0.0/12", 0, 0)
	})

	t.Run("masquerade keeps ports, symmetric NAT does not", func(t *testing.T) {
		src := func(h *Host) netip.AddrPort { return netip.AddrPortFrom(h.SiteAddr(), 40000) }
		seen := func(h *Host, dst *Host) netip.AddrPort {
			t.Helper()
			from, err := UDPSource(ctx, h.NS(), src(h), dst.NS(), netip.AddrPortFrom(dst.PublicAddr(), 7000))
			if err != nil {
				t.Fatal(err)
			}
			return from
		}
		b1, b2 := seen(h4, h1), seen(h4, h2)
		want := netip.AddrPortFrom(rb.PublicAddr(), 40000)
		if b1 != want || b2 != want {
			t.Errorf("site b behind masquerade: h1 saw %s, h2 saw %s; want both %s", b1, b2, want)
		}
		e1, e2 := seen(h6, h1), seen(h6, h2)
		if e1.Addr() != redge.PublicAddr() || e2.Addr() != redge.PublicAddr() {
			t.Errorf("edge: h1 saw %s, h2 saw %s; want address %s", e1, e2, redge.PublicAddr())
		}
		if e1.Port() == e2.Port() {
			t.Errorf("edge behind symmetric NAT: both destinations saw port %d", e1.Port())
		}
	})

	t.Run("non-gateway of a public site has no WAN", func(t *testing.T) {
		if out, err := h3.Exec(ctx, "ip", "route", "get", h1.PublicAddr().String()); err == nil {
			t.Errorf("h3 has a route to the WAN: %s", out)
		} else if !strings.Contains(err.Error(), "unreachable") {
			t.Errorf("h3: %v, want network unreachable", err)
		}
		noReach(ctx, t, h3.NS(), h2.PublicAddr())
		noReach(ctx, t, h3.NS(), rb.PublicAddr())
	})

	t.Run("unsolicited inbound is dropped", func(t *testing.T) {
		for _, c := range []struct {
			r *Router
			h *Host
		}{{rb, h4}, {redge, h6}} {
			if _, err := shortProbe(ctx, h1.NS(), netip.AddrPortFrom(h1.PublicAddr(), 7101), c.h.NS(), netip.AddrPortFrom(c.r.PublicAddr(), 40100)); err == nil {
				t.Errorf("an unsolicited datagram to %s reached %s", c.r.PublicAddr(), c.h.Name())
			}
		}
		// Masquerade maps endpoint-independently but filters per
		// destination address and port: once h4 wrote to h1:7102, h1:7102
		// gets in, h1:7103 does not.
		dst := netip.AddrPortFrom(h1.PublicAddr(), 7102)
		if _, err := UDPSource(ctx, h4.NS(), netip.AddrPortFrom(h4.SiteAddr(), 40101), h1.NS(), dst); err != nil {
			t.Fatal(err)
		}
		mapped := netip.AddrPortFrom(rb.PublicAddr(), 40101)
		if from, err := UDPSource(ctx, h1.NS(), dst, h4.NS(), mapped); err != nil || from != dst {
			t.Errorf("reply through the mapping: seen from %s, %v; want %s", from, err, dst)
		}
		if _, err := shortProbe(ctx, h1.NS(), netip.AddrPortFrom(h1.PublicAddr(), 7103), h4.NS(), mapped); err == nil {
			t.Error("another port of the same peer got through the mapping")
		}
		// A WAN host routing the private network at the router is
		// dropped there, and counted.
		before, err := rb.DroppedInbound(ctx)
		if err != nil {
			t.Fatal(err)
		}
		run := func(argv ...string) {
			t.Helper()
			if out, err := h1.Exec(ctx, argv...); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
		}
		run("ip", "route", "add", l.Site("b").Network().String(), "via", rb.PublicAddr().String())
		noReach(ctx, t, h1.NS(), h4.SiteAddr())
		run("ip", "route", "del", l.Site("b").Network().String())
		if after, err := rb.DroppedInbound(ctx); err != nil || after <= before {
			t.Errorf("router b dropped %d inbound packets before, %d after (%v)", before, after, err)
		}
	})

	t.Run("cut and heal the WAN", func(t *testing.T) {
		if err := l.CutWAN(ctx, "b"); err != nil {
			t.Fatal(err)
		}
		noReach(ctx, t, h4.NS(), h1.PublicAddr())
		reach(ctx, t, h6.NS(), h1.PublicAddr())
		reach(ctx, t, h2.NS(), h1.PublicAddr())
		if err := l.HealWAN(ctx, "b"); err != nil {
			t.Fatal(err)
		}
		reach(ctx, t, h4.NS(), h1.PublicAddr())

		if err := l.CutWAN(ctx); err != nil {
			t.Fatal(err)
		}
		noReach(ctx, t, h2.NS(), h1.PublicAddr())
		noReach(ctx, t, h6.NS(), h2.PublicAddr())
		reach(ctx, t, h1.NS(), h3.SiteAddr()) // private networks stay up
		if err := l.HealWAN(ctx); err != nil {
			t.Fatal(err)
		}
		reach(ctx, t, h2.NS(), h1.PublicAddr())
		reach(ctx, t, h6.NS(), h2.PublicAddr())
		if err := l.CutWAN(ctx, "nope"); err == nil {
			t.Error("unknown site accepted")
		}
	})

	t.Run("forwarding off and on", func(t *testing.T) {
		// h3 reaches the WAN only if h1 forwards for it.
		route := []string{"ip", "route", "add", h2.PublicAddr().String() + "/32", "via", h1.SiteAddr().String()}
		if out, err := h3.Exec(ctx, route...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		reach(ctx, t, h3.NS(), h2.PublicAddr())
		setForward(t, h1.SetForwarding, false)
		noReach(ctx, t, h3.NS(), h2.PublicAddr())
		setForward(t, h1.SetForwarding, true)
		reach(ctx, t, h3.NS(), h2.PublicAddr())

		setForward(t, rb.SetForwarding, false)
		noReach(ctx, t, h4.NS(), h1.PublicAddr())
		setForward(t, rb.SetForwarding, true)
		reach(ctx, t, h4.NS(), h1.PublicAddr())
	})

	t.Run("a crashed run is cleaned up", func(t *testing.T) {
		prefix := l.Prefix()
		// wan, 3 sites, 2 routers, 6 hosts, 6 pods
		if names, _ := ListNetns(prefix); len(names) != 18 {
			t.Errorf("%d namespaces: %v", len(names), names)
		}
		// What New does first when a run with this prefix crashed.
		if err := CleanupStale(prefix); err != nil {
			t.Fatal(err)
		}
		assertNoNetns(t, prefix)
		if err := l.Close(); err != nil {
			t.Errorf("Close after CleanupStale: %v", err)
		}
	})
}

// TestSitesCloseRemovesAll: Close alone removes every namespace of a
// multi-site lab, routers and bridges included.
func TestSitesCloseRemovesAll(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "nft")
	l := newLab(t, Spec{Sites: []SiteSpec{{Name: "x", Hosts: 1, Gateways: 1}, {Name: "y", Hosts: 1, Gateways: 1, NAT: NATSymmetric}}})
	prefix := l.Prefix()
	for _, ns := range []string{l.WANNS(), l.Site("x").NS(), l.Site("y").NS(), l.Router("y").NS(), l.Host(2).NS()} {
		if !netnsExists(ns) {
			t.Errorf("namespace %s missing", ns)
		}
	}
	reach(testCtx(t), t, l.Host(2).NS(), l.Host(1).PublicAddr())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	assertNoNetns(t, prefix)
}

// reach waits up to 10 s for a ping from ns to addr to succeed.
func reach(ctx context.Context, t *testing.T, ns string, addr netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := WaitFor(ctx, 100*time.Millisecond, func() error { return Ping(ctx, ns, addr, 1, time.Second) }); err != nil {
		t.Errorf("%s cannot reach %s: %v", ns, addr, err)
	}
}

// noReach expects a ping from ns to addr to fail.
func noReach(ctx context.Context, t *testing.T, ns string, addr netip.Addr) {
	t.Helper()
	if err := Ping(ctx, ns, addr, 1, time.Second); err == nil {
		t.Errorf("%s reaches %s", ns, addr)
	}
}

// shortProbe is UDPSource for probes expected to fail.
func shortProbe(ctx context.Context, fromNS string, src netip.AddrPort, toNS string, dst netip.AddrPort) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	return UDPSource(ctx, fromNS, src, toNS, dst)
}

func setForward(t *testing.T, set func(bool) error, on bool) {
	t.Helper()
	if err := set(on); err != nil {
		t.Fatal(err)
	}
}

func startWANCapture(ctx context.Context, t *testing.T, l *Lab) *Capture {
	t.Helper()
	c, err := l.StartCaptureOn(ctx, l.WANNS(), BridgeName)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func stop(t *testing.T, c *Capture) {
	t.Helper()
	if _, err := c.Stop(); err != nil {
		t.Fatal(err)
	}
}

// expectCount checks that min <= packets matching filter <= max (max < 0:
// no upper bound).
func expectCount(t *testing.T, c *Capture, filter string, min, max int) {
	t.Helper()
	n, err := c.Count(filter)
	if err != nil {
		t.Fatal(err)
	}
	if n < min || (max >= 0 && n > max) {
		t.Errorf("%s: %d packets match %q, want %d..%d", c, n, filter, min, max)
	}
}
