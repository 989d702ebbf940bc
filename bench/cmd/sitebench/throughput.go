package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/meshd/meshd/bench/internal/procstat"
	"github.com/meshd/meshd/lab"
)

const iperfPort = 5201

// tpTest is one iperf3 measurement.
type tpTest struct {
	key, name string
	args      []string
}

var tpTests = []tpTest{
	{"tcp1", "tcp x1", nil},
	{"tcp4", "tcp x4", []string{"-P", "4"}},
}

// tpMode is one path measured: where iperf3 runs, which processes carry
// the traffic, and which WireGuard device must (via) and must not (notVia)
// have sent it, so a mode whose traffic took another path fails instead
// of being reported.
type tpMode struct {
	key, label string
	// family groups a direct path with its gateway path: ratios compare
	// within a family and round.
	family             string
	gateway            bool
	clientNS, serverNS string
	target             netip.Addr
	roles              []string // what each process in pids does on the path
	pids               func() []int
	via, notVia        string
	alive              func() error
	// dir is the working directory of the mode's lab (iperf3's logs).
	dir string
}

// tpSample is one iperf3 run.
type tpSample struct {
	Round       int     `json:"round"`
	Gbps        float64 `json:"gbps"`
	Bytes       int64   `json:"bytes_received"`
	Retransmits int     `json:"retransmits"`
	// CPU is each role's CPU seconds over the run, Seconds the run's
	// length as the CPU meter saw it.
	CPU     []float64 `json:"cpu_seconds"`
	Seconds float64   `json:"seconds"`
	Machine float64   `json:"machine_busy_pct"`
	// Other is the CPU % (100 = one core) used meanwhile by processes
	// outside the benchmark.
	Other float64 `json:"other_cpu_pct"`
}

type tpCell struct {
	Mode     string     `json:"mode"`
	Test     string     `json:"test"`
	Roles    []string   `json:"roles"`
	Samples  []tpSample `json:"samples"`
	Failures []string   `json:"failures,omitempty"`
}

type tpReport struct {
	Date     string    `json:"date"`
	Kernel   string    `json:"kernel"`
	CPUs     int       `json:"cpus"`
	CPUModel string    `json:"cpu_model"`
	Go       string    `json:"go"`
	Seconds  int       `json:"seconds"`
	Rounds   int       `json:"rounds"`
	MTU      int       `json:"tunnel_mtu"`
	Cells    []*tpCell `json:"cells"`
}

type tpFlags struct {
	secs, rounds    int
	modes, tests    string
	meshd, wggo     string
	jsonOut, logs   string
	quiet, maxOther float64
}

func cmdThroughput(ctx context.Context, args []string) error {
	var f tpFlags
	fs := flag.NewFlagSet("throughput", flag.ContinueOnError)
	fs.IntVar(&f.secs, "t", 10, "seconds per iperf3 run")
	fs.IntVar(&f.rounds, "r", 5, "rounds; every round runs every mode once, modes interleaved")
	fs.StringVar(&f.modes, "modes", "direct,gateways,wggo-direct,wggo-chain", "comma-separated: direct, gateways (meshd), wggo-direct, wggo-chain (standalone wireguard-go)")
	fs.StringVar(&f.tests, "tests", "tcp1,tcp4", "comma-separated: tcp1 (one stream), tcp4 (-P 4)")
	fs.StringVar(&f.meshd, "meshd", "", "meshd binary")
	fs.StringVar(&f.wggo, "wireguard-go", "", "standalone wireguard-go binary (for the wggo modes)")
	fs.StringVar(&f.jsonOut, "json", "", "also write the results as JSON here")
	fs.StringVar(&f.logs, "keep-logs", "", "copy every meshd log here before the lab is removed")
	fs.Float64Var(&f.quiet, "quiet", 15, "before each run wait (at most 60 s) until other processes use less than this CPU% for a second; 0 never waits")
	fs.Float64Var(&f.maxOther, "max-other", 25, "rerun (at most twice) when other processes used more than this CPU% meanwhile; 0 never reruns")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if err := needRoot(); err != nil {
		return err
	}
	if f.secs < 1 || f.rounds < 1 || f.meshd == "" {
		return fmt.Errorf("bad flags: -t %d -r %d -meshd %q", f.secs, f.rounds, f.meshd)
	}
	tests, err := pickTests(f.tests)
	if err != nil {
		return err
	}
	return runThroughput(ctx, f, tests)
}

func pickTests(list string) ([]tpTest, error) {
	var out []tpTest
	for _, k := range strings.Split(list, ",") {
		i := slices.IndexFunc(tpTests, func(t tpTest) bool { return t.key == strings.TrimSpace(k) })
		if i < 0 {
			return nil, fmt.Errorf("unknown test %q", k)
		}
		out = append(out, tpTests[i])
	}
	return out, nil
}

// throughputSites: a has its gateway h1 and hosts h2 (the sender) and h3
// (the direct receiver); b has its gateway h4 and h5 (the receiver
// behind both gateways). One gateway per site keeps the path fixed.
var throughputSites = []lab.SiteSpec{
	{Name: "a", Hosts: 3, Gateways: 1},
	{Name: "b", Hosts: 2, Gateways: 1},
}

func runThroughput(ctx context.Context, f tpFlags, tests []tpTest) error {
	wg, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}
	defer wg.Close()
	l, closeLab, err := newLab(ctx, lab.Spec{Prefix: prefixThroughput, Mode: "userspace", Sites: throughputSites, Segments: []lab.SegmentSpec{siteSegment}})
	if err != nil {
		return err
	}
	defer closeLab()
	defer func() { _ = keepLogs(l, f.logs) }()
	mtu, err := startThroughputLab(ctx, l, f.meshd)
	if err != nil {
		return err
	}
	modes := meshdModes(l)
	if wantsReference(f.modes) {
		if f.wggo == "" {
			return errors.New("the wggo modes need -wireguard-go")
		}
		ref, closeRef, err := startReference(ctx, f.wggo, mtu, wg)
		if err != nil {
			return fmt.Errorf("reference wireguard-go chain: %w", err)
		}
		defer closeRef()
		modes = append(modes, referenceModes(ref)...)
	}
	modes, err = pickModes(modes, f.modes)
	if err != nil {
		return err
	}
	if err := waitModes(ctx, modes); err != nil {
		return err
	}
	rep := &tpReport{
		Date: time.Now().UTC().Format(time.RFC3339), Kernel: procstat.KernelRelease(), CPUs: runtime.NumCPU(), CPUModel: procstat.CPUModel(),
		Go: runtime.Version(), Seconds: f.secs, Rounds: f.rounds, MTU: mtu,
	}
	failed := measureAll(ctx, f, wg, modes, tests, rep)
	printThroughput(os.Stdout, rep, modes, tests)
	return finish(ctx, f.jsonOut, rep, failed, "some runs failed (see FAILED above)")
}

// finish writes rep as JSON to jsonOut (when set) and returns the run's
// outcome: interrupted, failed with failMsg, or nil.
func finish(ctx context.Context, jsonOut string, rep any, failed bool, failMsg string) error {
	if jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if failed {
		return errors.New(failMsg)
	}
	return nil
}

// startThroughputLab starts the five meshd, waits until the sender routes
// site b through h1 to h4 and every path answers, and returns the tunnel
// MTU meshd picked.
func startThroughputLab(ctx context.Context, l *lab.Lab, bin string) (int, error) {
	if err := startMeshd(bin, l.Hosts()); err != nil {
		return 0, err
	}
	if err := waitSites(ctx, l, l.Hosts(), 90*time.Second); err != nil {
		return 0, fmt.Errorf("sites never converged: %w\n%s", err, logTail(l.Host(roleSender).LogPath(), 10))
	}
	st, err := status(l.Host(roleSender))
	if err != nil {
		return 0, err
	}
	b := siteOf(st, "b")
	if b == nil || b.Gateway != "h1" || b.Remote != "h4" || b.Transit != "" {
		return 0, fmt.Errorf("h2 routes site b as %+v, want through h1 to h4, no transit", b)
	}
	if st.Node.Mode != "userspace" {
		return 0, fmt.Errorf("meshd runs in %s mode, want userspace", st.Node.Mode)
	}
	return st.Node.MTU, nil
}

// meshdModes are the direct path (h2 -> h3, one tunnel) and the gateway
// path (h2 -> h1 -> h4 -> h5, three tunnels) of the two-site lab.
func meshdModes(l *lab.Lab) []*tpMode {
	pids := func(hs ...int) func() []int {
		return func() []int {
			var out []int
			for _, i := range hs {
				out = append(out, l.Host(i).Pid())
			}
			return out
		}
	}
	alive := func() error {
		for _, h := range l.Hosts() {
			if !h.Running() {
				return fmt.Errorf("meshd on %s exited: %v: %s", h.Name(), h.Wait(0), logTail(h.LogPath(), 5))
			}
		}
		return nil
	}
	h := l.Host
	return []*tpMode{{
		key: "direct", label: "meshd direct (1 tunnel)", family: "meshd",
		clientNS: h(roleSender).PodNS(segment), serverNS: h(roleDirect).PodNS(segment), target: h(roleDirect).PodAddr(segment),
		roles: []string{"sender", "receiver"}, pids: pids(roleSender, roleDirect),
		via: h(roleSender).Interface(), notVia: h(roleGatewayA).Interface(), alive: alive, dir: l.Dir(),
	}, {
		key: "gateways", label: "meshd via 2 gateways (3 tunnels)", family: "meshd", gateway: true,
		clientNS: h(roleSender).PodNS(segment), serverNS: h(roleRemote).PodNS(segment), target: h(roleRemote).PodAddr(segment),
		roles: []string{"sender", "gateway a", "gateway b", "receiver"}, pids: pids(roleSender, roleGatewayA, roleGatewayB, roleRemote),
		via: h(roleGatewayA).Interface(), notVia: h(roleDirect).Interface(), alive: alive, dir: l.Dir(),
	}}
}

func referenceModes(r *refLab) []*tpMode {
	pids := func(hs ...int) func() []int {
		return func() []int {
			var out []int
			for _, i := range hs {
				out = append(out, r.pid(i))
			}
			return out
		}
	}
	h := r.l.Host
	return []*tpMode{{
		key: "wggo-direct", label: "wireguard-go direct (1 tunnel)", family: "wggo",
		clientNS: h(roleSender).PodNS(segment), serverNS: h(roleDirect).PodNS(segment), target: h(roleDirect).PodAddr(segment),
		roles: []string{"sender", "receiver"}, pids: pids(roleSender, roleDirect),
		via: h(roleSender).Interface(), notVia: h(roleGatewayA).Interface(), alive: r.alive, dir: r.l.Dir(),
	}, {
		key: "wggo-chain", label: "wireguard-go via 2 forwarders (3 tunnels)", family: "wggo", gateway: true,
		clientNS: h(roleSender).PodNS(segment), serverNS: h(roleRemote).PodNS(segment), target: h(roleRemote).PodAddr(segment),
		roles: []string{"sender", "gateway a", "gateway b", "receiver"}, pids: pids(roleSender, roleGatewayA, roleGatewayB, roleRemote),
		via: h(roleGatewayA).Interface(), notVia: h(roleDirect).Interface(), alive: r.alive, dir: r.l.Dir(),
	}}
}

func wantsReference(list string) bool { return strings.Contains(list, "wggo") }

func pickModes(all []*tpMode, list string) ([]*tpMode, error) {
	var out []*tpMode
	for _, k := range strings.Split(list, ",") {
		i := slices.IndexFunc(all, func(m *tpMode) bool { return m.key == strings.TrimSpace(k) })
		if i < 0 {
			return nil, fmt.Errorf("unknown mode %q", k)
		}
		out = append(out, all[i])
	}
	return out, nil
}

// waitModes waits until every mode's path answers pings, so no handshake
// falls into a measurement.
func waitModes(ctx context.Context, modes []*tpMode) error {
	var probes []probe
	for _, m := range modes {
		probes = append(probes, probe{m.clientNS, m.target})
	}
	return waitAnswered(ctx, probes, 60*time.Second)
}

// measureAll runs rounds x tests x modes, modes innermost and rotating, so
// the modes a ratio compares are measured within a minute of each other
// and none is always first. It reports whether any run failed.
func measureAll(ctx context.Context, f tpFlags, wg *wgctrl.Client, modes []*tpMode, tests []tpTest, rep *tpReport) (failed bool) {
	cells := map[string]*tpCell{}
	for _, m := range modes {
		for _, t := range tests {
			c := &tpCell{Mode: m.label, Test: t.name, Roles: m.roles}
			cells[m.key+"/"+t.key] = c
			rep.Cells = append(rep.Cells, c)
		}
	}
	mine := benchNetns(prefixThroughput, prefixReference)
	for r := 0; r < f.rounds && ctx.Err() == nil; r++ {
		for ti, t := range tests {
			for k := range modes {
				if ctx.Err() != nil {
					break
				}
				m := modes[(k+r+ti)%len(modes)]
				c := cells[m.key+"/"+t.key]
				s, err := measureQuietly(ctx, f, wg, m, t, mine)
				if err != nil {
					failed = true
					c.Failures = append(c.Failures, err.Error())
					fmt.Fprintf(os.Stderr, "round %d/%d %-7s %-42s FAILED: %v\n", r+1, f.rounds, t.name, m.label, err)
					continue
				}
				s.Round = r
				c.Samples = append(c.Samples, s)
				fmt.Fprintf(os.Stderr, "round %d/%d %-7s %-42s %6.2f Gbit/s  retr %5d  cpu %s  machine %3.0f%%  others %3.0f%%\n",
					r+1, f.rounds, t.name, m.label, s.Gbps, s.Retransmits, fmtCPU(m.roles, s), s.Machine, s.Other)
			}
		}
	}
	return failed
}

func fmtCPU(roles []string, s tpSample) string {
	var parts []string
	for i, r := range roles {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", r, 100*s.CPU[i]/s.Seconds))
	}
	return strings.Join(parts, ", ")
}

// measureQuietly waits for a quiet moment, measures, and reruns (at most
// twice) when other processes loaded the machine meanwhile, keeping the
// least disturbed sample.
func measureQuietly(ctx context.Context, f tpFlags, wg *wgctrl.Client, m *tpMode, t tpTest, mine map[uint64]bool) (tpSample, error) {
	var best tpSample
	for try := 0; try < 3 && ctx.Err() == nil; try++ {
		if f.quiet > 0 {
			if o := procstat.WaitQuiet(ctx, mine, f.quiet, 60*time.Second); o > f.quiet {
				fmt.Fprintf(os.Stderr, "  (no quiet moment within 60 s: other processes at %.0f%% CPU)\n", o)
			}
		}
		s, err := runIperf(ctx, f.secs, wg, m, t, mine)
		if err != nil {
			return s, err
		}
		if try == 0 || s.Other < best.Other {
			best = s
		}
		if f.maxOther <= 0 || s.Other <= f.maxOther {
			break
		}
		fmt.Fprintf(os.Stderr, "  %s %s: %.2f Gbit/s but other processes used %.0f%% CPU meanwhile: rerun\n", t.name, m.label, s.Gbps, s.Other)
	}
	return best, ctx.Err()
}

// iperfResult is the part of iperf3 -J output read here.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumSent *struct {
			Retransmits int `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived *struct {
			Bytes      int64   `json:"bytes"`
			BitsPerSec float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

func parseIperf(out string) (gbps float64, bytes int64, retransmits int, err error) {
	var res iperfResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &res); err != nil {
		return 0, 0, 0, fmt.Errorf("iperf3 JSON: %w; output: %.300s", err, out)
	}
	if res.Error != "" {
		return 0, 0, 0, fmt.Errorf("iperf3: %s", res.Error)
	}
	if res.End.SumReceived == nil || res.End.SumSent == nil {
		return 0, 0, 0, errors.New("iperf3 JSON has no sum_sent/sum_received")
	}
	return res.End.SumReceived.BitsPerSec / 1e9, res.End.SumReceived.Bytes, res.End.SumSent.Retransmits, nil
}

// runIperf runs one iperf3 test along m's path, measuring the CPU time of
// the processes on it, and checks that the traffic took that path.
func runIperf(ctx context.Context, secs int, wg *wgctrl.Client, m *tpMode, t tpTest, mine map[uint64]bool) (tpSample, error) {
	if err := m.alive(); err != nil {
		return tpSample{}, err
	}
	srv, err := startBG(m.serverNS, filepath.Join(m.dir, "iperf3-server.log"), "iperf3", "-s", "-1", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return tpSample{}, err
	}
	defer srv.stop(2 * time.Second)
	if err := waitListening(ctx, m.serverNS, iperfPort, srv); err != nil {
		return tpSample{}, err
	}
	via0, not0 := deviceTx(wg, m.via), deviceTx(wg, m.notVia)
	others := procstat.StartOtherLoad(mine, 500*time.Millisecond)
	meter := procstat.NewMeter(m.pids()...)
	argv := append([]string{"iperf3", "-c", m.target.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs), "-J", "--connect-timeout", "5000"}, t.args...)
	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs+30)*time.Second)
	defer cancel()
	out, runErr := nsOutput(cctx, m.clientNS, argv...)
	cpu, elapsed, machine := meter.Read()
	other := others.Read()
	gbps, bytes, retr, err := parseIperf(out)
	if err != nil {
		return tpSample{}, errors.Join(err, runErr)
	}
	if runErr != nil {
		return tpSample{}, runErr
	}
	s := tpSample{Gbps: gbps, Bytes: bytes, Retransmits: retr, Seconds: elapsed.Seconds(), Machine: machine, Other: other}
	for _, c := range cpu {
		s.CPU = append(s.CPU, c.Seconds())
	}
	via1, not1 := deviceTx(wg, m.via), deviceTx(wg, m.notVia)
	if min(via0, not0, via1, not1) < 0 {
		return s, fmt.Errorf("cannot read the transmit counters of %s and %s", m.via, m.notVia)
	}
	if err := checkPath(m, bytes, via1-via0, not1-not0); err != nil {
		return s, err
	}
	if err := m.alive(); err != nil {
		return s, err
	}
	return s, nil
}

// checkPath: everything received crossed m.via, so it sent at least 90 %
// of that (WireGuard adds headers); m.notVia, off the path, sent less than
// 10 % (keepalives and gossip only).
func checkPath(m *tpMode, received, via, notVia int64) error {
	if via < received*9/10 {
		return fmt.Errorf("%s sent %d bytes while iperf3 received %d: the traffic did not take the path through it", m.via, via, received)
	}
	if notVia > received/10 {
		return fmt.Errorf("%s sent %d bytes while iperf3 received %d: the traffic went through it", m.notVia, notVia, received)
	}
	return nil
}

// deviceTx is the bytes a WireGuard device sent to all its peers; -1 if
// it cannot be read.
func deviceTx(c *wgctrl.Client, name string) int64 {
	d, err := c.Device(name)
	if err != nil {
		return -1
	}
	var n int64
	for _, p := range d.Peers {
		n += p.TransmitBytes
	}
	return n
}
