package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/cni"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/lab"
)

// Real containers started by real runtimes on the lab's namespace hosts,
// attached by what meshd writes (podman: the CNI conflists) and serves
// (Docker: the network and IPAM plugin). Each test checks what a user
// sees: pings and TCP across hosts, denied flows, full-size packets,
// addresses given back, and containers unharmed by meshd restarting or
// stopping.

var (
	ctrBlue  = lab.SegmentSpec{Name: "blue", CIDR: "10.46.0.0/16", SliceBits: 24}
	ctrGreen = lab.SegmentSpec{Name: "green", CIDR: "10.47.0.0/16", SliceBits: 24}
)

// blue may open tcp/8080 on green; nothing else crosses.
const blueToGreen8080 = `[[allow]]
from = "blue"
to = "green"
ports = ["tcp/8080"]
`

// echoServer is a container command: a TCP echo server on port.
func echoServer(port int) []string {
	return []string{"nc", "-ll", "-p", strconv.Itoa(port), "-e", "/bin/cat"}
}

// containerLab starts meshd on every host of a new lab. The lab's own
// pod links hold each slice's gateway address, which belongs to the
// segment's bridge once containers attach, so they go first.
func containerLab(t *testing.T, hosts int, extra string) *lab.Lab {
	t.Helper()
	testenv.RequireTools(t, filepath.Join(cniPath, "bridge"), filepath.Join(cniPath, "host-local"))
	l := newLab(t, lab.Spec{Hosts: hosts, Segments: []lab.SegmentSpec{ctrBlue, ctrGreen}})
	for _, h := range l.Hosts() {
		for _, seg := range l.Spec().Segments {
			run(t, h.NS(), "ip", "link", "del", "p-"+seg.Name)
		}
		start(t, h, extra)
	}
	for _, h := range l.Hosts() {
		for _, seg := range l.Spec().Segments {
			path := filepath.Join(cniDir(h), cni.FileName(seg.Name))
			waitFor(t, 30*time.Second, "meshd writing "+path, func() error {
				_, err := os.Stat(path)
				return err
			})
		}
	}
	return l
}

// step narrates what the test shows; `make demo-containers` prints it.
func step(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("  "+format, args...)
}

// tcpEcho connects from clientNS to a container's echo server and
// checks the payload comes back; a refused or filtered flow is an error.
func tcpEcho(clientNS string, to netip.AddrPort) error {
	payload := []byte("meshd container echo " + to.String())
	var conn net.Conn
	err := lab.InNetns(clientNS, func() (err error) {
		conn, err = net.DialTimeout("tcp", to.String(), 3*time.Second)
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(payload); err != nil {
		return err
	}
	conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil {
		return err
	}
	if string(got) != string(payload) {
		return fmt.Errorf("echoed %q, sent %q", got, payload)
	}
	return nil
}

// mustBeDenied checks a flow fails, with no retry: it never worked.
func mustBeDenied(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s went through; the allow-list should drop it", what)
	}
}

func leaseExists(h *lab.Host, segment string, a netip.Addr) bool {
	_, err := os.Stat(filepath.Join(h.IPAMDir(), cni.NetworkName(segment), a.String()))
	return err == nil
}

// TestPodmanAcrossMesh: podman with its CNI backend starts containers on
// meshd's conflists on three hosts.
func TestPodmanAcrossMesh(t *testing.T) {
	began := time.Now()
	l := containerLab(t, 3, blueToGreen8080)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	p1, p2, p3 := newPodman(t, h1), newPodman(t, h2), newPodman(t, h3)
	st := waitStatus(t, h1)

	// podman run --network meshd-blue ...
	p1.start("c1", cni.NetworkName("blue"), "sleep", "600")
	p2.start("c2", cni.NetworkName("blue"), echoServer(8080)...)
	p3.start("c3", cni.NetworkName("green"), echoServer(8080)...)
	ns1 := attachNetns(t, l, "c1", p1.pid("c1"))
	ns2 := attachNetns(t, l, "c2", p2.pid("c2"))
	ns3 := attachNetns(t, l, "c3", p3.pid("c3"))
	a1, a2, a3 := containerIPv4(t, ns1), containerIPv4(t, ns2), containerIPv4(t, ns3)
	for _, c := range []struct {
		addr  netip.Prefix
		slice netip.Prefix
	}{{a1, h1.Subnet("blue")}, {a2, h2.Subnet("blue")}, {a3, h3.Subnet("green")}} {
		if c.addr.Masked() != c.slice {
			t.Errorf("container address %s is not in the host's slice %s", c.addr, c.slice)
		}
	}
	checkContainerLink(t, ns1, ctrBlue, st.Node.MTU)
	step(t, "podman containers: c1 %s on h1 (blue), c2 %s on h2 (blue), c3 %s on h3 (green); eth0 mtu %d", a1, a2, a3, st.Node.MTU)

	// Same segment, across hosts: ping from inside the container, TCP.
	waitFor(t, 60*time.Second, "c1 (h1) pings c2 (h2) over blue", func() error {
		return busyboxPing(p1.exec, "c1", a2.Addr())
	})
	step(t, "podman exec c1 ping %s: c2 answers through the mesh", a2.Addr())
	if err := tcpEcho(ns1, netip.AddrPortFrom(a2.Addr(), 8080)); err != nil {
		t.Errorf("TCP c1 -> c2: %v", err)
	}
	if err := pingDF(ns1, a2.Addr(), st.Node.MTU); err != nil {
		t.Errorf("full-MTU packet with DF c1 -> c2: %v", err)
	}
	// blue -> green tcp/8080 is allowed, and the reply finds its way back
	// to blue (the conflist routes every segment).
	waitFor(t, 30*time.Second, "c1 (blue) -> c3 (green) tcp/8080 with its reply", func() error {
		return tcpEcho(ns1, netip.AddrPortFrom(a3.Addr(), 8080))
	})
	// Nothing else crosses: not green -> blue, not blue -> green icmp.
	mustBeDenied(t, "ping c3 (green) -> c1 (blue)", busyboxPing(p3.exec, "c3", a1.Addr()))
	mustBeDenied(t, "ping c1 (blue) -> c3 (green)", busyboxPing(p1.exec, "c1", a3.Addr()))
	mustBeDenied(t, "TCP c3 (green) -> c2 (blue) port 8080", tcpEcho(ns3, netip.AddrPortFrom(a2.Addr(), 8080)))
	step(t, "TCP c1 -> c2:8080 echoes; %d-byte DF ping crosses; blue -> green tcp/8080 allowed with its reply; green -> blue and blue -> green icmp dropped", st.Node.MTU)

	// Restarting meshd leaves c1 alone: same address, and it reaches c2
	// again once the tunnel is back.
	if err := h1.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := containerIPv4(t, ns1); got != a1 {
		t.Errorf("c1's address changed to %s while meshd was stopped", got)
	}
	start(t, h1, blueToGreen8080)
	waitFor(t, 60*time.Second, "c1 pings c2 after meshd restarted", func() error {
		return busyboxPing(p1.exec, "c1", a2.Addr())
	})
	if err := tcpEcho(ns1, netip.AddrPortFrom(a2.Addr(), 8080)); err != nil {
		t.Errorf("TCP c1 -> c2 after restart: %v", err)
	}
	step(t, "meshd restarted on h1: c1 kept %s and reaches c2 again", a1)

	// meshd stops on h2: c2 keeps its interface, the bridge keeps the
	// gateway, the conflist stays, so podman rm can detach it and give
	// the address back.
	if err := h2.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := containerIPv4(t, ns2); got != a2 {
		t.Errorf("c2 lost its address when meshd stopped: %s", got)
	}
	run(t, h2.NS(), "ip", "link", "show", "dev", cni.BridgeName("blue"))
	if !leaseExists(h2, "blue", a2.Addr()) {
		t.Errorf("host-local lost c2's lease %s", a2.Addr())
	}
	p2.must("rm", "--force", "--time", "0", "c2")
	if leaseExists(h2, "blue", a2.Addr()) {
		t.Errorf("podman rm left host-local's lease for %s", a2.Addr())
	}
	step(t, "meshd stopped on h2: c2 kept its network; podman rm c2 gave %s back", a2.Addr())
	t.Logf("podman across three hosts: %s", time.Since(began).Round(100*time.Millisecond))
}

// TestDockerAcrossMesh: dockerd on two hosts uses meshd as network and
// IPAM driver; on h1 a podman container shares the segment's bridge and
// pool.
func TestDockerAcrossMesh(t *testing.T) {
	began := time.Now()
	l := containerLab(t, 2, blueToGreen8080)
	h1, h2 := l.Host(1), l.Host(2)
	pm := newPodman(t, h1)
	d1, d2 := startDocker(t, h1), startDocker(t, h2)
	st := waitStatus(t, h1)

	// A podman container came first on h1: segment blue's bridge holds
	// the slice, and Docker, which refuses pools the host already
	// routes, must be given the slice as --subnet.
	pm.start("p1", cni.NetworkName("blue"), echoServer(8080)...)
	nsP1 := attachNetns(t, l, "p1", pm.pid("p1"))
	aP1 := containerIPv4(t, nsP1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	out, err := d1.run(ctx, "network", "create", "--driver", "meshd", "--ipam-driver", "meshd", "--ipam-opt", "segment=blue", "-o", "segment=blue", "blue")
	cancel()
	if err == nil || !strings.Contains(out, "--subnet "+h1.Subnet("blue").String()) {
		t.Errorf("network create on a host already routing the slice: %v; want an error naming --subnet", err)
	}
	step(t, "docker network create on h1, where podman's p1 %s already uses blue's bridge: %s", aP1, strings.TrimSpace(out))
	d1.must("network", "create", "--driver", "meshd", "--ipam-driver", "meshd", "--subnet", h1.Subnet("blue").String(), "-o", "segment=blue", "blue")
	d2.must("network", "create", "--driver", "meshd", "--ipam-driver", "meshd", "--ipam-opt", "segment=blue", "-o", "segment=blue", "blue")
	d2.must("network", "create", "--driver", "meshd", "--ipam-driver", "meshd", "--ipam-opt", "segment=green", "green")

	d1.start("c1", "blue", "sleep", "600")
	d2.start("c2", "blue", echoServer(8080)...)
	d2.start("c3", "green", echoServer(8080)...)
	ns1 := attachNetns(t, l, "c1", d1.pid("c1"))
	ns2 := attachNetns(t, l, "c2", d2.pid("c2"))
	ns3 := attachNetns(t, l, "c3", d2.pid("c3"))
	a1, a2, a3 := containerIPv4(t, ns1), containerIPv4(t, ns2), containerIPv4(t, ns3)
	if a1.Masked() != h1.Subnet("blue") || a2.Masked() != h2.Subnet("blue") || a3.Masked() != h2.Subnet("green") {
		t.Errorf("addresses %s, %s, %s are not from the hosts' slices", a1, a2, a3)
	}
	if a1.Addr() == aP1.Addr() {
		t.Errorf("Docker's c1 and podman's p1 share %s", a1.Addr())
	}
	checkContainerLink(t, ns1, ctrBlue, st.Node.MTU)
	step(t, "docker containers: c1 %s on h1 (blue), c2 %s on h2 (blue), c3 %s on h2 (green); eth0 mtu %d", a1, a2, a3, st.Node.MTU)

	// Docker and podman containers of a segment share the bridge.
	if err := busyboxPing(d1.exec, "c1", aP1.Addr()); err != nil {
		t.Errorf("docker c1 -> podman p1 on h1: %v", err)
	}
	if err := tcpEcho(ns1, netip.AddrPortFrom(aP1.Addr(), 8080)); err != nil {
		t.Errorf("TCP docker c1 -> podman p1: %v", err)
	}
	waitFor(t, 60*time.Second, "c1 (h1) pings c2 (h2) over blue", func() error {
		return busyboxPing(d1.exec, "c1", a2.Addr())
	})
	if err := tcpEcho(ns1, netip.AddrPortFrom(a2.Addr(), 8080)); err != nil {
		t.Errorf("TCP c1 -> c2: %v", err)
	}
	if err := pingDF(ns1, a2.Addr(), st.Node.MTU); err != nil {
		t.Errorf("full-MTU packet with DF c1 -> c2: %v", err)
	}
	waitFor(t, 30*time.Second, "c1 (blue) -> c3 (green) tcp/8080 with its reply", func() error {
		return tcpEcho(ns1, netip.AddrPortFrom(a3.Addr(), 8080))
	})
	mustBeDenied(t, "ping c3 (green) -> c1 (blue)", busyboxPing(d2.exec, "c3", a1.Addr()))
	mustBeDenied(t, "TCP c3 (green) -> p1 (blue) port 8080", tcpEcho(ns3, netip.AddrPortFrom(aP1.Addr(), 8080)))
	step(t, "docker c1 reaches podman p1 on the same bridge and c2 on h2 (ping, TCP, %d-byte DF ping); blue -> green tcp/8080 allowed; green -> blue dropped", st.Node.MTU)

	// meshd restarts on h1: c1 is untouched, and the restarted driver
	// attaches a new container to the existing network and detaches c1.
	if err := h1.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := containerIPv4(t, ns1); got != a1 {
		t.Errorf("c1's address changed to %s while meshd was stopped", got)
	}
	start(t, h1, blueToGreen8080)
	waitStatus(t, h1)
	d1.start("c4", "blue", "sleep", "600")
	ns4 := attachNetns(t, l, "c4", d1.pid("c4"))
	a4 := containerIPv4(t, ns4)
	if a4.Addr() == a1.Addr() || a4.Addr() == aP1.Addr() {
		t.Errorf("c4 got %s, an address in use", a4)
	}
	waitFor(t, 60*time.Second, "c4 (new after restart) pings c2", func() error {
		return busyboxPing(d1.exec, "c4", a2.Addr())
	})
	if err := busyboxPing(d1.exec, "c1", a2.Addr()); err != nil {
		t.Errorf("c1 -> c2 after meshd restarted: %v", err)
	}
	if !leaseExists(h1, "blue", a1.Addr()) {
		t.Errorf("no lease for c1's %s", a1.Addr())
	}
	d1.must("rm", "--force", "c1")
	if leaseExists(h1, "blue", a1.Addr()) {
		t.Errorf("docker rm left the lease for %s", a1.Addr())
	}
	step(t, "meshd restarted on h1: c1 kept %s; new c4 %s pings c2; docker rm c1 gave %s back", a1, a4, a1.Addr())

	// meshd stops on h2: its containers keep their network; Docker can
	// still remove them once meshd is back.
	if err := h2.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := containerIPv4(t, ns2); got != a2 {
		t.Errorf("c2 lost its address when meshd stopped: %s", got)
	}
	start(t, h2, blueToGreen8080)
	waitStatus(t, h2)
	d2.must("rm", "--force", "c2", "c3")
	d2.must("network", "rm", "green")
	if _, err := lab.Exec(context.Background(), h2.NS(), "ip", "link", "show", "dev", cni.BridgeName("green")); err == nil {
		t.Errorf("docker network rm left the unused bridge %s", cni.BridgeName("green"))
	}
	step(t, "meshd stopped on h2: c2 kept %s; after its restart docker rm and network rm worked", a2)
	t.Logf("docker across two hosts: %s", time.Since(began).Round(100*time.Millisecond))
}
