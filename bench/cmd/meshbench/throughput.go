package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/meshd/meshd/bench"
	"github.com/meshd/meshd/bench/internal/procstat"
	"github.com/meshd/meshd/lab"
)

const iperfPort = 5201

// testKind is one iperf3 measurement.
type testKind struct {
	name string
	args []string
	udp  bool
}

func benchTests(udpRate string) []testKind {
	return []testKind{
		{name: "tcp x1"},
		{name: "tcp x4", args: []string{"-P", "4"}},
		{name: "udp 1400B", args: []string{"-u", "-b", udpRate, "-l", "1400"}, udp: true},
	}
}

// modeInfo names a column of the comparison.
type modeInfo struct {
	key, label string
}

var allModes = []modeInfo{
	{"raw", "raw veth"},
	{"wggo", "wireguard-go"},
	{"wggonft", "wireguard-go + meshd's nftables"},
	{"wggoct", "wireguard-go + meshd's nftables, no fast path"},
	{"wggonoct", "wireguard-go + meshd's nftables without conntrack"},
	{"wggorules", "wireguard-go + meshd's ip rules"},
	{"wggofull", "wireguard-go + meshd's nftables and ip rules"},
	{"meshd", "meshd"},
	{"meshdnotrack", "meshd, untracked same-segment"},
	{"meshdbase", "meshd (base build)"},
	{"meshd100", "meshd +100 rules"},
	{"nebula", "nebula"},
}

// sample is one iperf3 run.
type sample struct {
	Gbps    float64   `json:"gbps"`
	SndCPU  float64   `json:"sender_cpu_pct"`
	RcvCPU  float64   `json:"receiver_cpu_pct"`
	TunCPU  []float64 `json:"tunnel_cpu_pct"` // h1, h2
	Machine float64   `json:"machine_busy_pct"`
	LossPct float64   `json:"loss_pct"`
	// Other is CPU% used meanwhile by processes outside the benchmark
	// (a shared machine's other work); 100 = one core.
	Other float64 `json:"other_cpu_pct"`
	Round int     `json:"round"`
}

type cell struct {
	Mode        string   `json:"mode"`
	Test        string   `json:"test"`
	Samples     []sample `json:"samples"`
	Unavailable string   `json:"unavailable,omitempty"`
	Failures    []string `json:"failures,omitempty"`
}

type tpReport struct {
	Date     string                `json:"date"`
	Kernel   string                `json:"kernel"`
	CPUs     int                   `json:"cpus"`
	CPUModel string                `json:"cpu_model"`
	Seconds  int                   `json:"seconds"`
	Rounds   int                   `json:"rounds"`
	Path     string                `json:"path"`
	Underlay int                   `json:"underlay_mtu"`
	MTUs     map[string]int        `json:"tunnel_mtu"`
	Cells    []*cell               `json:"cells"`
	Crypto   []bench.CeilingResult `json:"crypto"`
	Notes    []string              `json:"notes,omitempty"`
}

// tpOptions are the throughput command's flags, checked.
type tpOptions struct {
	secs, rounds    int
	modes           []modeInfo
	tests           []testKind
	path            string
	meshdBin        string
	meshdBase       string
	meshdBaseName   string
	wggoBin         string
	nebula          nebulaOptions
	underlay, wgMTU int
	cryptoTime      time.Duration
	jsonOut, prefix string
	perfDir         string
	maxOther, quiet float64
	pin             bool
}

// nebulaOptions say which nebula build bench/throughput.sh managed to
// make, or why none.
type nebulaOptions struct {
	bin, cert, unavailable, version, skipped string
}

func parseThroughputFlags(args []string) (*tpOptions, error) {
	fs := flag.NewFlagSet("throughput", flag.ContinueOnError)
	o := &tpOptions{}
	fs.IntVar(&o.secs, "t", 10, "seconds per iperf3 run")
	fs.IntVar(&o.rounds, "r", 3, "rounds; every round runs every mode once, modes interleaved")
	modesFlag := fs.String("modes", "raw,wggo,wggonft,meshd,meshd100,nebula", "comma-separated: raw, wggo, wggonft, wggoct, wggonoct, wggorules, wggofull, meshd, meshdnotrack, meshd100, meshdbase, nebula")
	fs.StringVar(&o.path, "path", "pod", `"pod": pod namespace to pod namespace through both hosts (default; nebula is always host to host); "host": host namespace to host namespace`)
	fs.StringVar(&o.meshdBin, "meshd", "", "meshd binary")
	fs.StringVar(&o.meshdBase, "meshd-base", "", "another meshd binary to compare with (mode meshdbase), e.g. built from the main branch")
	fs.StringVar(&o.meshdBaseName, "meshd-base-name", "another build", "what -meshd-base was built from, printed in the notes")
	fs.StringVar(&o.wggoBin, "wireguard-go", "", "standalone wireguard-go binary")
	fs.StringVar(&o.nebula.bin, "nebula", "", "nebula binary (empty: unavailable)")
	fs.StringVar(&o.nebula.cert, "nebula-cert", "", "nebula-cert binary")
	fs.StringVar(&o.nebula.unavailable, "nebula-unavailable", "not built", "reason printed when -nebula is empty")
	fs.StringVar(&o.nebula.version, "nebula-version", "", "nebula module version, printed in the notes")
	fs.StringVar(&o.nebula.skipped, "nebula-skipped", "", "newer nebula versions that did not build, and why (printed in the notes)")
	udpRate := fs.String("udp-rate", "0", "iperf3 -b for the UDP test (0 = as fast as possible)")
	testsFlag := fs.String("tests", "tcp1,tcp4,udp", "comma-separated: tcp1 (one stream), tcp4 (-P 4), udp")
	fs.IntVar(&o.underlay, "underlay-mtu", 0, "underlay MTU (0 = veth default 1500)")
	fs.IntVar(&o.wgMTU, "wg-mtu", 0, "standalone wireguard-go and nebula MTU (0 = what meshd's mtu = 0 picks: underlay - 60)")
	fs.DurationVar(&o.cryptoTime, "crypto-time", 2*time.Second, "measuring time per crypto ceiling line (0 skips)")
	fs.StringVar(&o.jsonOut, "json", "", "also write the results as JSON here")
	fs.StringVar(&o.prefix, "prefix", "mbtp", "lab name prefix")
	fs.StringVar(&o.perfDir, "perf", "", "record a system-wide perf profile (cpu-clock, call graphs) of every measurement into this directory as MODE-TEST-rROUND.data")
	fs.Float64Var(&o.maxOther, "max-other", 25, "rerun a measurement (at most twice) when other processes used more than this CPU% meanwhile; 0 never reruns")
	fs.BoolVar(&o.pin, "pin", false, "run each host's tunnel process and iperf3 end on a CPU of its own (h1 and the client on CPU 0, h2 and the server on CPU 1), so every mode gets the same placement instead of whatever the scheduler makes of four busy processes on two cores")
	fs.Float64Var(&o.quiet, "quiet", 15, "before each measurement wait (at most 60 s) until other processes use less than this CPU% for a second; 0 never waits")
	if err := fs.Parse(args); err != nil {
		return nil, errUsage
	}
	if o.secs < 1 || o.rounds < 1 || (o.path != "pod" && o.path != "host") {
		return nil, fmt.Errorf("bad flags: -t %d -r %d -path %q", o.secs, o.rounds, o.path)
	}
	for _, k := range strings.Split(*modesFlag, ",") {
		i := slices.IndexFunc(allModes, func(m modeInfo) bool { return m.key == strings.TrimSpace(k) })
		if i < 0 {
			return nil, fmt.Errorf("unknown mode %q", k)
		}
		o.modes = append(o.modes, allModes[i])
	}
	for _, k := range strings.Split(*testsFlag, ",") {
		i := slices.Index([]string{"tcp1", "tcp4", "udp"}, strings.TrimSpace(k))
		if i < 0 {
			return nil, fmt.Errorf("unknown test %q", k)
		}
		o.tests = append(o.tests, benchTests(*udpRate)[i])
	}
	for _, b := range []*string{&o.meshdBin, &o.meshdBase, &o.wggoBin, &o.nebula.bin, &o.nebula.cert, &o.perfDir} {
		if *b != "" {
			*b = mustAbs(*b)
		}
	}
	return o, nil
}

func cmdThroughput(ctx context.Context, args []string) error {
	o, err := parseThroughputFlags(args)
	if err != nil {
		return err
	}
	if err := needRoot(); err != nil {
		return err
	}
	if o.perfDir != "" {
		if err := os.MkdirAll(o.perfDir, 0o755); err != nil {
			return err
		}
	}
	rep := &tpReport{
		Date: time.Now().UTC().Format(time.RFC3339), Kernel: procstat.KernelRelease(), CPUs: runtime.NumCPU(), CPUModel: procstat.CPUModel(),
		Seconds: o.secs, Rounds: o.rounds, Path: o.path, MTUs: map[string]int{},
	}
	if o.cryptoTime > 0 {
		rep.Crypto = measureCeiling(ctx, o.cryptoTime, o.quiet)
	}
	l, err := lab.New(ctx, lab.Spec{Prefix: o.prefix, Hosts: 2, Mode: "userspace", UnderlayMTU: o.underlay, Segments: benchSegments})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", cerr)
		}
	}()
	rep.Underlay = underlayMTU(l)
	wg, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}
	defer wg.Close()

	// The meshd modes get host namespaces of their own: the first ip rule
	// meshd adds switches a namespace to the policy-routing lookup for
	// good (the kernel never clears fib_has_custom_rules), and every mode
	// measured there afterwards would pay it too.
	var lm *lab.Lab
	if slices.ContainsFunc(o.modes, addsIPRules) && slices.ContainsFunc(o.modes, func(m modeInfo) bool { return !addsIPRules(m) }) {
		if lm, err = lab.New(ctx, lab.Spec{Prefix: o.prefix + meshdLabSuffix, Hosts: 2, Mode: "userspace", UnderlayMTU: o.underlay, Segments: benchSegments}); err != nil {
			return err
		}
		defer func() {
			if cerr := lm.Close(); cerr != nil {
				fmt.Fprintln(os.Stderr, "cleanup:", cerr)
			}
		}()
	}
	r := newTPRun(o, l, lm, wg, rep)
	r.measureRounds(ctx)
	r.markUnavailable()
	printThroughput(os.Stdout, rep, o.modes, o.tests)
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(o.jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if r.failed {
		return errors.New("some runs failed (see FAILED above)")
	}
	return nil
}

// measureCeiling is the ChaCha20-Poly1305 ceiling, best of three. A
// ceiling is the best this machine can do and other load only lowers it,
// so each try waits for a quiet moment first.
func measureCeiling(ctx context.Context, d time.Duration, quiet float64) []bench.CeilingResult {
	fmt.Fprintf(os.Stderr, "measuring the ChaCha20-Poly1305 ceiling (best of 3 x %s per line)\n", d)
	var best []bench.CeilingResult
	for range 3 {
		procstat.WaitQuiet(ctx, nil, quiet, 60*time.Second)
		for i, r := range bench.Ceiling(d) {
			if i >= len(best) {
				best = append(best, r)
			} else if r.Gbps > best[i].Gbps {
				best[i] = r
			}
		}
	}
	return best
}

// tpRun is one throughput run: each mode's tunnel on the lab and the
// table's cells as they fill. Only the goroutine running cmdThroughput
// uses it.
type tpRun struct {
	o       *tpOptions
	labs    map[string]*lab.Lab // by mode key
	rep     *tpReport
	tunnels map[string]tunnel // by mode key
	unavail map[string]string // mode key -> why it cannot run
	cells   map[string]*cell  // "mode key/test name"
	mine    map[uint64]bool   // the labs' netns inodes, to tell other load apart
	failed  bool
}

// meshdLabSuffix names the lab of the modes with ip rules: the run's
// prefix and this.
const meshdLabSuffix = "m"

// addsIPRules tells the modes that add ip rules (meshd, and wireguard-go
// given meshd's), which need a lab of their own when others are measured
// too.
func addsIPRules(m modeInfo) bool {
	return strings.HasPrefix(m.key, "meshd") || m.key == "wggorules" || m.key == "wggofull"
}

// newTPRun prepares every mode's tunnel in l, or in lm (if not nil) for
// the modes that add ip rules.
func newTPRun(o *tpOptions, l, lm *lab.Lab, wg *wgctrl.Client, rep *tpReport) *tpRun {
	r := &tpRun{o: o, labs: map[string]*lab.Lab{}, rep: rep, tunnels: map[string]tunnel{}, unavail: map[string]string{}, cells: map[string]*cell{}}
	for _, m := range o.modes {
		for _, tk := range o.tests {
			c := &cell{Mode: m.label, Test: tk.name}
			r.cells[m.key+"/"+tk.name] = c
			rep.Cells = append(rep.Cells, c)
		}
	}
	tunMTU := o.wgMTU
	if tunMTU == 0 {
		tunMTU = rep.Underlay - 60
	}
	for _, m := range o.modes {
		r.labs[m.key] = l
		if lm != nil && addsIPRules(m) {
			r.labs[m.key] = lm
		}
		t, why := r.newTunnel(m.key, wg, tunMTU)
		if why != "" {
			r.unavail[m.key] = why
			continue
		}
		r.tunnels[m.key] = t
	}
	nss, _ := lab.ListNetns(l.Prefix())
	if lm != nil {
		more, _ := lab.ListNetns(lm.Prefix())
		nss = append(nss, more...)
	}
	r.mine = procstat.NetnsInodes(nss)
	return r
}

// newTunnel builds the tunnel of mode key, or says why it is unavailable.
func (r *tpRun) newTunnel(key string, wg *wgctrl.Client, tunMTU int) (tunnel, string) {
	o, l := r.o, r.labs[key]
	switch key {
	case "raw":
		return &rawTunnel{l: l, path: o.path}, ""
	case "wggo", "wggonft", "wggoct", "wggonoct", "wggorules", "wggofull":
		if o.wggoBin == "" {
			return nil, "no -wireguard-go binary"
		}
		table := map[string]tableKind{"wggo": noTable, "wggonft": meshdTable, "wggoct": trackedTable, "wggonoct": untrackedTable,
			"wggorules": noTable, "wggofull": trackedTable}[key]
		return &wggoTunnel{l: l, bin: o.wggoBin, path: o.path, mtuVal: tunMTU, wg: wg, table: table, ipRules: addsIPRules(modeInfo{key: key})}, ""
	case "meshdbase":
		if o.meshdBase == "" {
			return nil, "no -meshd-base binary"
		}
		r.rep.Notes = append(r.rep.Notes, "meshd (base build) is "+o.meshdBaseName)
		return &meshdTunnel{l: l, bin: o.meshdBase, path: o.path, wg: wg}, ""
	case "meshd", "meshdnotrack", "meshd100":
		if o.meshdBin == "" {
			return nil, "no -meshd binary"
		}
		t := &meshdTunnel{l: l, bin: o.meshdBin, path: o.path, wg: wg}
		switch key {
		case "meshd100":
			t.extra, t.wantRules = allowRules(100), 100
		case "meshdnotrack":
			t.extra = "\n[policy]\nuntracked_same_segment = true\n"
		}
		return t, ""
	case "nebula":
		if o.nebula.bin == "" || o.nebula.cert == "" {
			return nil, o.nebula.unavailable
		}
		r.rep.Notes = append(r.rep.Notes, "nebula "+o.nebula.version+" is measured host to host (its overlay addresses), not pod to pod")
		if o.nebula.skipped != "" {
			r.rep.Notes = append(r.rep.Notes, "newer nebula not built: "+o.nebula.skipped)
		}
		return &nebulaTunnel{l: l, bin: o.nebula.bin, certBin: o.nebula.cert, mtuVal: tunMTU}, ""
	}
	return nil, "unknown mode"
}

// measureRounds runs rounds x tests x modes, modes innermost: the modes a
// ratio compares are measured within a minute of each other, so slow
// changes in the machine's other load hit them alike. The order rotates
// so no mode is always first.
func (r *tpRun) measureRounds(ctx context.Context) {
	modes := r.o.modes
	for round := 0; round < r.o.rounds; round++ {
		for ti, tk := range r.o.tests {
			for k := range modes {
				if ctx.Err() != nil {
					return
				}
				r.measureCell(ctx, round, tk, modes[(k+round+ti)%len(modes)])
			}
		}
	}
}

// measureCell sets mode m's tunnel up, runs test tk through it and tears
// it down again, recording the sample or the failure.
func (r *tpRun) measureCell(ctx context.Context, round int, tk testKind, m modeInfo) {
	if _, ok := r.unavail[m.key]; ok {
		return
	}
	c, t := r.cells[m.key+"/"+tk.name], r.tunnels[m.key]
	prefix := fmt.Sprintf("round %d/%d %-10s %-16s", round+1, r.o.rounds, tk.name, m.label)
	fail := func(what string, err error) {
		r.failed = true
		c.Failures = append(c.Failures, what+err.Error())
		fmt.Fprintf(os.Stderr, "%s %sFAILED: %v\n", prefix, what, err)
	}
	err := t.setup(ctx)
	var ue *unavailableError
	switch {
	case errors.As(err, &ue):
		r.unavail[m.key] = ue.reason
		_ = t.teardown()
		return
	case err != nil:
		fail("setup: ", err)
		if terr := t.teardown(); terr != nil {
			fmt.Fprintf(os.Stderr, "  teardown: %v\n", terr)
		}
		return
	}
	if mt := t.mtu(); mt > 0 {
		r.rep.MTUs[m.label] = mt
	}
	perfOut := ""
	if r.o.perfDir != "" {
		perfOut = filepath.Join(r.o.perfDir, fmt.Sprintf("%s-%s-r%d.data", m.key, strings.ReplaceAll(tk.name, " ", ""), round+1))
	}
	if s, err := r.measureQuietly(ctx, r.labs[m.key], t, tk, perfOut); err != nil {
		fail("", err)
	} else {
		s.Round = round
		c.Samples = append(c.Samples, s)
		fmt.Fprintf(os.Stderr, "%s %6.2f Gbit/s  cpu snd %3.0f%% rcv %3.0f%% tunnel %s machine %3.0f%% others %3.0f%%%s\n",
			prefix, s.Gbps, s.SndCPU, s.RcvCPU, fmtPair(s.TunCPU), s.Machine, s.Other, lossNote(tk, s))
	}
	if err := t.teardown(); err != nil {
		fail("teardown: ", err)
	}
}

// markUnavailable fills in why a mode has no numbers.
func (r *tpRun) markUnavailable() {
	for _, m := range r.o.modes {
		if why, ok := r.unavail[m.key]; ok {
			for _, tk := range r.o.tests {
				r.cells[m.key+"/"+tk.name].Unavailable = why
			}
		}
	}
}

// measureQuietly waits for a quiet moment, measures, and reruns (at most
// twice) when other processes still loaded the machine meanwhile, keeping
// the least disturbed sample.
func (r *tpRun) measureQuietly(ctx context.Context, l *lab.Lab, t tunnel, tk testKind, perfOut string) (sample, error) {
	var best sample
	for try := 0; try < 3 && ctx.Err() == nil; try++ {
		if r.o.quiet > 0 {
			if o := procstat.WaitQuiet(ctx, r.mine, r.o.quiet, 60*time.Second); o > r.o.quiet {
				fmt.Fprintf(os.Stderr, "  (no quiet moment within 60 s: other processes at %.0f%% CPU)\n", o)
			}
		}
		s, err := runIperf(ctx, l, t, tk, r.o.secs, perfOut, r.o.pin)
		if err != nil {
			return s, err
		}
		if try == 0 || s.Other < best.Other {
			best = s
		}
		if r.o.maxOther <= 0 || s.Other <= r.o.maxOther {
			break
		}
		fmt.Fprintf(os.Stderr, "  %-10s %6.2f Gbit/s but other processes used %.0f%% CPU meanwhile: rerun\n", tk.name, s.Gbps, s.Other)
	}
	return best, ctx.Err()
}

func lossNote(tk testKind, s sample) string {
	if !tk.udp {
		return ""
	}
	return fmt.Sprintf(" loss %.1f%%", s.LossPct)
}

func fmtPair(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(s, "/")
}

// iperfJSON is the part of iperf3 -J output we read.
type iperfJSON struct {
	Error string `json:"error"`
	Start struct {
		MSS int `json:"tcp_mss_default"`
	} `json:"start"`
	End struct {
		SumSent     *iperfSum `json:"sum_sent"`
		SumReceived *iperfSum `json:"sum_received"`
		CPU         struct {
			Host   float64 `json:"host_total"`
			Remote float64 `json:"remote_total"`
		} `json:"cpu_utilization_percent"`
	} `json:"end"`
}

type iperfSum struct {
	Bytes       int64   `json:"bytes"`
	BitsPerSec  float64 `json:"bits_per_second"`
	LostPercent float64 `json:"lost_percent"`
	Retransmits int64   `json:"retransmits"`
}

// runIperf measures test tk through t for secs seconds; with perfOut, a
// system-wide perf profile of those seconds is written there; with pin,
// h1's tunnel and the client run on CPU 0, h2's and the server on CPU 1.
func runIperf(ctx context.Context, l *lab.Lab, t tunnel, tk testKind, secs int, perfOut string, pin bool) (sample, error) {
	e := t.endpoints()
	args := tk.args
	if pin {
		for i, pid := range t.pids() {
			if err := procstat.PinThreads(pid, i%runtime.NumCPU()); err != nil {
				return sample{}, err
			}
		}
		args = append(slices.Clone(args), "-A", fmt.Sprintf("0,%d", 1%runtime.NumCPU()))
	}
	srv, err := startIperfServer(ctx, l, e.serverNS)
	if err != nil {
		return sample{}, err
	}
	defer srv.Stop(2 * time.Second)
	tx0, checkTx := t.txBytes()
	nss, _ := lab.ListNetns(l.Prefix())
	others := procstat.StartOtherLoad(procstat.NetnsInodes(nss), 500*time.Millisecond)
	var perf *lab.Process
	if perfOut != "" {
		if perf, err = lab.StartProcess(e.clientNS, perfOut+".log", "perf", "record", "-e", "cpu-clock", "-a", "-g", "-F", "499", "-o", perfOut); err != nil {
			return sample{}, err
		}
	}
	meter := procstat.NewMeter(t.pids()...)
	res, runErr := iperfClient(ctx, l, e, secs, args...)
	tunTime, elapsed, machine := meter.Read()
	tun := cpuPercents(tunTime, elapsed)
	other := others.Read()
	if perf != nil {
		// SIGTERM makes perf stop and write its file; killing it would
		// leave the file unreadable.
		if err := perf.Stop(30 * time.Second); err != nil {
			return sample{}, fmt.Errorf("perf record: %w", err)
		}
	}
	if runErr != nil {
		return sample{}, runErr
	}
	if res.End.SumReceived == nil || res.End.SumSent == nil {
		return sample{}, errors.New("iperf3 JSON has no sum_sent/sum_received")
	}
	s := sample{
		Gbps: res.End.SumReceived.BitsPerSec / 1e9, SndCPU: res.End.CPU.Host, RcvCPU: res.End.CPU.Remote,
		TunCPU: tun, Machine: machine, LossPct: res.End.SumReceived.LostPercent, Other: other,
	}
	if checkTx {
		// Everything the receiver got crossed the tunnel, so the tunnel
		// must have sent at least that much (plus headers).
		tx1, _ := t.txBytes()
		if tx0 < 0 || tx1 < 0 {
			return s, errors.New("cannot read the tunnel's transmit counter")
		}
		if got := tx1 - tx0; got < res.End.SumReceived.Bytes*9/10 {
			return s, fmt.Errorf("tunnel sent %d bytes but iperf3 received %d: traffic bypassed the tunnel", got, res.End.SumReceived.Bytes)
		}
	}
	if s.Gbps <= 0 {
		return s, errors.New("iperf3 measured nothing")
	}
	return s, nil
}

// startIperfServer starts a one-shot iperf3 server in ns and returns once
// it listens.
func startIperfServer(ctx context.Context, l *lab.Lab, ns string) (*lab.Process, error) {
	srv, err := lab.StartProcess(ns, filepath.Join(l.Dir(), "iperf3-server.log"), "iperf3", "-s", "-1", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return nil, err
	}
	if err := waitListening(ctx, ns, "tcp", iperfPort); err != nil {
		_ = srv.Stop(2 * time.Second)
		return nil, err
	}
	return srv, nil
}

// iperfClient runs an iperf3 client for secs seconds against e's server
// and returns its JSON report. The report goes through a log file
// because iperf3 prints warnings to stderr, which would corrupt the JSON
// in a combined output.
func iperfClient(ctx context.Context, l *lab.Lab, e endpoints, secs int, extra ...string) (*iperfJSON, error) {
	report := filepath.Join(l.Dir(), "iperf3-client.json")
	_ = os.Remove(report) // --logfile appends
	argv := []string{"iperf3", "-c", e.target.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs),
		"-J", "--logfile", report, "--connect-timeout", "5000"}
	if e.bind.IsValid() {
		argv = append(argv, "-B", e.bind.String())
	}
	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs+30)*time.Second)
	defer cancel()
	_, runErr := lab.Exec(cctx, e.clientNS, append(argv, extra...)...)
	out, _ := os.ReadFile(report)
	var res iperfJSON
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("iperf3: %v; report: %.300s", errors.Join(runErr, err), out)
	}
	if res.Error != "" {
		return nil, fmt.Errorf("iperf3: %s", res.Error)
	}
	if runErr != nil {
		return nil, fmt.Errorf("iperf3: %w", runErr)
	}
	return &res, nil
}

type stats struct {
	mean, min, max float64
	n              int
}

func statsOf(ss []sample, f func(sample) float64) stats {
	if len(ss) == 0 {
		return stats{}
	}
	st := stats{min: math.Inf(1), max: math.Inf(-1), n: len(ss)}
	for _, s := range ss {
		v := f(s)
		st.mean += v
		st.min, st.max = math.Min(st.min, v), math.Max(st.max, v)
	}
	st.mean /= float64(len(ss))
	return st
}

func printThroughput(w io.Writer, rep *tpReport, modes []modeInfo, tests []testKind) {
	fmt.Fprintf(w, "\nmeshd throughput benchmark — %s, kernel %s, %d CPUs (%s)\n", rep.Date, rep.Kernel, rep.CPUs, rep.CPUModel)
	fmt.Fprintf(w, "iperf3 %d s x %d rounds, path %s, underlay MTU %d, tunnel MTUs %s\n",
		rep.Seconds, rep.Rounds, describePath(rep.Path), rep.Underlay, fmtMTUs(rep.MTUs))
	fmt.Fprintln(w, "Gbit/s = receiver goodput, mean of rounds (min-max). x raw / x wireguard-go = median over rounds of the ratio to the same round's")
	fmt.Fprintln(w, "measurement (min-max in brackets). CPU%: 100 = one core; tunnel = the tunnel processes on h1/h2; Gbit/s per tunnel core =")
	fmt.Fprintln(w, "goodput / (their CPU / 100); busy = whole machine (100 = all cores); others = CPU of processes outside the benchmark.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| mode | test | Gbit/s | min-max | UDP loss | sender CPU% | receiver CPU% | tunnel CPU% h1/h2 | Gbit/s per tunnel core | machine busy% | others CPU% | x raw | x wireguard-go |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	find := func(label, test string) *cell {
		for _, c := range rep.Cells {
			if c.Mode == label && c.Test == test {
				return c
			}
		}
		return nil
	}
	for _, m := range modes {
		for _, tk := range tests {
			c := find(m.label, tk.name)
			if c.Unavailable != "" {
				fmt.Fprintf(w, "| %s | %s | unavailable (%s) | | | | | | | | | | |\n", m.label, tk.name, c.Unavailable)
				continue
			}
			if len(c.Samples) == 0 {
				fmt.Fprintf(w, "| %s | %s | FAILED | | | | | | | | | | |\n", m.label, tk.name)
				continue
			}
			mean := func(f func(sample) float64) float64 { return statsOf(c.Samples, f).mean }
			g := statsOf(c.Samples, func(s sample) float64 { return s.Gbps })
			loss := "-"
			if tk.udp {
				loss = fmt.Sprintf("%.1f%%", mean(func(s sample) float64 { return s.LossPct }))
			}
			tun, perCore := "-", "-"
			if len(c.Samples[0].TunCPU) == 2 {
				t1 := mean(func(s sample) float64 { return s.TunCPU[0] })
				t2 := mean(func(s sample) float64 { return s.TunCPU[1] })
				tun = fmt.Sprintf("%.0f/%.0f", t1, t2)
				perCore = fmt.Sprintf("%.2f", mean(func(s sample) float64 {
					if s.TunCPU[0]+s.TunCPU[1] <= 0 {
						return 0
					}
					return s.Gbps * 100 / (s.TunCPU[0] + s.TunCPU[1])
				}))
			}
			note := ""
			if len(c.Failures) > 0 {
				note = fmt.Sprintf(" (%d FAILED)", len(c.Failures))
			}
			fmt.Fprintf(w, "| %s | %s | %.2f%s | %.2f-%.2f | %s | %.0f | %.0f | %s | %s | %.0f | %.0f | %s | %s |\n",
				m.label, tk.name, g.mean, note, g.min, g.max, loss,
				mean(func(s sample) float64 { return s.SndCPU }), mean(func(s sample) float64 { return s.RcvCPU }),
				tun, perCore, mean(func(s sample) float64 { return s.Machine }), mean(func(s sample) float64 { return s.Other }),
				pairedRatio(c, find("raw veth", tk.name)), pairedRatio(c, find("wireguard-go", tk.name)))
		}
	}
	for _, r := range rep.Crypto {
		cores := "1 core"
		if r.Workers > 1 {
			cores = fmt.Sprintf("%d cores", r.Workers)
		}
		fmt.Fprintf(w, "| crypto ceiling | ChaCha20-Poly1305 %s, %s | %.2f | | | | | | | | | | |\n", r.Op, cores, r.Gbps)
	}
	printRatioCIs(w, find, modes, tests)
	for _, c := range rep.Cells {
		for _, f := range c.Failures {
			fmt.Fprintf(w, "FAILED %s %s: %s\n", c.Mode, c.Test, f)
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintln(w, "note:", n)
	}
}

// pairedRatio is the median over rounds of c's goodput divided by base's
// in the same round, with the range: robust to load that changes between
// rounds, which a ratio of means is not.
func pairedRatio(c, base *cell) string {
	if base == nil || c == base {
		if c == base && base != nil && len(c.Samples) > 0 {
			return "1.00"
		}
		return "-"
	}
	rs := sameRoundRatios(c, base)
	if len(rs) == 0 {
		return "-"
	}
	slices.Sort(rs)
	med := rs[len(rs)/2]
	if len(rs)%2 == 0 {
		med = (rs[len(rs)/2-1] + rs[len(rs)/2]) / 2
	}
	if len(rs) == 1 {
		return fmt.Sprintf("%.2f", med)
	}
	return fmt.Sprintf("%.2f (%.2f-%.2f)", med, rs[0], rs[len(rs)-1])
}

// sameRoundRatios is c's goodput divided by base's, one ratio per round
// both measured.
func sameRoundRatios(c, base *cell) []float64 {
	var rs []float64
	for _, s := range c.Samples {
		for _, b := range base.Samples {
			if b.Round == s.Round && b.Gbps > 0 {
				rs = append(rs, s.Gbps/b.Gbps)
			}
		}
	}
	return rs
}

func describePath(p string) string {
	if p == "pod" {
		return "pod->host->tunnel->host->pod"
	}
	return "host->tunnel->host"
}

func fmtMTUs(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, mode := range allModes {
		if v, ok := m[mode.label]; ok {
			parts = append(parts, fmt.Sprintf("%s %d", mode.label, v))
		}
	}
	return strings.Join(parts, ", ")
}
