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
	h1, h2 := l.Host(1), l.Host(2)
	tun := &meshdTunnel{l: l, bin: bin, path: "pod"}
	if err := tun.setup(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if terr := tun.teardown(); terr != nil {
			err = errors.Join(err, terr)
		}
	}()
	check := func(ok bool, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if ok {
			fmt.Printf("  ok    %s\n", msg)
		} else {
			fmt.Printf("  FAIL  %s\n", msg)
			fails = append(fails, msg)
		}
	}
	note := func(format string, args ...any) { fmt.Printf("  note  %s\n", fmt.Sprintf(format, args...)) }

	// 1. The MTU meshd chose, as it reports it and as the kernel has it.
	st, err := control.NewClient(h1.ControlSocket()).Status()
	if err != nil {
		return nil, err
	}
	linkMTU, err := ifaceMTU(ctx, h1.NS(), h1.Interface())
	if err != nil {
		return nil, err
	}
	want := underlay - 60
	check(st.Node.MTU == want && linkMTU == want, "tunnel MTU: meshd status %d, %s link %d (want %d)", st.Node.MTU, h1.Interface(), linkMTU, want)
	tmtu := linkMTU

	// Every IP fragment crossing the underlay bridge is recorded (headers
	// only), so fragments can be told apart: WireGuard's (a wrong tunnel
	// MTU) or gossip's. Whole packets are not kept: a full capture of the
	// TCP streams would be hundreds of MB.
	fragPcap := l.Dir() + "/underlay-fragments.pcap"
	capture, err := startBG(l.SwitchNS(), l.Dir()+"/tcpdump.log", "tcpdump", "-i", "br0", "-n", "-s", "128", "-U", "-w", fragPcap, "ip[6:2] & 0x3fff != 0")
	if err != nil {
		return nil, err
	}
	defer capture.stop(3 * time.Second)
	if err := waitFile(ctx, fragPcap, 5*time.Second, capture); err != nil {
		return nil, fmt.Errorf("tcpdump: %w: %s", err, logTail(l.Dir()+"/tcpdump.log", 3))
	}
	time.Sleep(300 * time.Millisecond) // the file appears as the socket binds; let it settle
	// Self-test of the capture: one ping on the underlay itself, too big
	// for it and without DF, crosses as fragments that must be seen.
	if _, err := nsRun(ctx, h1.NS(), "ping", "-n", "-c", "1", "-W", "2", "-M", "dont", "-s", strconv.Itoa(underlay), h2.UnderlayAddr().String()); err != nil {
		return nil, fmt.Errorf("fragmented underlay ping for the capture self-test: %w", err)
	}
	namespaces := []string{h1.NS(), h2.NS(), h1.PodNS(benchSegment), h2.PodNS(benchSegment), l.SwitchNS()}
	before := snapshotCounters(ctx, namespaces)
	wgStart, _ := deviceTxPackets(h1, h2)
	pod1, pod2 := h1.PodNS(benchSegment), h2.PodNS(benchSegment)
	dst := h2.PodAddr(benchSegment)

	// 2. Largest DF ping, host to host through the tunnel and pod to pod.
	maxICMP := tmtu - 28
	out, err := nsRun(ctx, h1.NS(), "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", strconv.Itoa(maxICMP), "-I", h1.Gateway(benchSegment).String(), h2.Gateway(benchSegment).String())
	check(err == nil, "host h1 -> h2 through the tunnel: ping -M do -s %d (%d-byte packets): %s", maxICMP, tmtu, pingSummary(out, err))
	out, err = nsRun(ctx, pod1, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", strconv.Itoa(maxICMP), dst.String())
	check(err == nil, "pod h1 -> pod h2: ping -M do -s %d: %s", maxICMP, pingSummary(out, err))
	out, err = nsRun(ctx, pod1, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", strconv.Itoa(maxICMP+1), dst.String())
	check(err != nil, "one byte more (ping -M do -s %d) is refused, not fragmented: %s", maxICMP+1, pingSummary(out, err))

	// 3. A full-size TCP stream, host to host (MSS from the tunnel route)
	// and pod to pod (pods have 1500-byte links: meshd's MSS clamp must
	// size their segments for the tunnel from the handshake on, without
	// PMTU discovery).
	// Every probe starts with empty PMTU caches, as a first contact
	// would: what the pings above taught the kernel is forgotten.
	flush := func() {
		for _, ns := range namespaces {
			_ = ipn(ctx, ns, "route", "flush", "cache")
		}
	}
	flush()
	c0 := snapshotCounters(ctx, namespaces)
	r, err := tcpStream(ctx, l, tun.endpointsFor("host"), 3)
	d0 := snapshotCounters(ctx, namespaces).sub(c0)
	check(err == nil && r.bytes > 0 && r.mss == tmtu-52,
		"TCP stream host->host, 3 s (want MSS %d = MTU - 40 - 12 timestamp option bytes): %s", tmtu-52, r.describe(err))
	if err == nil && r.retransmits > 0 {
		note("%d retransmits with no PMTU discovery needed: congestion losses of a saturating stream (UDP receive-buffer drops on h1/h2 meanwhile: %d/%d), not MTU",
			r.retransmits, d0.get(h1.NS(), "Udp", "RcvbufErrors"), d0.get(h2.NS(), "Udp", "RcvbufErrors"))
	}
	flush()
	r, err = tcpStream(ctx, l, tun.endpointsFor("pod"), 3)
	check(err == nil && r.bytes > 0 && r.mss == tmtu-52,
		"TCP stream pod->pod, pods on 1500-byte links, 3 s (want MSS %d: the SYNs clamped to the tunnel): %s", tmtu-52, r.describe(err))
	if err == nil && r.retransmits > 0 {
		note("%d retransmits with the MSS clamped: congestion losses of a saturating stream, or PMTU discovery if the MSS above is larger than wanted", r.retransmits)
	}
	// The same with the pods' links at the tunnel MTU, as a CNI would set
	// them: no PMTU discovery, nothing lost.
	for _, ns := range []string{pod1, pod2} {
		if err := ipn(ctx, ns, "link", "set", "dev", "eth0", "mtu", strconv.Itoa(tmtu)); err != nil {
			return fails, err
		}
	}
	flush()
	c0 = snapshotCounters(ctx, namespaces)
	r, err = tcpStream(ctx, l, tun.endpointsFor("pod"), 3)
	d0 = snapshotCounters(ctx, namespaces).sub(c0)
	check(err == nil && r.bytes > 0 && r.mss == tmtu-52,
		"TCP stream pod->pod, pods' links at the tunnel MTU %d, 3 s (want MSS %d): %s", tmtu, tmtu-52, r.describe(err))
	if err == nil && r.retransmits > 0 {
		note("%d retransmits with no PMTU discovery needed: congestion losses of a saturating stream (UDP receive-buffer drops on h1/h2 meanwhile: %d/%d), not MTU",
			r.retransmits, d0.get(h1.NS(), "Udp", "RcvbufErrors"), d0.get(h2.NS(), "Udp", "RcvbufErrors"))
	}
	for _, ns := range []string{pod1, pod2} {
		if err := ipn(ctx, ns, "link", "set", "dev", "eth0", "mtu", "1500"); err != nil {
			return fails, err
		}
	}

	// 4. One UDP datagram of udpSize bytes, pod to pod, with DF (the
	// sender wants to know) and with the kernel's default (fragment
	// locally once the path MTU is known).
	fits := udpSize+28 <= tmtu
	for _, mode := range []struct {
		name string
		pmtu int
	}{{"DF (IP_PMTUDISC_DO)", unix.IP_PMTUDISC_DO}, {"default (IP_PMTUDISC_WANT)", unix.IP_PMTUDISC_WANT}} {
		flush()
		c0 := snapshotCounters(ctx, namespaces)
		res, err := udpProbe(pod1, pod2, dst, udpSize, mode.pmtu)
		c1 := snapshotCounters(ctx, namespaces)
		d := c1.sub(c0)
		frag := d.get(pod1, "Ip", "FragCreates")
		desc := fmt.Sprintf("UDP %d-byte payload (%d-byte packet) pod->pod, %s: %s; sender fragments created %d, host h1 DF drops (FragFails) %d",
			udpSize, udpSize+28, mode.name, res.describe(err), frag, d.get(h1.NS(), "Ip", "FragFails"))
		if fits {
			check(err == nil && res.firstArrived && frag == 0, "%s", desc)
		} else {
			note("does not fit the %d-byte tunnel MTU: %s", tmtu, desc)
		}
	}

	// 5. Nothing fragmented or dropped on the underlay, the tunnel or the
	// pod links during all of the above.
	after := snapshotCounters(ctx, namespaces)
	d := after.sub(before)
	wgEnd, _ := deviceTxPackets(h1, h2)
	capture.stop(3 * time.Second)
	const firstFragment = "ip[6:2] & 0x3fff = 0x2000" // MF set, offset 0: carries the UDP header
	selfFrags, err0 := countPcap(ctx, fragPcap, "icmp")
	frags, err1 := countPcap(ctx, fragPcap, "not icmp")
	wgFrags, err2 := countPcap(ctx, fragPcap, firstFragment+" and udp port 51820")
	gossipFrags, err3 := countPcap(ctx, fragPcap, firstFragment+" and port 7946")
	if err := errors.Join(err0, err1, err2, err3); err != nil {
		return fails, err
	}
	check(selfFrags >= 2, "underlay capture sees fragments: %d fragments of the self-test ping (want >= 2)", selfFrags)
	check(wgFrags == 0 && wgEnd > wgStart, "underlay capture: no WireGuard datagram (udp 51820) fragmented, of %d packets h1 and h2 sent on the underlay", wgEnd-wgStart)
	if gossipFrags > 0 || frags > 0 {
		note("WARN underlay capture: %d IP fragments in all; %d gossip datagrams (port 7946) were fragmented: serf/memberlist packets do not fit this underlay MTU", frags, gossipFrags)
	} else {
		fmt.Printf("  ok    underlay capture: no other IP fragments at all (gossip included)\n")
	}
	if hc := d.get(h1.NS(), "Ip", "FragCreates") + d.get(h1.NS(), "Ip", "ReasmReqds") + d.get(h2.NS(), "Ip", "FragCreates") + d.get(h2.NS(), "Ip", "ReasmReqds"); hc > 0 {
		note("host IP counters: h1 FragCreates %d ReasmReqds %d, h2 FragCreates %d ReasmReqds %d: inner packets only (the capture shows what the underlay carried);",
			d.get(h1.NS(), "Ip", "FragCreates"), d.get(h1.NS(), "Ip", "ReasmReqds"), d.get(h2.NS(), "Ip", "FragCreates"), d.get(h2.NS(), "Ip", "ReasmReqds"))
		note("     conntrack (meshd's nftables policy) reassembles the pod's own fragments for inspection and re-fragments them to their original size")
	}
	var drops []string
	for _, k := range d.sortedLinkKeys() {
		if v := d.links[k]; v != 0 {
			drops = append(drops, fmt.Sprintf("%s %+d", k, v))
		}
	}
	check(len(drops) == 0, "ip -s link: no drops or errors on any link of the lab%s", listOrNone(drops))
	if n := d.get(h1.NS(), "Ip", "FragFails"); n > 0 {
		note("h1 dropped %d DF packets too big for the tunnel and answered with ICMP frag-needed (PMTU discovery from the 1500-byte pod links; expected)", n)
	}
	return fails, nil
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
	out, err := run(ctx, "ip", "-n", ns, "-o", "link", "show", "dev", ifname)
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
		if out, err := nsRun(ctx, ns, "cat", "/proc/net/snmp"); err == nil {
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
		if out, err := run(ctx, "ip", "-n", ns, "-s", "-j", "link", "show"); err == nil {
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
	srv, err := startBG(e.serverNS, l.Dir()+"/iperf3-mtu.log", "iperf3", "-s", "-1", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return streamResult{}, err
	}
	defer srv.stop(2 * time.Second)
	if err := waitListening(ctx, e.serverNS, "tcp", iperfPort); err != nil {
		return streamResult{}, err
	}
	argv := []string{"iperf3", "-c", e.target.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs), "-J", "--connect-timeout", "5000"}
	if e.bind.IsValid() {
		argv = append(argv, "-B", e.bind.String())
	}
	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs+30)*time.Second)
	defer cancel()
	out, runErr := nsOutput(cctx, e.clientNS, argv...)
	var res struct {
		Error string `json:"error"`
		Start struct {
			MSS int `json:"tcp_mss_default"`
		} `json:"start"`
		End struct {
			Sent struct {
				Bytes       int64   `json:"bytes"`
				BPS         float64 `json:"bits_per_second"`
				Retransmits int64   `json:"retransmits"`
			} `json:"sum_sent"`
			Received struct {
				Bytes int64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return streamResult{}, fmt.Errorf("iperf3: %v %v", runErr, err)
	}
	if res.Error != "" {
		return streamResult{}, errors.New(res.Error)
	}
	return streamResult{bytes: res.End.Received.Bytes, gbps: res.End.Sent.BPS / 1e9, retransmits: res.End.Sent.Retransmits, mss: res.Start.MSS}, runErr
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
// pod2), 300 ms apart so ICMP errors can come back in between, and
// reports each send's result, which ones arrived, and the path MTU the
// sender learned.
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
	got := make(chan int, 8)
	go func() {
		buf := make([]byte, 65536)
		for {
			_ = ln.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, _, err := ln.ReadFromUDP(buf)
			if err != nil {
				close(got)
				return
			}
			got <- int(buf[0]) | n<<8
		}
	}()
	payload := make([]byte, size)
	arrived := map[int]bool{}
	for i := range 3 {
		payload[0] = byte(i)
		_, err := c.Write(payload)
		switch {
		case err == nil:
			res.sends = append(res.sends, "sent")
		case errors.Is(err, syscall.EMSGSIZE):
			res.sends = append(res.sends, "EMSGSIZE")
		default:
			res.sends = append(res.sends, err.Error())
		}
		time.Sleep(300 * time.Millisecond)
	}
	deadline := time.After(2 * time.Second)
collect:
	for {
		select {
		case v, ok := <-got:
			if !ok {
				break collect
			}
			if v>>8 == size {
				arrived[v&0xff] = true
			}
		case <-deadline:
			break collect
		}
	}
	res.arrived, res.firstArrived = len(arrived), arrived[0]
	_ = rc.Control(func(fd uintptr) {
		res.pathMTU, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU)
	})
	return res, nil
}

// countPcap counts the packets of a pcap file matching filter (all if "").
func countPcap(ctx context.Context, path, filter string) (int, error) {
	argv := []string{"-n", "-r", path}
	if filter != "" {
		argv = append(argv, filter)
	}
	out, err := run(ctx, "tcpdump", argv...)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasPrefix(l, "reading from file") {
			n++
		}
	}
	return n, nil
}

// deviceTxPackets is how many packets the two hosts' WireGuard devices
// sent, from the kernel's link counters.
func deviceTxPackets(hs ...*lab.Host) (int64, error) {
	var n int64
	for _, h := range hs {
		out, err := run(context.Background(), "ip", "-n", h.NS(), "-s", "-j", "link", "show", "dev", "u0")
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
