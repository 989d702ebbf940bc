package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// sameRoundRatios divides num's goodput by den's, round by round; rounds
// missing on either side are skipped. Ratios of one round are what is
// comparable on a shared machine: the load of the minute hits both.
func sameRoundRatios(num, den []tpSample) []float64 {
	byRound := map[int]float64{}
	for _, s := range den {
		byRound[s.Round] = s.Gbps
	}
	var out []float64
	for _, s := range num {
		if d, ok := byRound[s.Round]; ok && d > 0 {
			out = append(out, s.Gbps/d)
		}
	}
	return out
}

// sampleValues applies f to every sample, dropping NaNs.
func sampleValues(ss []tpSample, f func(tpSample) float64) []float64 {
	var out []float64
	for _, s := range ss {
		if v := f(s); !math.IsNaN(v) {
			out = append(out, v)
		}
	}
	return out
}

// roleCoresPerGbps is role i's cores per Gbit/s carried in s.
func roleCoresPerGbps(s tpSample, i int) float64 {
	return coresPerGbps(s.CPU[i], s.Bytes)
}

// pathCoresPerGbps is every tunnel process of the path together.
func pathCoresPerGbps(s tpSample) float64 {
	var sum float64
	for _, c := range s.CPU {
		if c < 0 {
			return math.NaN()
		}
		sum += c
	}
	return coresPerGbps(sum, s.Bytes)
}

// counterpart is the mode of the other family on the same path (meshd's
// gateway path and the wireguard-go chain, the two direct paths), or nil.
func counterpart(m *tpMode, modes []*tpMode) *tpMode {
	for _, o := range modes {
		if o.family != m.family && o.gateway == m.gateway {
			return o
		}
	}
	return nil
}

// directOf is the direct mode of m's family, or nil.
func directOf(m *tpMode, modes []*tpMode) *tpMode {
	for _, o := range modes {
		if o.family == m.family && !o.gateway {
			return o
		}
	}
	return nil
}

func findCell(rep *tpReport, m *tpMode, t tpTest) *tpCell {
	for _, c := range rep.Cells {
		if c.Mode == m.label && c.Test == t.name {
			return c
		}
	}
	return nil
}

func printThroughput(w io.Writer, rep *tpReport, modes []*tpMode, tests []tpTest) {
	fmt.Fprintf(w, "\nsitebench throughput — %s, kernel %s, %d CPUs (%s), %s\n", rep.Date, rep.Kernel, rep.CPUs, rep.CPUModel, rep.Go)
	fmt.Fprintf(w, "iperf3 pod to pod, %d s x %d rounds, modes interleaved; tunnel MTU %d; userspace wireguard-go everywhere\n", rep.Seconds, rep.Rounds, rep.MTU)
	fmt.Fprintln(w, "Values are medians over rounds (min-max). CPU %: 100 = one core, per process on the path (sender / gateway a / gateway b / receiver).")
	fmt.Fprintln(w, "cores per Gbit/s = the process's CPU seconds / gigabits received. x direct / x wireguard-go = median of same-round ratios.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| mode | test | Gbit/s | TCP retransmits | CPU % on the path | gateway cores per Gbit/s (a / b) | all tunnel processes, cores per Gbit/s | machine busy % | others CPU % | x direct | x wireguard-go |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, m := range modes {
		for _, t := range tests {
			fmt.Fprintln(w, throughputRow(rep, m, t, modes))
		}
	}
	fmt.Fprintln(w)
	for _, m := range modes {
		d := directOf(m, modes)
		if !m.gateway || d == nil {
			continue
		}
		var parts []string
		for _, t := range tests {
			r := sameRoundRatios(findCell(rep, m, t).Samples, findCell(rep, d, t).Samples)
			parts = append(parts, t.name+" "+fmtMedian(r, 2))
		}
		fmt.Fprintf(w, "%s / %s: %s\n", m.label, d.label, strings.Join(parts, ", "))
	}
}

func throughputRow(rep *tpReport, m *tpMode, t tpTest, modes []*tpMode) string {
	c := findCell(rep, m, t)
	if len(c.Samples) == 0 {
		return fmt.Sprintf("| %s | %s | FAILED (%d) | | | | | | | | |", m.label, t.name, len(c.Failures))
	}
	ss := c.Samples
	gbps := sampleValues(ss, func(s tpSample) float64 { return s.Gbps })
	retr := sampleValues(ss, func(s tpSample) float64 { return float64(s.Retransmits) })
	var cpu, gw []string
	for i, role := range c.Roles {
		pct := sampleValues(ss, func(s tpSample) float64 { return 100 * s.CPU[i] / s.Seconds })
		cpu = append(cpu, fmt.Sprintf("%.0f", median(pct)))
		if strings.HasPrefix(role, "gateway") {
			gw = append(gw, fmtMedian(sampleValues(ss, func(s tpSample) float64 { return roleCoresPerGbps(s, i) }), 2))
		}
	}
	gwCell := "-"
	if len(gw) > 0 {
		gwCell = strings.Join(gw, " / ")
	}
	xDirect, xWggo := "-", "-"
	if d := directOf(m, modes); d != nil && d != m {
		xDirect = fmtMedian(sameRoundRatios(ss, findCell(rep, d, t).Samples), 2)
	}
	if o := counterpart(m, modes); o != nil && m.family == "meshd" {
		xWggo = fmtMedian(sameRoundRatios(ss, findCell(rep, o, t).Samples), 2)
	}
	return fmt.Sprintf("| %s | %s | %s | %.0f | %s | %s | %s | %.0f | %.0f | %s | %s |",
		m.label, t.name, fmtMedian(gbps, 2), median(retr), strings.Join(cpu, " / "), gwCell,
		fmtMedian(sampleValues(ss, pathCoresPerGbps), 2),
		median(sampleValues(ss, func(s tpSample) float64 { return s.Machine })),
		median(sampleValues(ss, func(s tpSample) float64 { return s.Other })),
		xDirect, xWggo)
}
