package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
)

// ratioCI pools the same-round goodput ratios of cs to bases (cs[i]
// against bases[i], one pair per round they share) and returns their
// geometric mean with a 95 % confidence interval: Student's t over the
// log ratios, since ratios multiply and a log spread is symmetric. The
// interval is what says whether a difference of a few percent is
// resolved at all; the median and range of pairedRatio do not.
func ratioCI(cs, bases []*cell) (gm, lo, hi float64, n int) {
	var logs []float64
	for i, c := range cs {
		if c == nil || bases[i] == nil {
			continue
		}
		for _, r := range sameRoundRatios(c, bases[i]) {
			if r > 0 {
				logs = append(logs, math.Log(r))
			}
		}
	}
	n = len(logs)
	if n == 0 {
		return 0, 0, 0, 0
	}
	var mean float64
	for _, v := range logs {
		mean += v
	}
	mean /= float64(n)
	if n == 1 {
		return math.Exp(mean), math.NaN(), math.NaN(), 1
	}
	var ss float64
	for _, v := range logs {
		ss += (v - mean) * (v - mean)
	}
	half := tQuantile975(n-1) * math.Sqrt(ss/float64(n-1)/float64(n))
	return math.Exp(mean), math.Exp(mean - half), math.Exp(mean + half), n
}

// tQuantile975 is the two-sided 95 % quantile of Student's t with df
// degrees of freedom.
func tQuantile975(df int) float64 {
	table := []float64{12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
		2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
		2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042}
	switch {
	case df < 1:
		return math.NaN()
	case df <= len(table):
		return table[df-1]
	case df <= 60:
		return 2.000
	case df <= 120:
		return 1.980
	}
	return 1.960
}

func fmtCI(gm, lo, hi float64, n int) string {
	switch {
	case n == 0:
		return "-"
	case n == 1:
		return fmt.Sprintf("%.3f (1 pair)", gm)
	}
	return fmt.Sprintf("%.3f (%.3f-%.3f, %d pairs)", gm, lo, hi, n)
}

// printRatioCIs is the table under the main one: every mode against
// standalone wireguard-go, per test and with the tests pooled.
func printRatioCIs(w io.Writer, find func(label, test string) *cell, modes []modeInfo, tests []testKind) {
	const base = "wireguard-go"
	if find(base, tests[0].name) == nil {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Same-round ratios to wireguard-go: geometric mean (95 % confidence interval, pairs)")
	fmt.Fprintln(w)
	head, rule := "| mode |", "|---|"
	for _, tk := range tests {
		head += " " + tk.name + " |"
		rule += "---:|"
	}
	fmt.Fprintln(w, head+" all tests |")
	fmt.Fprintln(w, rule+"---:|")
	for _, m := range modes {
		if m.label == base || m.key == "raw" || m.key == "nebula" {
			continue
		}
		row := "| " + m.label + " |"
		var all, allBase []*cell
		for _, tk := range tests {
			c, b := find(m.label, tk.name), find(base, tk.name)
			row += " " + fmtCI(ratioCI([]*cell{c}, []*cell{b})) + " |"
			all, allBase = append(all, c), append(allBase, b)
		}
		fmt.Fprintln(w, row+" "+fmtCI(ratioCI(all, allBase))+" |")
	}
}

// cmdReport prints the tables of a throughput run again from its -json
// file, with today's summaries: a long run's numbers stay re-readable.
func cmdReport(w io.Writer, args []string) error {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: meshbench report RESULTS.json (written by throughput -json)")
		return errUsage
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var rep tpReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	var modes []modeInfo
	var tests []testKind
	known := benchTests("0")
	for _, c := range rep.Cells {
		i := slices.IndexFunc(allModes, func(m modeInfo) bool { return m.label == c.Mode })
		if i < 0 {
			return fmt.Errorf("%s: unknown mode %q", args[0], c.Mode)
		}
		if !slices.Contains(modes, allModes[i]) {
			modes = append(modes, allModes[i])
		}
		j := slices.IndexFunc(known, func(t testKind) bool { return t.name == c.Test })
		if j < 0 {
			return fmt.Errorf("%s: unknown test %q", args[0], c.Test)
		}
		if !slices.ContainsFunc(tests, func(t testKind) bool { return t.name == c.Test }) {
			tests = append(tests, known[j])
		}
	}
	if len(modes) == 0 {
		return fmt.Errorf("%s: no results", args[0])
	}
	printThroughput(w, &rep, modes, tests)
	return nil
}
