package main

import (
	"fmt"
	"io"
	"strings"
)

func describeJoin(j joinResult) string {
	s := fmt.Sprintf("%s: meshd up %.2f s, reachable from site a: median %.2f s, all %d probes %.2f s, site a's peers unchanged: %v, others %.0f%% CPU",
		j.Host, j.Up, j.Median, j.Probes, j.All, j.SiteAUnchanged, j.Other)
	if j.Err != "" {
		s += " FAILED: " + j.Err
	}
	return s
}

func describeFail(f failResult) string {
	s := fmt.Sprintf("killed %s (pair a-b with %s), now via %s: back median %.2f s max %.2f s, gap median %.2f s max %.2f s, %d requests lost over %d streams; restarted, pair moved back: %v, longest silence median %.2f s max %.2f s; others %.0f%% CPU",
		f.Victim, f.Remote, f.NewGateway, f.BackMedian, f.BackMax, f.GapMedian, f.GapMax, f.Lost, f.Streams, f.MovedBack, f.FailbackMedian, f.FailbackMax, f.Other)
	if f.SettleWait >= 2 {
		s += fmt.Sprintf("; waited %.0f s before for drained gateways", f.SettleWait)
	}
	if len(f.Drained) > 0 {
		s += "; drained meanwhile: " + strings.Join(f.Drained, "; ")
	}
	if f.Err != "" {
		s += " FAILED: " + f.Err
	}
	return s
}

// okJoins and okFails keep the repetitions that completed, for medians.
func okJoins(js []joinResult, f func(joinResult) float64) []float64 {
	var out []float64
	for _, j := range js {
		if j.Err == "" {
			out = append(out, f(j))
		}
	}
	return out
}

func okFails(fs []failResult, f func(failResult) float64) []float64 {
	var out []float64
	for _, r := range fs {
		if r.Err == "" {
			out = append(out, f(r))
		}
	}
	return out
}

func printConverge(w io.Writer, rep *cvReport) {
	fmt.Fprintf(w, "\nsitebench converge — %s, kernel %s, %d CPUs (%s), %s\n", rep.Date, rep.Kernel, rep.CPUs, rep.CPUModel, rep.Go)
	fmt.Fprintf(w, "%d sites x %d hosts (%d gateways each, public, LAN timers), userspace wireguard-go; %d repetitions; echo every %.0f ms (new host) / %.0f ms (failover)\n",
		rep.Sites, rep.Hosts, rep.Gateways, len(rep.Joins), 1000*rep.JoinEvery, 1000*rep.FailEvery)
	fmt.Fprintf(w, "start: %d meshd at once; every host routes every other site after %.2f s (median host %.2f s; slowest %s); sampled cross-site pod pairs answer after %.2f s\n",
		rep.Sites*rep.Hosts, rep.StartSites, rep.StartSitesMedian, strings.Join(rep.StartSlowest, ", "), rep.StartPods)
	fmt.Fprintln(w, "Seconds, median over repetitions (min-max).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| new host in site b | meshd up | reachable, median probe | reachable from all of site a | site a's devices unchanged |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|")
	unchanged := 0
	for _, j := range rep.Joins {
		if j.SiteAUnchanged {
			unchanged++
		}
	}
	probes := 0
	if len(rep.Joins) > 0 {
		probes = rep.Joins[0].Probes
	}
	fmt.Fprintf(w, "| %d repetitions, %d probes each | %s | %s | %s | %d of %d |\n", len(rep.Joins), probes,
		fmtMedian(okJoins(rep.Joins, func(j joinResult) float64 { return j.Up }), 2),
		fmtMedian(okJoins(rep.Joins, func(j joinResult) float64 { return j.Median }), 2),
		fmtMedian(okJoins(rep.Joins, func(j joinResult) float64 { return j.All }), 2),
		unchanged, len(rep.Joins))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| SIGKILL of the gateway serving a-b | back, median stream | back, all streams | gap, median stream | gap, all streams | requests lost (all streams) | failback: pair moved back | failback: longest silence, all streams |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---|---:|")
	moved := 0
	for _, f := range rep.Fails {
		if f.MovedBack {
			moved++
		}
	}
	streams := 0
	if len(rep.Fails) > 0 {
		streams = rep.Fails[0].Streams
	}
	fmt.Fprintf(w, "| %d repetitions, %d streams | %s | %s | %s | %s | %s | %d of %d | %s |\n", len(rep.Fails), streams,
		fmtMedian(okFails(rep.Fails, func(f failResult) float64 { return f.BackMedian }), 2),
		fmtMedian(okFails(rep.Fails, func(f failResult) float64 { return f.BackMax }), 2),
		fmtMedian(okFails(rep.Fails, func(f failResult) float64 { return f.GapMedian }), 2),
		fmtMedian(okFails(rep.Fails, func(f failResult) float64 { return f.GapMax }), 2),
		fmtMedian(okFails(rep.Fails, func(f failResult) float64 { return float64(f.Lost) }), 0),
		moved, len(rep.Fails),
		fmtMedian(okFails(rep.Fails, func(f failResult) float64 { return f.FailbackMax }), 2))
	fmt.Fprintln(w)
	for i, j := range rep.Joins {
		fmt.Fprintf(w, "join %d: %s\n", i+1, describeJoin(j))
	}
	for i, f := range rep.Fails {
		fmt.Fprintf(w, "failover %d: %s\n", i+1, describeFail(f))
	}
}
