package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/lab"
)

// cmdMTU checks meshd's default MTU (mtu = 0: underlay MTU - 60 on an
// IPv4 underlay) on each underlay MTU: the tunnel gets the right MTU, a
// maximum-size DF ping and a full-size TCP stream cross without
// fragmenting the underlay or dropping packets, and a 1400-byte UDP
// datagram is delivered when it fits (what happens when it does not is
// reported as observed).
func cmdMTU(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("mtu", flag.ContinueOnError)
	meshdBin := fs.String("meshd", "", "meshd binary")
	underlays := fs.String("underlays", "1500,1400", "underlay MTUs to test")
	udpSize := fs.Int("udp-size", 1400, "UDP payload size to send")
	prefix := fs.String("prefix", "mbmtu", "lab name prefix")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if err := needRoot(); err != nil {
		return err
	}
	if *meshdBin == "" {
		return errors.New("-meshd is required")
	}
	bin := mustAbs(*meshdBin)
	var failures []string
	for _, f := range strings.Split(*underlays, ",") {
		u, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("bad underlay MTU %q", f)
		}
		if ctx.Err() != nil {
			break
		}
		fails, err := mtuCase(ctx, bin, *prefix, u, *udpSize)
		if err != nil {
			failures = append(failures, fmt.Sprintf("underlay %d: %v", u, err))
			fmt.Printf("  FAIL  %v\n", err)
		}
		for _, f := range fails {
			failures = append(failures, fmt.Sprintf("underlay %d: %s", u, f))
		}
	}
	fmt.Println()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(failures) > 0 {
		fmt.Printf("MTU check: %d failed:\n  %s\n", len(failures), strings.Join(failures, "\n  "))
		return errors.New("MTU check failed")
	}
	fmt.Println("MTU check: all passed")
	return nil
}

// mtuCase runs every check on one underlay MTU; fails lists failed checks,
// err means the lab itself did not come up.
func mtuCase(ctx context.Context, bin, prefix string, underlay, udpSize int) (fails []string, err error) {
	fmt.Printf("\n== underlay MTU %d (IPv4): expected tunnel MTU %d ==\n", underlay, underlay-60)
	l, err := lab.New(ctx, lab.Spec{Prefix: prefix, Hosts: 2, Mode: "userspace", UnderlayMTU: underlay, Segments: benchSegments[:1]})
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	tun := &meshdTunnel{l: l, bin: bin, path: "pod"}
	if err := tun.setup(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if terr := tun.teardown(); terr != nil {
			err = errors.Join(err, terr)
		}
	}()
	m := &mtuRun{l: l, tun: tun, h1: l.Host(1), h2: l.Host(2), underlay: underlay}
	m.namespaces = []string{m.h1.NS(), m.h2.NS(), m.h1.PodNS(benchSegment), m.h2.PodNS(benchSegment), l.SwitchNS()}
	if m.tmtu, err = m.checkTunnelMTU(ctx); err != nil {
		return nil, err
	}
	// Every IP fragment crossing the underlay bridge is recorded (headers
	// only), so fragments can be told apart: WireGuard's (a wrong tunnel
	// MTU) or gossip's. Whole packets are not kept: a full capture of the
	// TCP streams would be hundreds of MB.
	capture, err := l.StartCaptureFiltered(ctx, 128, "ip[6:2] & 0x3fff != 0")
	if err != nil {
		return nil, err
	}
	// Self-test of the capture: one ping on the underlay itself, too big
	// for it and without DF, crosses as fragments that must be seen.
	if _, err := lab.Exec(ctx, m.h1.NS(), "ping", "-n", "-c", "1", "-W", "2", "-M", "dont", "-s", strconv.Itoa(underlay), m.h2.UnderlayAddr().String()); err != nil {
		return nil, fmt.Errorf("fragmented underlay ping for the capture self-test: %w", err)
	}
	before := snapshotCounters(ctx, m.namespaces)
	txBefore, _ := underlayTxPackets(m.h1, m.h2)
	m.checkDFPing(ctx)
	if err := m.checkTCP(ctx); err != nil {
		return m.fails, err
	}
	m.checkUDP(ctx, udpSize)
	err = m.checkUnderlay(ctx, capture, before, txBefore)
	return m.fails, err
}

// mtuRun is the MTU check on one underlay: two meshd hosts, the tunnel
// MTU they chose, and the checks failed so far.
type mtuRun struct {
	l          *lab.Lab
	tun        *meshdTunnel
	h1, h2     *lab.Host
	underlay   int
	tmtu       int      // the tunnel's MTU, as the kernel has it
	namespaces []string // whose counters are compared
	fails      []string
}

func (m *mtuRun) check(ok bool, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if ok {
		fmt.Printf("  ok    %s\n", msg)
	} else {
		fmt.Printf("  FAIL  %s\n", msg)
		m.fails = append(m.fails, msg)
	}
}

func (m *mtuRun) note(format string, args ...any) {
	fmt.Printf("  note  %s\n", fmt.Sprintf(format, args...))
}

// flush empties every PMTU cache, so each probe starts as a first contact
// would: what earlier probes taught the kernel is forgotten.
func (m *mtuRun) flush(ctx context.Context) {
	for _, ns := range m.namespaces {
		_ = lab.IP(ctx, ns, []string{"route", "flush", "cache"})
	}
}

// checkTunnelMTU checks the MTU meshd chose, as it reports it and as the
// kernel has it, and returns the kernel's.
func (m *mtuRun) checkTunnelMTU(ctx context.Context) (int, error) {
	st, err := control.NewClient(m.h1.ControlSocket()).Status()
	if err != nil {
		return 0, err
	}
	linkMTU, err := ifaceMTU(ctx, m.h1.NS(), m.h1.Interface())
	if err != nil {
		return 0, err
	}
	want := m.underlay - 60
	m.check(st.Node.MTU == want && linkMTU == want, "tunnel MTU: meshd status %d, %s link %d (want %d)", st.Node.MTU, m.h1.Interface(), linkMTU, want)
	return linkMTU, nil
}

// checkDFPing sends the largest DF ping host to host through the tunnel
// and pod to pod, and one byte more, which must be refused.
func (m *mtuRun) checkDFPing(ctx context.Context) {
	h1, h2, pod1, dst := m.h1, m.h2, m.h1.PodNS(benchSegment), m.h2.PodAddr(benchSegment).String()
	maxICMP := m.tmtu - 28
	out, err := lab.Exec(ctx, h1.NS(), "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", strconv.Itoa(maxICMP), "-I", h1.Gateway(benchSegment).String(), h2.Gateway(benchSegment).String())
	m.check(err == nil, "host h1 -> h2 through the tunnel: ping -M do -s %d (%d-byte packets): %s", maxICMP, m.tmtu, pingSummary(out, err))
	out, err = lab.Exec(ctx, pod1, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", strconv.Itoa(maxICMP), dst)
	m.check(err == nil, "pod h1 -> pod h2: ping -M do -s %d: %s", maxICMP, pingSummary(out, err))
	out, err = lab.Exec(ctx, pod1, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", strconv.Itoa(maxICMP+1), dst)
	m.check(err != nil, "one byte more (ping -M do -s %d) is refused, not fragmented: %s", maxICMP+1, pingSummary(out, err))
}

// checkTCP runs a full-size TCP stream host to host (MSS from the tunnel
// route), pod to pod with the pods on 1500-byte links (meshd's MSS clamp
// must size their segments for the tunnel from the handshake on, without
// PMTU discovery), and pod to pod with the pods' links at the tunnel MTU,
// as a CNI would set them.
func (m *mtuRun) checkTCP(ctx context.Context) error {
	want := m.tmtu - 52
	r, d, err := m.tcpStream(ctx, "host")
	m.check(err == nil && r.bytes > 0 && r.mss == want,
		"TCP stream host->host, 3 s (want MSS %d = MTU - 40 - 12 timestamp option bytes): %s", want, r.describe(err))
	m.noteCongestion(r, err, d)
	r, _, err = m.tcpStream(ctx, "pod")
	m.check(err == nil && r.bytes > 0 && r.mss == want,
		"TCP stream pod->pod, pods on 1500-byte links, 3 s (want MSS %d: the SYNs clamped to the tunnel): %s", want, r.describe(err))
	if err == nil && r.retransmits > 0 {
		m.note("%d retransmits with the MSS clamped: congestion losses of a saturating stream, or PMTU discovery if the MSS above is larger than wanted", r.retransmits)
	}
	if err := m.setPodMTU(ctx, m.tmtu); err != nil {
		return err
	}
	r, d, err = m.tcpStream(ctx, "pod")
	m.check(err == nil && r.bytes > 0 && r.mss == want,
		"TCP stream pod->pod, pods' links at the tunnel MTU %d, 3 s (want MSS %d): %s", m.tmtu, want, r.describe(err))
	m.noteCongestion(r, err, d)
	return m.setPodMTU(ctx, 1500)
}

// tcpStream runs a 3 s stream on path with empty PMTU caches, and returns
// how the counters changed meanwhile.
func (m *mtuRun) tcpStream(ctx context.Context, path string) (streamResult, counters, error) {
	m.flush(ctx)
	c0 := snapshotCounters(ctx, m.namespaces)
	r, err := tcpStream(ctx, m.l, m.tun.endpointsFor(path), 3)
	return r, snapshotCounters(ctx, m.namespaces).sub(c0), err
}

func (m *mtuRun) noteCongestion(r streamResult, err error, d counters) {
	if err == nil && r.retransmits > 0 {
		m.note("%d retransmits with no PMTU discovery needed: congestion losses of a saturating stream (UDP receive-buffer drops on h1/h2 meanwhile: %d/%d), not MTU",
			r.retransmits, d.get(m.h1.NS(), "Udp", "RcvbufErrors"), d.get(m.h2.NS(), "Udp", "RcvbufErrors"))
	}
}

func (m *mtuRun) setPodMTU(ctx context.Context, mtu int) error {
	for _, h := range []*lab.Host{m.h1, m.h2} {
		if err := lab.IP(ctx, h.PodNS(benchSegment), []string{"link", "set", "dev", "eth0", "mtu", strconv.Itoa(mtu)}); err != nil {
			return err
		}
	}
	return nil
}

// checkUDP sends one UDP datagram of size bytes pod to pod, with DF (the
// sender wants to know) and with the kernel's default (fragment locally
// once the path MTU is known). Only a datagram that fits is a check;
// otherwise what happened is reported.
func (m *mtuRun) checkUDP(ctx context.Context, size int) {
	pod1, pod2, dst := m.h1.PodNS(benchSegment), m.h2.PodNS(benchSegment), m.h2.PodAddr(benchSegment)
	for _, mode := range []struct {
		name string
		pmtu int
	}{{"DF (IP_PMTUDISC_DO)", unix.IP_PMTUDISC_DO}, {"default (IP_PMTUDISC_WANT)", unix.IP_PMTUDISC_WANT}} {
		m.flush(ctx)
		c0 := snapshotCounters(ctx, m.namespaces)
		res, err := udpProbe(pod1, pod2, dst, size, mode.pmtu)
		d := snapshotCounters(ctx, m.namespaces).sub(c0)
		frag := d.get(pod1, "Ip", "FragCreates")
		desc := fmt.Sprintf("UDP %d-byte payload (%d-byte packet) pod->pod, %s: %s; sender fragments created %d, host h1 DF drops (FragFails) %d",
			size, size+28, mode.name, res.describe(err), frag, d.get(m.h1.NS(), "Ip", "FragFails"))
		if size+28 <= m.tmtu {
			m.check(err == nil && res.firstArrived && frag == 0, "%s", desc)
		} else {
			m.note("does not fit the %d-byte tunnel MTU: %s", m.tmtu, desc)
		}
	}
}

// checkUnderlay checks that nothing was fragmented or dropped on the
// underlay, the tunnel or the pod links since before.
func (m *mtuRun) checkUnderlay(ctx context.Context, capture *lab.Capture, before counters, txBefore int64) error {
	h1, h2 := m.h1, m.h2
	d := snapshotCounters(ctx, m.namespaces).sub(before)
	txAfter, _ := underlayTxPackets(h1, h2)
	_, errStop := capture.Stop()
	const firstFragment = "ip[6:2] & 0x3fff = 0x2000" // MF set, offset 0: carries the UDP header
	selfFrags, err0 := capture.Count("icmp")
	frags, err1 := capture.Count("not icmp")
	wgFrags, err2 := capture.Count(firstFragment + " and udp port 51820")
	gossipFrags, err3 := capture.Count(firstFragment + " and port 7946")
	if err := errors.Join(errStop, err0, err1, err2, err3); err != nil {
		return err
	}
	m.check(selfFrags >= 2, "underlay capture sees fragments: %d fragments of the self-test ping (want >= 2)", selfFrags)
	m.check(wgFrags == 0 && txAfter > txBefore, "underlay capture: no WireGuard datagram (udp 51820) fragmented, of %d packets h1 and h2 sent on the underlay", txAfter-txBefore)
	if gossipFrags > 0 || frags > 0 {
		m.note("WARN underlay capture: %d IP fragments in all; %d gossip datagrams (port 7946) were fragmented: serf/memberlist packets do not fit this underlay MTU", frags, gossipFrags)
	} else {
		fmt.Printf("  ok    underlay capture: no other IP fragments at all (gossip included)\n")
	}
	if hc := d.get(h1.NS(), "Ip", "FragCreates") + d.get(h1.NS(), "Ip", "ReasmReqds") + d.get(h2.NS(), "Ip", "FragCreates") + d.get(h2.NS(), "Ip", "ReasmReqds"); hc > 0 {
		m.note("host IP counters: h1 FragCreates %d ReasmReqds %d, h2 FragCreates %d ReasmReqds %d: inner packets only (the capture shows what the underlay carried);",
			d.get(h1.NS(), "Ip", "FragCreates"), d.get(h1.NS(), "Ip", "ReasmReqds"), d.get(h2.NS(), "Ip", "FragCreates"), d.get(h2.NS(), "Ip", "ReasmReqds"))
		m.note("     conntrack (meshd's nftables policy) reassembles the pod's own fragments for inspection and re-fragments them to their original size")
	}
	var drops []string
	for _, k := range d.sortedLinkKeys() {
		if v := d.links[k]; v != 0 {
			drops = append(drops, fmt.Sprintf("%s %+d", k, v))
		}
	}
	m.check(len(drops) == 0, "ip -s link: no drops or errors on any link of the lab%s", listOrNone(drops))
	if n := d.get(h1.NS(), "Ip", "FragFails"); n > 0 {
		m.note("h1 dropped %d DF packets too big for the tunnel and answered with ICMP frag-needed (PMTU discovery from the 1500-byte pod links; expected)", n)
	}
	return nil
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return ": " + strings.Join(s, ", ")
}

func (t *meshdTunnel) endpointsFor(path string) endpoints {
	saved := t.path
	t.path = path
	defer func() { t.path = saved }()
	return t.endpoints()
}

func ifaceMTU(ctx context.Context, ns, ifname string) (int, error) {
	out, err := lab.Exec(ctx, "", "ip", "-n", ns, "-o", "link", "show", "dev", ifname)
	if err != nil {
		return 0, err
	}
	m := regexp.MustCompile(`\bmtu (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no mtu in %q", out)
	}
	return strconv.Atoi(m[1])
}

var pingStatsRE = regexp.MustCompile(`\d+ packets transmitted, \d+ received[^\n]*`)

func pingSummary(out string, err error) string {
	var parts []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if strings.Contains(l, "Frag needed") || strings.Contains(l, "too long") || strings.Contains(l, "mtu") {
			parts = append(parts, l)
			break
		}
	}
	if m := pingStatsRE.FindString(out); m != "" {
		parts = append(parts, m)
	}
	if len(parts) == 0 && err != nil {
		parts = append(parts, err.Error())
	}
	return strings.Join(parts, "; ")
}

// ---- counters: /proc/net/snmp and ip -s link per namespace ----

type counters struct {
	snmp  map[string]int64 // "ns Ip FragCreates"
	links map[string]int64 // "ns/link rx_dropped" ...
}

func snapshotCounters(ctx context.Context, nss []string) counters {
	c := counters{snmp: map[string]int64{}, links: map[string]int64{}}
	for _, ns := range nss {
		if out, err := lab.Exec(ctx, ns, "cat", "/proc/net/snmp"); err == nil {
			lines := strings.Split(out, "\n")
			for i := 0; i+1 < len(lines); i += 2 {
				hk, hv := strings.Fields(lines[i]), strings.Fields(lines[i+1])
				if len(hk) != len(hv) || len(hk) == 0 {
					continue
				}
				proto := strings.TrimSuffix(hk[0], ":")
				for j := 1; j < len(hk); j++ {
					v, _ := strconv.ParseInt(hv[j], 10, 64)
					c.snmp[ns+" "+proto+" "+hk[j]] = v
				}
			}
		}
		if out, err := lab.Exec(ctx, "", "ip", "-n", ns, "-s", "-j", "link", "show"); err == nil {
			var ls []struct {
				Name  string `json:"ifname"`
				Stats struct {
					RX struct{ Errors, Dropped int64 } `json:"rx"`
					TX struct{ Errors, Dropped int64 } `json:"tx"`
				} `json:"stats64"`
			}
			if json.Unmarshal([]byte(out), &ls) == nil {
				for _, l := range ls {
					k := ns + "/" + l.Name
					c.links[k+" rx_errors"] = l.Stats.RX.Errors
					c.links[k+" rx_dropped"] = l.Stats.RX.Dropped
					c.links[k+" tx_errors"] = l.Stats.TX.Errors
					c.links[k+" tx_dropped"] = l.Stats.TX.Dropped
				}
			}
		}
	}
	return c
}

func (c counters) sub(o counters) counters {
	d := counters{snmp: map[string]int64{}, links: map[string]int64{}}
	for k, v := range c.snmp {
		d.snmp[k] = v - o.snmp[k]
	}
	for k, v := range c.links {
		d.links[k] = v - o.links[k]
	}
	return d
}

func (c counters) get(ns, proto, key string) int64 { return c.snmp[ns+" "+proto+" "+key] }

func (c counters) sortedLinkKeys() []string {
	var ks []string
	for k := range c.links {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// ---- TCP stream ----

type streamResult struct {
	bytes       int64
	gbps        float64
	retransmits int64
	mss         int
}

func (r streamResult) describe(err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%.2f Gbit/s, %d retransmits, MSS %d", r.gbps, r.retransmits, r.mss)
}

func tcpStream(ctx context.Context, l *lab.Lab, e endpoints, secs int) (streamResult, error) {
	srv, err := startIperfServer(ctx, l, e.serverNS)
	if err != nil {
		return streamResult{}, err
	}
	defer srv.Stop(2 * time.Second)
	res, err := iperfClient(ctx, l, e, secs)
	if err != nil {
		return streamResult{}, err
	}
	if res.End.SumReceived == nil || res.End.SumSent == nil {
		return streamResult{}, errors.New("iperf3 JSON has no sum_sent/sum_received")
	}
	return streamResult{bytes: res.End.SumReceived.Bytes, gbps: res.End.SumSent.BitsPerSec / 1e9,
		retransmits: res.End.SumSent.Retransmits, mss: res.Start.MSS}, nil
}

// ---- UDP probe ----

type udpResult struct {
	sends        []string // what each send returned
	firstArrived bool
	arrived      int
	pathMTU      int
}

func (r udpResult) describe(err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("sends: %s; %d of %d arrived (first: %v); sender's path MTU afterwards %d",
		strings.Join(r.sends, ", "), r.arrived, len(r.sends), r.firstArrived, r.pathMTU)
}

// udpProbe sends three datagrams of size bytes from pod1 to dst (in
// pod2), each once the previous one has arrived or an ICMP error about it
// has come back, and reports each send's result, which ones arrived, and
// the path MTU the sender learned.
func udpProbe(pod1, pod2 string, dst netip.Addr, size, pmtuMode int) (udpResult, error) {
	var res udpResult
	var ln *net.UDPConn
	if err := lab.InNetns(pod2, func() (err error) {
		ln, err = net.ListenUDP("udp4", &net.UDPAddr{IP: dst.AsSlice(), Port: 0})
		return err
	}); err != nil {
		return res, err
	}
	defer ln.Close()
	port := ln.LocalAddr().(*net.UDPAddr).Port
	var c *net.UDPConn
	if err := lab.InNetns(pod1, func() (err error) {
		c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: dst.AsSlice(), Port: port})
		return err
	}); err != nil {
		return res, err
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return res, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, pmtuMode)
	}); err != nil || serr != nil {
		return res, errors.Join(err, serr)
	}
	var mu sync.Mutex
	arrived := map[int]bool{} // guarded by mu
	received := make(chan struct{})
	go func() {
		defer close(received)
		buf := make([]byte, 65536)
		for {
			n, _, err := ln.ReadFromUDP(buf)
			if err != nil {
				return // ln closed
			}
			if n == size {
				mu.Lock()
				arrived[int(buf[0])] = true
				mu.Unlock()
			}
		}
	}()
	defer func() { ln.Close(); <-received }()
	hasArrived := func(i int) bool { mu.Lock(); defer mu.Unlock(); return arrived[i] }
	pathMTU := func() (mtu int) {
		_ = rc.Control(func(fd uintptr) { mtu, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU) })
		return mtu
	}
	// wait bounds each wait for a datagram's fate; a datagram lost
	// without an ICMP error costs that much.
	wait := func(cond func() bool) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = lab.WaitFor(ctx, 10*time.Millisecond, func() error {
			if cond() {
				return nil
			}
			return errors.New("pending")
		})
	}
	payload := make([]byte, size)
	var sent []int
	for i := range 3 {
		payload[0] = byte(i)
		before := pathMTU()
		_, err := c.Write(payload)
		switch {
		case err == nil:
			res.sends = append(res.sends, "sent")
		case errors.Is(err, syscall.EMSGSIZE):
			res.sends = append(res.sends, "EMSGSIZE")
		default:
			res.sends = append(res.sends, err.Error())
		}
		if err != nil {
			continue // nothing left the socket
		}
		sent = append(sent, i)
		// The next send must see what became of this one: it arrived, or
		// an ICMP error about it lowered the path MTU (and, for a
		// connected socket, left an error for the next send to report).
		wait(func() bool { return hasArrived(i) || pathMTU() < before })
	}
	wait(func() bool {
		for _, i := range sent {
			if !hasArrived(i) {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	res.arrived, res.firstArrived = len(arrived), arrived[0]
	res.pathMTU = pathMTU()
	return res, nil
}

// underlayTxPackets is how many packets the hosts sent on the underlay,
// from the kernel's link counters.
func underlayTxPackets(hs ...*lab.Host) (int64, error) {
	var n int64
	for _, h := range hs {
		out, err := lab.Exec(context.Background(), "", "ip", "-n", h.NS(), "-s", "-j", "link", "show", "dev", "u0")
		if err != nil {
			return 0, err
		}
		var ls []struct {
			Stats struct {
				TX struct{ Packets int64 } `json:"tx"`
			} `json:"stats64"`
		}
		if err := json.Unmarshal([]byte(out), &ls); err != nil || len(ls) == 0 {
			return 0, fmt.Errorf("ip -s link %s: %v", h.NS(), err)
		}
		n += ls[0].Stats.TX.Packets
	}
	return n, nil
}
