package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/lab"
)

var green = lab.SegmentSpec{Name: "green", CIDR: "10.43.0.0/16", SliceBits: 24}

const allowBlueToGreen8080 = `
[[allow]]
from = "blue"
to = "green"
ports = ["tcp/8080"]
`

// tcpOK reports whether a TCP exchange from a pod to a pod succeeds
// within a short, bounded time; a filtered SYN just times out.
func tcpOK(from, to *lab.Host, fromSeg, toSeg string, port uint16) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return lab.TCPExchange(ctx, to.PodNS(toSeg), netip.AddrPortFrom(to.PodAddr(toSeg), port), from.PodNS(fromSeg), []byte(canary+" policy"))
}

// udpOK sends one datagram from a pod to an echoing pod and waits for the
// echo.
func udpOK(from, to *lab.Host, fromSeg, toSeg string, port uint16) error {
	var server *net.UDPConn
	addr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(to.PodAddr(toSeg), port))
	if err := lab.InNetns(to.PodNS(toSeg), func() (err error) {
		server, err = net.ListenUDP("udp", addr)
		return err
	}); err != nil {
		return err
	}
	defer server.Close()
	go func() {
		buf := make([]byte, 2048)
		server.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, peer, err := server.ReadFromUDP(buf)
		if err == nil {
			server.WriteToUDP(buf[:n], peer)
		}
	}()
	var client *net.UDPConn
	if err := lab.InNetns(from.PodNS(fromSeg), func() (err error) {
		client, err = net.DialUDP("udp", nil, addr)
		return err
	}); err != nil {
		return err
	}
	defer client.Close()
	client.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := client.Write([]byte("dns?")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := client.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "dns?" {
		return fmt.Errorf("udp echo %q", buf[:n])
	}
	return nil
}

func pingAcross(from, to *lab.Host, fromSeg, toSeg string) error {
	return lab.Ping(context.Background(), from.PodNS(fromSeg), to.PodAddr(toSeg), 1, 2*time.Second)
}

func reload(t *testing.T, h *lab.Host, extra string) {
	t.Helper()
	if _, err := h.WriteConfig(extra); err != nil {
		t.Fatal(err)
	}
	out, code := runMeshd(t, meshdBin, "reload", "--socket", h.ControlSocket())
	if code != 0 {
		t.Fatalf("meshd reload on %s: exit %d: %s", h.Name(), code, out)
	}
}

func counters(t *testing.T, h *lab.Host) map[string]control.PolicyCounter {
	t.Helper()
	st, err := status(t, h)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]control.PolicyCounter{}
	for _, c := range st.Policy {
		out[c.Label] = c
	}
	return out
}

func TestAllowListsOnRealTraffic(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 3, Segments: []lab.SegmentSpec{blue, green}})
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	capture, err := l.StartCapture(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	startAll(t, l, "")
	waitFor(t, 60*time.Second, "blue mesh", fullMesh(l.Hosts(), "blue"))
	waitFor(t, 30*time.Second, "green mesh", fullMesh(l.Hosts(), "green"))

	t.Run("same segment flows on every protocol", func(t *testing.T) {
		if err := tcpOK(h1, h2, "blue", "blue", 8081); err != nil {
			t.Errorf("tcp blue->blue: %v", err)
		}
		// The pods' 1500-byte links would overshoot the tunnel: h1 clamps
		// the SYN, h2 the SYN-ACK, and status shows both.
		for _, h := range []*lab.Host{h1, h2} {
			if c := counters(t, h)["mss-clamp"]; c.Packets == 0 || c.Action != "clamp" {
				t.Errorf("%s mss-clamp counter %+v; want the handshake counted", h.Name(), c)
			}
		}
		if err := udpOK(h1, h2, "green", "green", 5353); err != nil {
			t.Errorf("udp green->green: %v", err)
		}
	})

	t.Run("cross segment is denied by default", func(t *testing.T) {
		if err := pingAcross(h1, h2, "blue", "green"); err == nil {
			t.Error("ping blue->green passed with no rule")
		}
		if err := tcpOK(h1, h2, "blue", "green", 8080); err == nil {
			t.Error("tcp blue->green:8080 passed with no rule")
		}
		if err := udpOK(h1, h2, "blue", "green", 53); err == nil {
			t.Error("udp blue->green:53 passed with no rule")
		}
		if c := counters(t, h1)["default-deny"]; c.Packets == 0 || c.Action != "drop" {
			t.Errorf("h1 default-deny counter %+v; the outbound drops must be counted", c)
		}
	})

	// Each host enforces its own rules: h2 (the receiver) must allow it
	// too, so a sender with a permissive config cannot push traffic in.
	t.Run("a rule on the sender alone is not enough", func(t *testing.T) {
		reload(t, h1, allowBlueToGreen8080)
		if err := tcpOK(h1, h2, "blue", "green", 8080); err == nil {
			t.Error("h2 accepted blue->green:8080 that only h1's policy allows")
		}
		if c := counters(t, h2)["default-deny"]; c.Packets == 0 {
			t.Errorf("h2 dropped nothing inbound: %+v", c)
		}
	})

	var established net.Conn
	t.Run("only the named port passes, with replies", func(t *testing.T) {
		for _, h := range []*lab.Host{h2, h3} {
			reload(t, h, allowBlueToGreen8080)
		}
		if err := tcpOK(h1, h2, "blue", "green", 8080); err != nil {
			t.Errorf("tcp blue->green:8080 with the rule: %v", err)
		}
		if err := tcpOK(h3, h2, "blue", "green", 8080); err != nil {
			t.Errorf("tcp h3 blue->h2 green:8080 with the rule: %v", err)
		}
		if err := tcpOK(h1, h2, "blue", "green", 8081); err == nil {
			t.Error("tcp blue->green:8081 passed; only 8080 is allowed")
		}
		if err := udpOK(h1, h2, "blue", "green", 8080); err == nil {
			t.Error("udp blue->green:8080 passed; only tcp is allowed")
		}
		if err := pingAcross(h1, h2, "blue", "green"); err == nil {
			t.Error("ping blue->green passed; only tcp/8080 is allowed")
		}
		if err := tcpOK(h2, h1, "green", "blue", 8080); err == nil {
			t.Error("green->blue:8080 passed; the rule is one-way")
		}
		if c := counters(t, h2)["allow[0]"]; c.Packets == 0 || c.Action != "accept" {
			t.Errorf("h2 allow[0] counter %+v; want accepted packets", c)
		}
		established = openEcho(t, h1, h2, "blue", "green", 8080)
	})

	t.Run("reload without the rule stops new connections, keeps established ones", func(t *testing.T) {
		if established == nil {
			t.Skip("no established connection from the previous step")
		}
		defer established.Close()
		for _, h := range []*lab.Host{h1, h2} {
			reload(t, h, "")
		}
		if err := echo(established, "after reload"); err != nil {
			t.Errorf("an established allowed flow broke on reload: %v", err)
		}
		if err := tcpOK(h1, h2, "blue", "green", 8080); err == nil {
			t.Error("a new blue->green:8080 connection passed after the rule was removed")
		}
		// SIGHUP is the same reload.
		if _, err := h1.WriteConfig(allowBlueToGreen8080); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(h1.Pid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "SIGHUP reload on h1", func() error {
			if _, ok := counters(t, h1)["allow[0]"]; !ok {
				return errors.New("allow[0] not installed yet")
			}
			return nil
		})
	})

	t.Run("a bad reload is refused and the running rules stay", func(t *testing.T) {
		if _, err := h2.WriteConfig("[[allow]]\nfrom = \"blue\"\nto = \"purple\"\n"); err != nil {
			t.Fatal(err)
		}
		out, code := runMeshd(t, meshdBin, "reload", "--socket", h2.ControlSocket())
		if code != 2 || !strings.Contains(out, "allow[0].to") {
			t.Errorf("bad reload: exit %d, %q; want exit 2 naming allow[0].to", code, out)
		}
		if err := tcpOK(h1, h2, "blue", "blue", 8082); err != nil {
			t.Errorf("same-segment traffic broke after a refused reload: %v", err)
		}
	})

	t.Run("a forged source in another host's slice is dropped", func(t *testing.T) {
		forged := netip.MustParseAddr("10.42.3.99") // inside h3's blue slice
		run(t, h2.PodNS("blue"), "ip", "addr", "add", forged.String()+"/32", "dev", "eth0")
		_, err := lab.Exec(context.Background(), h2.PodNS("blue"), "ping", "-c", "2", "-W", "1", "-I", forged.String(), h1.PodAddr("blue").String())
		if err == nil {
			t.Error("h1 answered a packet from h2 claiming h3's address")
		}
		if err := pingAcross(h2, h1, "blue", "blue"); err != nil {
			t.Errorf("h2's honest traffic broke: %v", err)
		}
	})

	t.Run("policy explain previews the same verdicts", func(t *testing.T) {
		cases := []struct{ from, to, port, want string }{
			{h1.PodAddr("blue").String(), h2.PodAddr("green").String(), "tcp/8080", "allow (rule allow[0]"},
			{h1.PodAddr("blue").String(), h2.PodAddr("green").String(), "tcp/8081", "deny (default"},
			{h1.PodAddr("blue").String(), h2.PodAddr("blue").String(), "udp/53", "allow (default: same segment blue"},
		}
		for _, c := range cases {
			out, code := runMeshd(t, meshdBin, "policy", "explain", "--config", h1.ConfigPath(), "--from", c.from, "--to", c.to, "--port", c.port)
			if code != 0 || !strings.HasPrefix(strings.TrimSpace(out), c.want) {
				t.Errorf("explain %s -> %s %s: exit %d %q, want %q...", c.from, c.to, c.port, code, out, c.want)
			}
		}
	})

	t.Run("no plaintext overlay traffic on the underlay", func(t *testing.T) {
		pcap, err := capture.Stop()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(pcap, []byte(canary)) {
			t.Fatal("overlay payload crossed the underlay in plaintext")
		}
		if n, err := capture.Count("net 10.42.0.0/16 or net 10.43.0.0/16"); err != nil || n != 0 {
			t.Fatalf("%d overlay-addressed packets on the underlay (err %v)", n, err)
		}
	})

	t.Run("shutdown removes the nftables table", func(t *testing.T) {
		for _, h := range l.Hosts() {
			if err := h.Stop(); err != nil {
				t.Errorf("stop %s: %v", h.Name(), err)
			}
			if out := run(t, h.NS(), "nft", "list", "tables"); strings.Contains(out, "meshd") {
				t.Errorf("%s: nftables table left behind:\n%s", h.Name(), out)
			}
			assertNothingLeft(t, h)
		}
	})
}

// openEcho opens a TCP connection from a pod to an echo server in another
// pod and returns it after one successful round trip.
func openEcho(t *testing.T, from, to *lab.Host, fromSeg, toSeg string, port uint16) net.Conn {
	t.Helper()
	addr := net.TCPAddrFromAddrPort(netip.AddrPortFrom(to.PodAddr(toSeg), port))
	var ln net.Listener
	if err := lab.InNetns(to.PodNS(toSeg), func() (err error) {
		ln, err = net.ListenTCP("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	var conn net.Conn
	if err := lab.InNetns(from.PodNS(fromSeg), func() (err error) {
		conn, err = (&net.Dialer{Timeout: 3 * time.Second}).Dial("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatalf("open long-lived connection: %v", err)
	}
	if err := echo(conn, "hello"); err != nil {
		conn.Close()
		t.Fatalf("long-lived connection: %v", err)
	}
	return conn
}

func echo(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}
