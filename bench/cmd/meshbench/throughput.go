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
	{"meshd", "meshd"},
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

func cmdThroughput(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("throughput", flag.ContinueOnError)
	secs := fs.Int("t", 10, "seconds per iperf3 run")
	rounds := fs.Int("r", 3, "rounds; every round runs every mode once, modes interleaved")
	modesFlag := fs.String("modes", "raw,wggo,wggonft,meshd,meshd100,nebula", "comma-separated: raw, wggo, wggonft, meshd, meshd100, nebula")
	path := fs.String("path", "pod", `"pod": pod namespace to pod namespace through both hosts (default; nebula is always host to host); "host": host namespace to host namespace`)
	meshdBin := fs.String("meshd", "", "meshd binary")
	wggoBin := fs.String("wireguard-go", "", "standalone wireguard-go binary")
	nebulaBin := fs.String("nebula", "", "nebula binary (empty: unavailable)")
	nebulaCert := fs.String("nebula-cert", "", "nebula-cert binary")
	nebulaWhy := fs.String("nebula-unavailable", "not built", "reason printed when -nebula is empty")
	nebulaVersion := fs.String("nebula-version", "", "nebula module version, printed in the notes")
	nebulaSkipped := fs.String("nebula-skipped", "", "newer nebula versions that did not build, and why (printed in the notes)")
	udpRate := fs.String("udp-rate", "0", "iperf3 -b for the UDP test (0 = as fast as possible)")
	testsFlag := fs.String("tests", "tcp1,tcp4,udp", "comma-separated: tcp1 (one stream), tcp4 (-P 4), udp")
	underlay := fs.Int("underlay-mtu", 0, "underlay MTU (0 = veth default 1500)")
	wgMTU := fs.Int("wg-mtu", 0, "standalone wireguard-go and nebula MTU (0 = what meshd's mtu = 0 picks: underlay - 60)")
	cryptoTime := fs.Duration("crypto-time", 2*time.Second, "measuring time per crypto ceiling line (0 skips)")
	jsonOut := fs.String("json", "", "also write the results as JSON here")
	prefix := fs.String("prefix", "mbtp", "lab name prefix")
	maxOther := fs.Float64("max-other", 25, "rerun a measurement (at most twice) when other processes used more than this CPU% meanwhile; 0 never reruns")
	quiet := fs.Float64("quiet", 15, "before each measurement wait (at most 60 s) until other processes use less than this CPU% for a second; 0 never waits")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if err := needRoot(); err != nil {
		return err
	}
	if *secs < 1 || *rounds < 1 || (*path != "pod" && *path != "host") {
		return fmt.Errorf("bad flags: -t %d -r %d -path %q", *secs, *rounds, *path)
	}
	var modes []modeInfo
	for _, k := range strings.Split(*modesFlag, ",") {
		found := false
		for _, m := range allModes {
			if m.key == strings.TrimSpace(k) {
				modes, found = append(modes, m), true
			}
		}
		if !found {
			return fmt.Errorf("unknown mode %q", k)
		}
	}
	for _, b := range []*string{meshdBin, wggoBin, nebulaBin, nebulaCert} {
		if *b != "" {
			*b = mustAbs(*b)
		}
	}

	rep := &tpReport{
		Date: time.Now().UTC().Format(time.RFC3339), Kernel: kernelRelease(), CPUs: runtime.NumCPU(), CPUModel: cpuModel(),
		Seconds: *secs, Rounds: *rounds, Path: *path, MTUs: map[string]int{},
	}
	if *cryptoTime > 0 {
		// A ceiling is the best this machine can do, and other load only
		// lowers it: best of three, each after waiting for a quiet moment.
		fmt.Fprintf(os.Stderr, "measuring the ChaCha20-Poly1305 ceiling (best of 3 x %s per line)\n", *cryptoTime)
		for range 3 {
			waitQuiet(ctx, nil, *quiet, 60*time.Second)
			for i, r := range bench.Ceiling(*cryptoTime) {
				if i >= len(rep.Crypto) {
					rep.Crypto = append(rep.Crypto, r)
				} else if r.Gbps > rep.Crypto[i].Gbps {
					rep.Crypto[i] = r
				}
			}
		}
	}

	l, err := lab.New(ctx, lab.Spec{Prefix: *prefix, Hosts: 2, Mode: "userspace", UnderlayMTU: *underlay, Segments: benchSegments})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", cerr)
		}
	}()
	rep.Underlay = underlayMTU(l)
	tunMTU := *wgMTU
	if tunMTU == 0 {
		tunMTU = rep.Underlay - 60
	}
	wg, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}
	defer wg.Close()

	var tests []testKind
	for _, k := range strings.Split(*testsFlag, ",") {
		i := slices.Index([]string{"tcp1", "tcp4", "udp"}, strings.TrimSpace(k))
		if i < 0 {
			return fmt.Errorf("unknown test %q", k)
		}
		tests = append(tests, benchTests(*udpRate)[i])
	}
	cells := map[string]*cell{}
	for _, m := range modes {
		for _, t := range tests {
			c := &cell{Mode: m.label, Test: t.name}
			cells[m.key+"/"+t.name] = c
			rep.Cells = append(rep.Cells, c)
		}
	}
	tunnels := map[string]tunnel{}
	unavail := map[string]string{}
	for _, m := range modes {
		switch m.key {
		case "raw":
			tunnels[m.key] = &rawTunnel{l: l, path: *path}
		case "wggo":
			if *wggoBin == "" {
				unavail[m.key] = "no -wireguard-go binary"
				continue
			}
			tunnels[m.key] = &wggoTunnel{l: l, bin: *wggoBin, path: *path, mtuVal: tunMTU, wg: wg}
		case "wggonft":
			if *wggoBin == "" {
				unavail[m.key] = "no -wireguard-go binary"
				continue
			}
			tunnels[m.key] = &wggoTunnel{l: l, bin: *wggoBin, path: *path, mtuVal: tunMTU, wg: wg, withPolicy: true}
		case "meshd", "meshd100":
			if *meshdBin == "" {
				unavail[m.key] = "no -meshd binary"
				continue
			}
			t := &meshdTunnel{l: l, bin: *meshdBin, path: *path, wg: wg}
			if m.key == "meshd100" {
				t.extra, t.wantRules = allowRules(100), 100
			}
			tunnels[m.key] = t
		case "nebula":
			if *nebulaBin == "" || *nebulaCert == "" {
				unavail[m.key] = *nebulaWhy
				continue
			}
			tunnels[m.key] = &nebulaTunnel{l: l, bin: *nebulaBin, certBin: *nebulaCert, mtuVal: tunMTU}
			rep.Notes = append(rep.Notes, "nebula "+*nebulaVersion+" is measured host to host (its overlay addresses), not pod to pod")
			if *nebulaSkipped != "" {
				rep.Notes = append(rep.Notes, "newer nebula not built: "+*nebulaSkipped)
			}
		}
	}

	// Rounds x tests x modes, modes innermost: the modes a ratio compares
	// are measured within a minute of each other, so slow changes in the
	// machine's other load hit them alike. The order rotates so no mode is
	// always first.
	failed := false
	nss, _ := lab.ListNetns(l.Prefix())
	mine := netnsInodes(nss)
	for r := 0; r < *rounds && ctx.Err() == nil; r++ {
		for ti, tk := range tests {
			for k := range modes {
				m := modes[(k+r+ti)%len(modes)]
				if ctx.Err() != nil {
					break
				}
				if _, ok := unavail[m.key]; ok {
					continue
				}
				c := cells[m.key+"/"+tk.name]
				t := tunnels[m.key]
				err := t.setup(ctx)
				var ue *unavailableError
				if errors.As(err, &ue) {
					unavail[m.key] = ue.reason
					_ = t.teardown()
					continue
				}
				if err != nil {
					failed = true
					c.Failures = append(c.Failures, "setup: "+err.Error())
					fmt.Fprintf(os.Stderr, "round %d/%d %-10s %-16s setup FAILED: %v\n", r+1, *rounds, tk.name, m.label, err)
					if terr := t.teardown(); terr != nil {
						fmt.Fprintf(os.Stderr, "  teardown: %v\n", terr)
					}
					continue
				}
				if mt := t.mtu(); mt > 0 {
					rep.MTUs[m.label] = mt
				}
				s, err := measureQuietly(ctx, l, t, tk, *secs, mine, *quiet, *maxOther)
				if err != nil {
					failed = true
					c.Failures = append(c.Failures, err.Error())
					fmt.Fprintf(os.Stderr, "round %d/%d %-10s %-16s FAILED: %v\n", r+1, *rounds, tk.name, m.label, err)
				} else {
					s.Round = r
					c.Samples = append(c.Samples, s)
					fmt.Fprintf(os.Stderr, "round %d/%d %-10s %-16s %6.2f Gbit/s  cpu snd %3.0f%% rcv %3.0f%% tunnel %s machine %3.0f%% others %3.0f%%%s\n",
						r+1, *rounds, tk.name, m.label, s.Gbps, s.SndCPU, s.RcvCPU, fmtPair(s.TunCPU), s.Machine, s.Other, lossNote(tk, s))
				}
				if err := t.teardown(); err != nil {
					failed = true
					c.Failures = append(c.Failures, "teardown: "+err.Error())
					fmt.Fprintf(os.Stderr, "  %s teardown FAILED: %v\n", m.label, err)
				}
			}
		}
	}
	for _, m := range modes {
		if why, ok := unavail[m.key]; ok {
			for _, tk := range tests {
				cells[m.key+"/"+tk.name].Unavailable = why
			}
		}
	}
	printThroughput(os.Stdout, rep, modes, tests)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if failed {
		return errors.New("some runs failed (see FAILED above)")
	}
	return nil
}

// measureQuietly waits for a quiet moment, measures, and reruns (at most
// twice) when other processes still loaded the machine meanwhile, keeping
// the least disturbed sample.
func measureQuietly(ctx context.Context, l *lab.Lab, t tunnel, tk testKind, secs int, mine map[uint64]bool, quiet, maxOther float64) (sample, error) {
	var best sample
	for try := 0; try < 3 && ctx.Err() == nil; try++ {
		if quiet > 0 {
			if o := waitQuiet(ctx, mine, quiet, 60*time.Second); o > quiet {
				fmt.Fprintf(os.Stderr, "  (no quiet moment within 60 s: other processes at %.0f%% CPU)\n", o)
			}
		}
		s, err := runIperf(ctx, l, t, tk, secs)
		if err != nil {
			return s, err
		}
		if try == 0 || s.Other < best.Other {
			best = s
		}
		if maxOther <= 0 || s.Other <= maxOther {
			break
		}
		fmt.Fprintf(os.Stderr, "  %-10s %6.2f Gbit/s but other processes used %.0f%% CPU meanwhile: rerun\n", tk.name, s.Gbps, s.Other)
	}
	return best, ctx.Err()
}

// waitQuiet samples other processes' CPU in one-second windows until it
// is below threshold or maxWait passes, and returns the last sample.
func waitQuiet(ctx context.Context, mine map[uint64]bool, threshold float64, maxWait time.Duration) float64 {
	deadline := time.Now().Add(maxWait)
	for {
		o := startOtherLoad(mine, 250*time.Millisecond)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
		v := o.read()
		if v <= threshold || time.Now().After(deadline) || ctx.Err() != nil {
			return v
		}
	}
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
	End   struct {
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
}

func runIperf(ctx context.Context, l *lab.Lab, t tunnel, tk testKind, secs int) (sample, error) {
	e := t.endpoints()
	srvLog := filepath.Join(l.Dir(), "iperf3-server.log")
	srv, err := startBG(e.serverNS, srvLog, "iperf3", "-s", "-1", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return sample{}, err
	}
	defer srv.stop(2 * time.Second)
	if err := waitListening(ctx, e.serverNS, "tcp", iperfPort); err != nil {
		return sample{}, err
	}
	tx0, checkTx := t.txBytes()
	nss, _ := lab.ListNetns(l.Prefix())
	others := startOtherLoad(netnsInodes(nss), 500*time.Millisecond)
	meter := newCPUMeter(t.pids()...)
	argv := []string{"iperf3", "-c", e.target.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs), "-J", "--connect-timeout", "5000"}
	if e.bind.IsValid() {
		argv = append(argv, "-B", e.bind.String())
	}
	argv = append(argv, tk.args...)
	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs+30)*time.Second)
	defer cancel()
	out, runErr := nsOutput(cctx, e.clientNS, argv...)
	tun, machine := meter.read()
	other := others.read()
	var res iperfJSON
	if jerr := json.Unmarshal([]byte(strings.TrimSpace(out)), &res); jerr != nil {
		return sample{}, fmt.Errorf("iperf3: %v; output: %.300s", runErr, out)
	}
	if res.Error != "" {
		return sample{}, fmt.Errorf("iperf3: %s", res.Error)
	}
	if runErr != nil {
		return sample{}, fmt.Errorf("iperf3: %v", runErr)
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
	var rs []float64
	for _, s := range c.Samples {
		for _, b := range base.Samples {
			if b.Round == s.Round && b.Gbps > 0 {
				rs = append(rs, s.Gbps/b.Gbps)
			}
		}
	}
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

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
