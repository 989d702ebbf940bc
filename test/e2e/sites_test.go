package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/lab"
)

// TestSitesAndNAT runs the internet in namespaces: site a with three
// hosts on a private network, two of them gateways with public
// addresses; site b's two hosts behind a NAT router, one its gateway; an
// edge host alone behind a symmetric NAT. No coordination server: the
// gateways find each other in the WAN pool, the NATed ones open their
// tunnels themselves, and the edge host, which no direct path can reach
// from site b, is relayed through site a.
func TestSitesAndNAT(t *testing.T) {
	l := newLab(t, lab.Spec{
		Segments: []lab.SegmentSpec{blue, green},
		Sites: []lab.SiteSpec{
			{Name: "a", Hosts: 3, Gateways: 2},
			{Name: "b", Hosts: 2, Gateways: 1, NAT: lab.NATMasquerade},
			{Name: "edge", Hosts: 1, Gateways: 1, NAT: lab.NATSymmetric},
		},
	})
	hosts := l.Hosts()
	capture, err := l.StartCaptureOn(context.Background(), l.WANNS(), lab.BridgeName)
	if err != nil {
		t.Fatal(err)
	}
	// Site a's plain host probes its gateways; it runs as the systemd
	// unit runs meshd, so the probes are shown to work with the unit's
	// capabilities.
	prober, unitCaps := l.Host(3), unitCapsWrapper(t)
	began := time.Now()
	for _, h := range hosts {
		if h != prober {
			start(t, h, "")
			continue
		}
		if _, err := h.WriteConfig(""); err != nil {
			t.Fatal(err)
		}
		if err := h.Start(unitCaps); err != nil {
			t.Fatal(err)
		}
	}
	took := waitFor(t, 120*time.Second, "every pod answers every pod across sites and NAT", allPods(hosts, "blue", "green"))
	t.Logf("MEASURE six hosts in three sites from start to full pod connectivity: %s", took.Round(time.Millisecond))
	_ = began

	t.Run("tcp across sites", func(t *testing.T) {
		for _, pair := range [][2]int{{3, 5}, {5, 6}, {6, 2}} {
			a, b := l.Host(pair[0]), l.Host(pair[1])
			server := netip.AddrPortFrom(b.PodAddr("blue"), 8080)
			payload := []byte(fmt.Sprintf("%s %s->%s %s", canary, a.Name(), b.Name(), strings.Repeat("x", 3000)))
			if err := lab.TCPExchange(context.Background(), b.PodNS("blue"), server, a.PodNS("blue"), payload); err != nil {
				t.Errorf("tcp %s -> %s: %v", a.Name(), b.Name(), err)
			}
		}
	})

	t.Run("hosts that are not gateways peer only inside their site", func(t *testing.T) {
		for _, h := range hosts {
			if h.IsGateway() {
				continue
			}
			out := run(t, h.NS(), "wg", "show", h.Interface(), "endpoints")
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if strings.Contains(line, "203.0.113.") {
					t.Errorf("%s (site %s) has a WAN peer: %s", h.Name(), h.Site().Name(), line)
				}
			}
			if n := len(strings.Split(strings.TrimSpace(out), "\n")); n != len(h.Site().Hosts())-1 {
				t.Errorf("%s has %d peers, its site has %d other hosts:\n%s", h.Name(), n, len(h.Site().Hosts())-1, out)
			}
		}
	})

	t.Run("green to blue is denied across sites", func(t *testing.T) {
		a, b := l.Host(3), l.Host(5)
		if err := lab.Ping(context.Background(), a.PodNS("green"), b.PodAddr("blue"), 1, 2*time.Second); err == nil {
			t.Error("a green pod in site a reached a blue pod in site b")
		}
	})

	t.Run("the edge host reaches site b through a relay", func(t *testing.T) {
		edge := l.Host(6)
		waitFor(t, 30*time.Second, "edge's status shows site b relayed", func() error {
			st, err := status(t, edge)
			if err != nil {
				return err
			}
			s := siteStatus(st, "b")
			if s == nil || s.Transit == "" {
				return fmt.Errorf("site b from edge: %+v", s)
			}
			return nil
		})
		if err := pingPod(edge, l.Host(5), "blue"); err != nil {
			t.Error(err)
		}
	})

	// Which of site a's gateways carries the pair (a, b): kill it.
	t.Run("a gateway of site a is killed", func(t *testing.T) {
		st, err := status(t, l.Host(3))
		if err != nil {
			t.Fatal(err)
		}
		serving := siteStatus(st, "b").Gateway
		victim := hostNamed(hosts, serving)
		if err := victim.Kill(); err != nil {
			t.Fatal(err)
		}
		// One-second pings: the measurement is as fine as their timeout.
		quick := func(from, to *lab.Host) error {
			return lab.Ping(context.Background(), from.PodNS("blue"), to.PodAddr("blue"), 1, time.Second)
		}
		took := waitFor(t, 30*time.Second, "site a reaches site b again", func() error {
			return errors.Join(quick(l.Host(3), l.Host(5)), quick(l.Host(5), l.Host(3)))
		})
		t.Logf("MEASURE cross-site traffic back %s after SIGKILL of gateway %s", took.Round(time.Millisecond), serving)
		if took > 10*time.Second {
			t.Errorf("cross-site traffic came back after %s, promised 10 s on LAN timers", took)
		}
		start(t, victim, "")
		waitFor(t, 60*time.Second, "the killed gateway is back", allPods(hosts, "blue"))
	})

	t.Run("a gateway that stops forwarding is bypassed", func(t *testing.T) {
		st, err := status(t, l.Host(3))
		if err != nil {
			t.Fatal(err)
		}
		serving := hostNamed(hosts, siteStatus(st, "b").Gateway)
		if err := serving.SetForwarding(false); err != nil {
			t.Fatal(err)
		}
		defer serving.SetForwarding(true)
		took := waitFor(t, 30*time.Second, "site a reaches site b around the broken gateway", func() error {
			return pingPod(l.Host(3), l.Host(5), "blue")
		})
		t.Logf("MEASURE a gateway without forwarding bypassed after %s", took.Round(time.Millisecond))
		if took > 15*time.Second {
			t.Errorf("bypassed after %s, promised 15 s", took)
		}
		st, _ = status(t, serving)
		if !st.Node.Draining {
			t.Errorf("%s does not report itself draining", serving.Name())
		}
	})

	// Forwarding on, but a firewall of its own drops everything the
	// gateway forwards (a reloaded FORWARD chain): only probes through the
	// gateway can tell, and the site's plain host makes them.
	t.Run("a gateway whose firewall drops forwarded packets is found by probes and bypassed", func(t *testing.T) {
		// The gateway of the last step undrains when its forwarding comes
		// back, and the pair returns to it: wait for that to settle, and
		// for the probes' grace after a gateway (re)enters their plan.
		waitFor(t, 60*time.Second, "site a's gateways carry traffic again", func() error {
			for _, gw := range l.Site("a").Gateways() {
				st, err := status(t, gw)
				if err != nil {
					return err
				}
				if st.Node.Draining {
					return fmt.Errorf("%s drains: %s", gw.Name(), st.Node.DrainReason)
				}
			}
			return pingPod(l.Host(3), l.Host(5), "blue")
		})
		time.Sleep(7 * time.Second)
		st, err := status(t, l.Host(3))
		if err != nil {
			t.Fatal(err)
		}
		serving := hostNamed(hosts, siteStatus(st, "b").Gateway)
		run(t, serving.NS(), "nft", "add", "table", "inet", "e2e_firewall")
		defer run(t, serving.NS(), "nft", "delete", "table", "inet", "e2e_firewall")
		run(t, serving.NS(), "nft", "add", "chain", "inet", "e2e_firewall", "forward", "{ type filter hook forward priority -10; policy drop; }")
		took := waitFor(t, 30*time.Second, "site a reaches site b around the gateway that drops", func() error {
			return lab.Ping(context.Background(), l.Host(3).PodNS("blue"), l.Host(5).PodAddr("blue"), 1, time.Second)
		})
		t.Logf("MEASURE a gateway whose firewall drops forwarded packets bypassed after %s", took.Round(time.Millisecond))
		if took > 15*time.Second {
			t.Errorf("bypassed after %s, promised 15 s", took)
		}
		st, err = status(t, serving)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Node.Draining || !strings.Contains(st.Node.DrainReason, "probes by "+l.Host(3).Name()) || st.Ejections == 0 {
			t.Errorf("%s: draining %v (%q), %d ejections; want draining on %s's report", serving.Name(), st.Node.Draining, st.Node.DrainReason, st.Ejections, l.Host(3).Name())
		}
		st, err = status(t, l.Host(3))
		if err != nil {
			t.Fatal(err)
		}
		if st.ProbeReports == 0 {
			t.Errorf("%s's status shows no report: %+v", l.Host(3).Name(), st.Probes)
		}
	})

	t.Run("the WAN is cut for 30 s and healed", func(t *testing.T) {
		if err := l.CutWAN(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Second)
		if err := l.HealWAN(context.Background()); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, 120*time.Second, "everything back after the heal", allPods(hosts, "blue"))
		t.Logf("MEASURE full connectivity %s after the WAN healed", took.Round(time.Millisecond))
	})

	if _, err := capture.Stop(); err != nil {
		t.Fatal(err)
	}
	// Only WireGuard and encrypted gossip cross the WAN: no pod address
	// and no site's private address in any header.
	for filter, what := range map[string]string{
		"net 10.42.0.0/16 or net 10.43.0.0/16": "plaintext pod packets",
		"net 172.16.0.0/12":                    "packets carrying a site's private addresses",
	} {
		n, err := capture.Count(filter)
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%d %s on the WAN", n, what)
		}
	}
	// A host whose meshd was killed answers the tunnels and the gossip
	// still aimed at it with ICMP port unreachable, quoting their
	// (encrypted) headers; anything else is not allowed on the WAN.
	const quotesOurs = "(icmp[0] == 3 and (icmp[28:2] == 51820 or icmp[30:2] == 51820 or icmp[28:2] == 7947 or icmp[30:2] == 7947))"
	const other = "ip and not (udp port 51820 or port 7947) and not " + quotesOurs
	if n, err := capture.Count(other); err != nil {
		t.Fatal(err)
	} else if n != 0 {
		out, _ := exec.Command("tcpdump", "-nn", "-r", capture.Path(), other).CombinedOutput()
		t.Errorf("%d IP packets on the WAN that are neither WireGuard nor WAN gossip:\n%s", n, tail(string(out), 20))
	}
}

// allPods pings every pod from every pod of the same segment.
func allPods(hosts []*lab.Host, segs ...string) func() error {
	return func() error {
		for _, seg := range segs {
			if err := fullMesh(hosts, seg)(); err != nil {
				return fmt.Errorf("segment %s: %w", seg, err)
			}
		}
		return nil
	}
}

func siteStatus(st *control.Status, name string) *control.Site {
	for i := range st.Sites {
		if st.Sites[i].Name == name {
			return &st.Sites[i]
		}
	}
	return nil
}

func hostNamed(hosts []*lab.Host, name string) *lab.Host {
	for _, h := range hosts {
		if h.Name() == name {
			return h
		}
	}
	return nil
}
