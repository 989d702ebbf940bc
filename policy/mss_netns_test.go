package policy_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/policy"
	"golang.org/x/sys/unix"
)

// The clamp topology extends setup's:
//
//	pod ──1500── router ──"mesh-t0" 1440── remote ──1500── server
//
// remote is a far host without meshd and server a pod behind it, so the
// router's clamp is the only one: it lowers the MSS in SYNs and SYN-ACKs
// the router sends into the tunnel, which is what the far side sizes its
// segments by.
const (
	tunnelMTU = 1440
	server4   = "10.42.3.2" // blue, behind remote
	server6   = "fd42:0:0:3::2"
	bulkSize  = 256 << 10
)

// MSS values for the tunnel MTU, and for a 1500-byte link without the clamp.
const (
	clamped4, clamped6     = tunnelMTU - 40, tunnelMTU - 60
	unclamped4, unclamped6 = 1500 - 40, 1500 - 60
)

func setupClamp(t *testing.T) (*topo, string) {
	t.Helper()
	tp := setup(t)
	r, x := tp.router, tp.remote
	srv := newNetns(t, "server")
	run(t, "ip", "-n", r, "link", "set", tunIface, "mtu", fmt.Sprint(tunnelMTU))
	run(t, "ip", "-n", x, "link", "set", "tun0", "mtu", fmt.Sprint(tunnelMTU))
	run(t, "ip", "-n", x, "link", "add", "srv0", "type", "veth", "peer", "name", "eth0", "netns", srv)
	for _, a := range []string{"10.42.3.1/24", "fd42:0:0:3::1/64"} {
		run(t, "ip", "-n", x, "addr", "add", a, "dev", "srv0", "nodad")
	}
	for _, a := range []string{server4 + "/24", server6 + "/64"} {
		run(t, "ip", "-n", srv, "addr", "add", a, "dev", "eth0", "nodad")
	}
	run(t, "ip", "-n", x, "link", "set", "srv0", "up")
	run(t, "ip", "-n", srv, "link", "set", "eth0", "up")
	run(t, "ip", "-n", srv, "route", "add", "default", "via", "10.42.3.1")
	run(t, "ip", "-n", srv, "route", "add", "default", "via", "fd42:0:0:3::1")
	run(t, "ip", "-n", r, "route", "add", "10.42.3.0/24", "via", "192.0.2.2")
	run(t, "ip", "-n", r, "route", "add", "fd42:0:0:3::/64", "via", "fd00:77::2")
	ns(t, x, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// The field failure: the far host's "fragmentation needed" never
	// reaches the server, so PMTU discovery cannot rescue an MSS that is
	// too large and the flow stalls.
	nftIn(t, x, `table inet blackhole {
		chain out {
			type filter hook output priority filter; policy accept;
			icmp type destination-unreachable drop
			icmpv6 type packet-too-big drop
		}
	}`)
	return tp, srv
}

func nftIn(t *testing.T, name, script string) string {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nft -f in %s: %v: %s\n%s", name, err, out, script)
	}
	return string(out)
}

func nftOut(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", name, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// capture is an AF_PACKET socket seeing the IP packets that arrive on one
// interface, opened before a connection so its handshake is queued.
type capture struct{ fd int }

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func capturePackets(t *testing.T, name, dev string) *capture {
	t.Helper()
	var c capture
	err := inNetns(name, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		c.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind packet socket to %s: %w", dev, err)
		}
		tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if c.fd != 0 {
		t.Cleanup(func() { unix.Close(c.fd) })
	}
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// handshake is one received TCP segment with SYN set.
type handshake struct {
	src, dst netip.AddrPort
	flags    byte
	mss      int // -1: no maxseg option
}

// synMSS returns the maxseg option of the SYN-flagged segment of the
// connection between a and b that arrived on the captured interface: the
// SYN when capturing at the server, the SYN-ACK at the client.
func (c *capture) synMSS(a, b netip.AddrPort) (int, error) {
	buf := make([]byte, 2048)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return 0, fmt.Errorf("no SYN of %s <-> %s arrived", a, b)
		}
		if err != nil {
			return 0, err
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		h, ok := parseSYN(buf[:n])
		if ok && (h.src == a && h.dst == b || h.src == b && h.dst == a) {
			return h.mss, nil
		}
	}
}

func parseSYN(p []byte) (handshake, bool) {
	var h handshake
	var src, dst netip.Addr
	var tcp []byte
	switch {
	case len(p) >= 20 && p[0]>>4 == 4 && p[9] == unix.IPPROTO_TCP:
		src, dst = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		tcp = p[int(p[0]&0xf)*4:]
	case len(p) >= 40 && p[0]>>4 == 6 && p[6] == unix.IPPROTO_TCP:
		src, dst = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		tcp = p[40:]
	default:
		return h, false
	}
	if len(tcp) < 20 || tcp[13]&0x02 == 0 {
		return h, false
	}
	h.src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:]))
	h.dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:]))
	h.flags, h.mss = tcp[13], -1
	opts := tcp[20:min(len(tcp), int(tcp[12]>>4)*4)]
	for len(opts) > 0 {
		switch kind := opts[0]; {
		case kind == 0:
			return h, true
		case kind == 1:
			opts = opts[1:]
		case len(opts) < 2 || int(opts[1]) < 2 || int(opts[1]) > len(opts):
			return h, true
		default:
			if kind == 2 && opts[1] == 4 {
				h.mss = int(binary.BigEndian.Uint16(opts[2:]))
			}
			opts = opts[opts[1]:]
		}
	}
	return h, true
}

// listen accepts connections in a namespace and sends each bulkSize
// bytes, so a transfer shows whether the server's segments fit the
// tunnel.
func listen(t *testing.T, name, addr string) {
	t.Helper()
	var ln net.Listener
	if err := inNetns(name, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write(make([]byte, bulkSize))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
}

// dialMSS connects from name, advertising userMSS if non-zero as a peer
// whose own link is smaller would.
func dialMSS(name, src, dst string, userMSS int) (*net.TCPConn, error) {
	var c net.Conn
	err := inNetns(name, func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: probeTimeout}
		if userMSS != 0 {
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, userMSS)
				}); err != nil {
					return err
				}
				return serr
			}
		}
		c, err = d.Dial("tcp", dst)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// mssSeen opens a connection and returns the MSS option the capture
// namespace received in its handshake.
func mssSeen(t *testing.T, capNS, from, src, dst string, userMSS int) int {
	t.Helper()
	capt := capturePackets(t, capNS, "eth0")
	c, err := dialMSS(from, src, dst, userMSS)
	if err != nil {
		t.Fatalf("%s -> %s: %v", src, dst, err)
	}
	defer c.Close()
	mss, err := capt.synMSS(c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	return mss
}

// bulkOK reports whether the server's whole transfer reaches the pod.
func bulkOK(t *testing.T, from, src, dst string) bool {
	t.Helper()
	c, err := dialMSS(from, src, dst, 0)
	if err != nil {
		t.Fatalf("%s -> %s: %v", src, dst, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	n, err := io.Copy(io.Discard, c)
	return err == nil && n == bulkSize
}

// TestClampNetns checks the clamp on real handshakes: what MSS the far
// side is told with and without meshd's table, that it is never raised,
// and that it turns an ICMP black hole into a working transfer.
func TestClampNetns(t *testing.T) {
	tp, srv := setupClamp(t)
	p, r := tp.pod, tp.router
	for _, a := range []string{server4 + ":9000", "[" + server6 + "]:9000"} {
		listen(t, srv, a)
	}
	// Quiet, unlike listen: a transfer from the pod would teach it the
	// path MTU towards the server, and its next SYNs would advertise 1400
	// with or without the clamp.
	echoTCP(t, p, podBlue+":8080")
	to4, to6 := server4+":9000", "["+server6+"]:9000"

	type want struct{ syn4, syn6, small, synAck int }
	check := func(phase string, w want, bulk bool) {
		t.Helper()
		// A path MTU learnt in an earlier phase must not stand in for
		// the clamp.
		for _, n := range []string{p, r, tp.remote, srv} {
			run(t, "ip", "-n", n, "-4", "route", "flush", "cache")
			run(t, "ip", "-n", n, "-6", "route", "flush", "cache")
		}
		if got := mssSeen(t, srv, p, podBlue, to4, 0); got != w.syn4 {
			t.Errorf("%s: server got a SYN with MSS %d, want %d", phase, got, w.syn4)
		}
		if got := mssSeen(t, srv, p, podBlue6, to6, 0); got != w.syn6 {
			t.Errorf("%s: IPv6 server got a SYN with MSS %d, want %d", phase, got, w.syn6)
		}
		if got := mssSeen(t, srv, p, podBlue, to4, 1200); got != w.small {
			t.Errorf("%s: SYN advertising 1200 reached the server with MSS %d, want %d", phase, got, w.small)
		}
		if got := mssSeen(t, srv, srv, server4, podBlue+":8080", 0); got != w.synAck {
			t.Errorf("%s: the pod's SYN-ACK reached the far client with MSS %d, want %d", phase, got, w.synAck)
		}
		if got := bulkOK(t, p, podBlue, to4); got != bulk {
			t.Errorf("%s: %d KiB from the server to the pod arrived=%v, want %v", phase, bulkSize>>10, got, bulk)
		}
	}

	// Without the clamp the harness reproduces the field failure, so the
	// checks below can fail.
	check("no table", want{unclamped4, unclamped6, 1200, unclamped4}, false)

	e := policy.NewEnforcer(tp.conn, tunIface, nil)
	if err := e.Apply(compile(t)); err != nil {
		t.Fatal(err)
	}
	sameAsNft(t, r)
	if got := counter(t, e, policy.LabelMSSClamp); got.Packets != 0 || got.Action != policy.ActionClamp || got.Reason != "mss-clamp" {
		t.Errorf("clamp counter before any traffic: %+v", got)
	}

	check("applied", want{clamped4, clamped6, 1200, clamped4}, true)
	// Four connections from the pod (a SYN each) and the pod's SYN-ACK
	// to the far client; the server's SYN-ACKs leave towards the pod,
	// not into the tunnel.
	if got := counter(t, e, policy.LabelMSSClamp); got.Packets != 5 {
		t.Errorf("clamp counter after 5 handshake packets into the tunnel: %+v", got)
	}
	if got := counter(t, e, "segment:blue"); got.Packets == 0 {
		t.Errorf("the policy saw none of the clamped connections: %+v", got)
	}

	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	check("flushed", want{unclamped4, unclamped6, 1200, unclamped4}, false)
}

var (
	ruleHandle = regexp.MustCompile(`(?m)^inet \S+ mss \d+$`)
	counterRe  = regexp.MustCompile(`(counter pkts|packets) \d+ (bytes) \d+`)
)

// sameAsNft checks the kernel holds for the clamp exactly what nft makes
// of the rule's nft text, decoded by the installed nft, so no guess about
// the canonical form can go unnoticed. It also shows the chain as
// operators see it.
func sameAsNft(t *testing.T, name string) {
	t.Helper()
	nftIn(t, name, `table inet meshdref {
		chain mss {
			type filter hook forward priority mangle; policy accept;
			oifname "`+tunIface+`" tcp flags & (syn | rst) == syn counter tcp option maxseg size set rt mtu comment "mss-clamp"
		}
	}`)
	ref := nftOut(t, name, "--debug=netlink", "list", "chain", "inet", "meshdref", policy.MSSChain)
	nftOut(t, name, "delete", "table", "inet", "meshdref")
	ours := nftOut(t, name, "--debug=netlink", "list", "chain", "inet", policy.TableName, policy.MSSChain)
	norm := func(s string) string {
		s = strings.ReplaceAll(s, "meshdref", policy.TableName)
		s = ruleHandle.ReplaceAllString(s, "inet TABLE mss HANDLE")
		return counterRe.ReplaceAllString(s, "$1 N $2 N")
	}
	if norm(ours) != norm(ref) {
		t.Errorf("the kernel's clamp differs from nft's:\n got\n%s\nnft makes\n%s", ours, ref)
	}
	listed := nftOut(t, name, "list", "chain", "inet", policy.TableName, policy.MSSChain)
	for _, s := range []string{"hook forward priority mangle; policy accept;", `oifname "` + tunIface + `"`,
		"tcp option maxseg size set rt mtu", `comment "mss-clamp"`} {
		if !strings.Contains(listed, s) {
			t.Errorf("nft list chain lacks %q:\n%s", s, listed)
		}
	}
	if testing.Verbose() {
		fmt.Print(listed, ours)
	}
}
