package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/lab"
)

// canary is sent through the overlay; finding it in an underlay capture
// would mean pod traffic crossed the wire in plaintext.
const canary = "MESHD-PLAINTEXT-CANARY-7f3e9b"

func pingPod(from, to *lab.Host, seg string) error {
	return lab.Ping(context.Background(), from.PodNS(seg), to.PodAddr(seg), 1, 2*time.Second)
}

// fullMesh succeeds when every pod answers every other pod of the segment.
func fullMesh(hosts []*lab.Host, seg string) func() error {
	return func() error {
		for _, a := range hosts {
			for _, b := range hosts {
				if a == b {
					continue
				}
				if err := pingPod(a, b, seg); err != nil {
					return fmt.Errorf("%s -> %s: %w", a.Name(), b.Name(), err)
				}
			}
		}
		return nil
	}
}

// peerState returns the state and whether it is configured for name in
// host's status, "" when host does not list it at all.
func peerState(t *testing.T, host *lab.Host, name string) (string, bool, error) {
	st, err := status(t, host)
	if err != nil {
		return "", false, err
	}
	for _, p := range st.Peers {
		if p.Name == name {
			return p.State, p.Configured, nil
		}
	}
	return "", false, nil
}

// tunnelRoutes lists the destinations routed into the WireGuard interface
// in a host's segment table, as `ip route` shows them.
func tunnelRoutes(t *testing.T, h *lab.Host) []string {
	out := run(t, h.NS(), "ip", "route", "show", "table", "51800")
	var dsts []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "dev "+h.Interface()) {
			dsts = append(dsts, strings.Fields(line)[0])
		}
	}
	slices.Sort(dsts)
	return dsts
}

// gone checks that host no longer has peer `name` as WireGuard peer nor
// route to its slice.
func gone(t *testing.T, host, dead *lab.Host, seg string) func() error {
	return func() error {
		if slices.Contains(tunnelRoutes(t, host), dead.Subnet(seg).String()) {
			return fmt.Errorf("%s still routes %s", host.Name(), dead.Subnet(seg))
		}
		out := run(t, host.NS(), "wg", "show", host.Interface(), "allowed-ips")
		if strings.Contains(out, dead.Subnet(seg).String()) {
			return fmt.Errorf("%s still has a peer for %s:\n%s", host.Name(), dead.Subnet(seg), out)
		}
		return nil
	}
}

func TestThreeHostMesh(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 3, Segments: []lab.SegmentSpec{blue}, Mode: "auto"})
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	hosts := l.Hosts()

	capture, err := l.StartCapture(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	began := time.Now()
	startAll(t, l, "")
	waitFor(t, 60*time.Second, "full connectivity between 3 hosts", fullMesh(hosts, "blue"))
	t.Logf("MEASURE three hosts from start to full pod connectivity: %.2fs", time.Since(began).Seconds())

	t.Run("tcp between all pods", func(t *testing.T) {
		for _, a := range hosts {
			for _, b := range hosts {
				if a == b {
					continue
				}
				server := netip.AddrPortFrom(b.PodAddr("blue"), 8080)
				payload := []byte(fmt.Sprintf("%s %s->%s %s", canary, a.Name(), b.Name(), strings.Repeat("x", 3000)))
				if err := lab.TCPExchange(context.Background(), b.PodNS("blue"), server, a.PodNS("blue"), payload); err != nil {
					t.Errorf("tcp %s -> %s: %v", a.Name(), b.Name(), err)
				}
			}
		}
	})

	t.Run("peers and routes match membership", func(t *testing.T) {
		for _, h := range hosts {
			var want []string
			for _, o := range hosts {
				if o != h {
					want = append(want, o.Subnet("blue").String())
				}
			}
			slices.Sort(want)
			if got := tunnelRoutes(t, h); !slices.Equal(got, want) {
				t.Errorf("%s tunnel routes %v, want %v", h.Name(), got, want)
			}
			ips := run(t, h.NS(), "wg", "show", h.Interface(), "allowed-ips")
			for _, w := range want {
				if !strings.Contains(ips, w) {
					t.Errorf("%s: `wg show` lacks a peer for %s:\n%s", h.Name(), w, ips)
				}
			}
			st, err := status(t, h)
			if err != nil {
				t.Fatal(err)
			}
			if st.Node.Mode != "userspace" && st.Node.Mode != "kernel" {
				t.Errorf("%s reports mode %q", h.Name(), st.Node.Mode)
			}
			for _, p := range st.Peers {
				if p.State != "alive" || !p.Configured || p.HandshakeAgeSeconds < 0 || p.RxBytes == 0 {
					t.Errorf("%s sees peer %+v; want alive, configured, handshaken, with traffic", h.Name(), p)
				}
			}
		}
	})

	// No route to a slice may leak to the underlay: with h3's slice gone
	// its address must be unreachable, not sent out of u0.
	t.Run("graceful stop removes the host at once and cleans up", func(t *testing.T) {
		h3key := publicKey(t, h3)
		stopped := time.Now()
		if err := h3.Stop(); err != nil {
			t.Fatalf("stop h3: %v\n%s", err, tail(h3.Log(), 30))
		}
		for _, h := range []*lab.Host{h1, h2} {
			waitFor(t, 10*time.Second, h.Name()+" drops h3", gone(t, h, h3, "blue"))
		}
		t.Logf("MEASURE graceful leave gone everywhere after: %.2fs (including h3's own shutdown)", time.Since(stopped).Seconds())
		if err := pingPod(h1, h3, "blue"); err == nil {
			t.Error("h1's pod still reaches h3's pod after h3 stopped")
		}
		out, _ := lab.Exec(context.Background(), h1.NS(), "ip", "route", "get", h3.PodAddr("blue").String(), "from", h1.PodAddr("blue").String(), "iif", "p-blue")
		if strings.Contains(out, "dev u0") {
			t.Errorf("traffic to the departed slice would leave on the underlay unencrypted: %s", out)
		}
		assertNothingLeft(t, h3)

		start(t, h3, "")
		waitFor(t, 30*time.Second, "h3 back", fullMesh(hosts, "blue"))
		if k := publicKey(t, h3); k != h3key {
			t.Errorf("h3 came back with a new key %s (was %s); peers would have to re-learn it", k, h3key)
		}
		// h3 leaving and returning must not touch the peer h1 has for h2.
		added := 0
		for _, line := range strings.Split(h1.Log(), "\n") {
			if !strings.Contains(line, " peer=h2 ") {
				continue
			}
			switch {
			case strings.Contains(line, `msg="peer added"`):
				added++
			case strings.Contains(line, `msg="peer removed"`), strings.Contains(line, `msg="peer updated"`):
				t.Errorf("h1 touched its untouched peer h2: %s", line)
			}
		}
		if added != 1 {
			t.Errorf("h1 added peer h2 %d times; want once", added)
		}
	})

	t.Run("status counters follow traffic", func(t *testing.T) {
		before := peerCounters(t, h1, "h2")
		payload := []byte(strings.Repeat("y", 200_000))
		server := netip.AddrPortFrom(h2.PodAddr("blue"), 8090)
		if err := lab.TCPExchange(context.Background(), h2.PodNS("blue"), server, h1.PodNS("blue"), payload); err != nil {
			t.Fatal(err)
		}
		after := peerCounters(t, h1, "h2")
		if after.TxBytes-before.TxBytes < int64(len(payload)) || after.RxBytes-before.RxBytes < int64(len(payload)) {
			t.Errorf("after a 200 kB echo, h1's counters for h2 moved tx %d rx %d", after.TxBytes-before.TxBytes, after.RxBytes-before.RxBytes)
		}
		if after.HandshakeAgeSeconds < 0 || after.HandshakeAgeSeconds > 180 {
			t.Errorf("handshake age %v", after.HandshakeAgeSeconds)
		}
		if out, code := runMeshd(t, meshdBin, "status", "--check", "--socket", h1.ControlSocket()); code != 0 {
			t.Errorf("status --check on a healthy mesh: exit %d %s", code, out)
		}
	})

	t.Run("SIGKILL is detected as failure", func(t *testing.T) {
		killed := time.Now()
		if err := h2.Kill(); err != nil {
			t.Fatal(err)
		}
		for _, h := range []*lab.Host{h1, h3} {
			waitFor(t, 30*time.Second, h.Name()+" marks h2 failed and drops it", func() error {
				state, configured, err := peerState(t, h, "h2")
				if err != nil {
					return err
				}
				if state != "failed" || configured {
					return fmt.Errorf("h2 is %q, configured=%v", state, configured)
				}
				return gone(t, h, h2, "blue")()
			})
		}
		t.Logf("MEASURE SIGKILLed host gone everywhere after: %.2fs", time.Since(killed).Seconds())
		if err := pingPod(h1, h3, "blue"); err != nil {
			t.Errorf("the surviving hosts lost each other: %v", err)
		}
		// A crash leaves state behind; a restart must repair it by itself.
		start(t, h2, "")
		waitFor(t, 30*time.Second, "h2 back after crash", fullMesh(hosts, "blue"))
	})

	t.Run("no plaintext on the underlay", func(t *testing.T) {
		pcap, err := capture.Stop()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(pcap, []byte(canary)) {
			t.Fatal("the canary payload crossed the underlay in plaintext")
		}
		if n, err := capture.Count("net 10.42.0.0/16"); err != nil || n != 0 {
			t.Fatalf("%d packets with pod addresses on the underlay (err %v); want 0", n, err)
		}
		if n, err := capture.Count("udp port 51820"); err != nil || n < 10 {
			t.Fatalf("only %d WireGuard packets captured (err %v): the capture saw nothing, so it proves nothing", n, err)
		}
	})

	t.Run("shutdown leaves nothing behind", func(t *testing.T) {
		for _, h := range hosts {
			if err := h.Stop(); err != nil {
				t.Errorf("stop %s: %v", h.Name(), err)
			}
			assertNothingLeft(t, h)
		}
	})
}

func peerCounters(t *testing.T, h *lab.Host, peer string) control.Peer {
	t.Helper()
	st, err := status(t, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Peers {
		if p.Name == peer {
			return p
		}
	}
	t.Fatalf("%s does not list %s", h.Name(), peer)
	return control.Peer{}
}

func publicKey(t *testing.T, h *lab.Host) string {
	st, err := status(t, h)
	if err != nil {
		t.Fatal(err)
	}
	return st.Node.PublicKey
}

// assertNothingLeft checks a stopped host for anything meshd creates.
func assertNothingLeft(t *testing.T, h *lab.Host) {
	t.Helper()
	if out, err := lab.Exec(context.Background(), h.NS(), "ip", "link", "show", h.Interface()); err == nil {
		t.Errorf("%s: interface %s still exists:\n%s", h.Name(), h.Interface(), out)
	}
	for _, fam := range []string{"-4", "-6"} {
		// iproute2 6.1 ignores a protocol filter on `ip rule show`.
		if out := run(t, h.NS(), "ip", fam, "rule", "show"); strings.Contains(out, "proto 149") {
			t.Errorf("%s: rules left behind:\n%s", h.Name(), out)
		}
		if out := run(t, h.NS(), "ip", fam, "route", "show", "table", "all", "proto", "149"); strings.TrimSpace(out) != "" {
			t.Errorf("%s: routes left behind:\n%s", h.Name(), out)
		}
	}
	if err := exec.Command("test", "-e", h.UAPISocket()).Run(); err == nil {
		t.Errorf("%s: UAPI socket %s left behind", h.Name(), h.UAPISocket())
	}
	if err := exec.Command("test", "-e", h.DockerPluginSocket()).Run(); err == nil {
		t.Errorf("%s: Docker plugin socket %s left behind", h.Name(), h.DockerPluginSocket())
	}
}
