package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
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

// layers are the ratios between modes that each add one thing to the
// other, by mode key: where the difference between meshd and
// wireguard-go goes.
var layers = [][2]string{
	{"wggoct", "wggorules"}, {"wggofull", "wggorules"}, {"wggofull", "wggoct"},
	{"wggonoct", "wggoct"}, {"wggonft", "wggoct"},
	{"meshd", "wggofull"}, {"meshd", "wggoct"},
	{"meshdnotrack", "meshd"}, {"meshd100", "meshd"}, {"meshd", "meshdbase"},
}

// printRatioCIs is the table under the main one: every mode against
// standalone wireguard-go, per test and with the tests pooled; and, for
// the layers measured, each against the one it builds on.
func printRatioCIs(w io.Writer, find func(label, test string) *cell, modes []modeInfo, tests []testKind) {
	const base = "wireguard-go"
	head, rule := "| mode |", "|---|"
	for _, tk := range tests {
		head += " " + tk.name + " |"
		rule += "---:|"
	}
	row := func(name, num, den string) string {
		r := "| " + name + " |"
		var all, allDen []*cell
		for _, tk := range tests {
			c, d := find(num, tk.name), find(den, tk.name)
			r += " " + fmtCI(ratioCI([]*cell{c}, []*cell{d})) + " |"
			all, allDen = append(all, c), append(allDen, d)
		}
		return r + " " + fmtCI(ratioCI(all, allDen)) + " |"
	}
	if find(base, tests[0].name) != nil {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Same-round ratios to wireguard-go: geometric mean (95 % confidence interval, pairs)")
		fmt.Fprintln(w)
		fmt.Fprintln(w, head+" all tests |")
		fmt.Fprintln(w, rule+"---:|")
		for _, m := range modes {
			if m.label == base || m.key == "raw" || m.key == "nebula" {
				continue
			}
			fmt.Fprintln(w, row(m.label, m.label, base))
		}
	}
	label := func(key string) (string, bool) {
		i := slices.IndexFunc(modes, func(m modeInfo) bool { return m.key == key })
		if i < 0 {
			return "", false
		}
		return modes[i].label, true
	}
	printed := false
	for _, l := range layers {
		num, ok1 := label(l[0])
		den, ok2 := label(l[1])
		if !ok1 || !ok2 || find(num, tests[0].name) == nil || find(den, tests[0].name) == nil {
			continue
		}
		if !printed {
			fmt.Fprintln(w)
			fmt.Fprintln(w, "Same-round ratios between layers: geometric mean (95 % confidence interval, pairs)")
			fmt.Fprintln(w)
			fmt.Fprintln(w, strings.Replace(head, "mode", "ratio", 1)+" all tests |")
			fmt.Fprintln(w, rule+"---:|")
			printed = true
		}
		fmt.Fprintln(w, row(num+" / "+den, num, den))
	}
}

// cmdReport prints the tables of a throughput run again from its -json
// file, with today's summaries: a long run's numbers stay re-readable.
// Given several files of the same path it pools their rounds, each
// paired only within its own run, so that runs of the same code add up
// to a narrower interval.
func cmdReport(w io.Writer, args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: meshbench report RESULTS.json... (written by throughput -json; several are pooled)")
		return errUsage
	}
	var rep tpReport
	for i, path := range args {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var r tpReport
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if i == 0 {
			rep = r
			continue
		}
		if err := pool(&rep, &r); err != nil {
			return fmt.Errorf("%s and %s: %w", args[0], path, err)
		}
	}
	if len(args) > 1 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("pooled from %d runs (%s); ratios pair rounds within each run", len(args), strings.Join(args, ", ")))
	}
	var modes []modeInfo
	var tests []testKind
	known := benchTests("0")
	for _, c := range rep.Cells {
		i := slices.IndexFunc(allModes, func(m modeInfo) bool { return m.label == c.Mode })
		if i < 0 {
			return fmt.Errorf("%s: unknown mode %q", strings.Join(args, ", "), c.Mode)
		}
		if !slices.Contains(modes, allModes[i]) {
			modes = append(modes, allModes[i])
		}
		j := slices.IndexFunc(known, func(t testKind) bool { return t.name == c.Test })
		if j < 0 {
			return fmt.Errorf("%s: unknown test %q", strings.Join(args, ", "), c.Test)
		}
		if !slices.ContainsFunc(tests, func(t testKind) bool { return t.name == c.Test }) {
			tests = append(tests, known[j])
		}
	}
	if len(modes) == 0 {
		return fmt.Errorf("%s: no results", strings.Join(args, ", "))
	}
	printThroughput(w, &rep, modes, tests)
	return nil
}

// pool adds run r to rep, its rounds numbered after rep's so that no
// sample of one run is paired with one of the other.
func pool(rep, r *tpReport) error {
	if rep.Path != r.Path {
		return fmt.Errorf("one run measured %s to %s, the other %s to %s: their ratios are not the same quantity", rep.Path, rep.Path, r.Path, r.Path)
	}
	offset := 0
	for _, c := range rep.Cells {
		for _, smp := range c.Samples {
			offset = max(offset, smp.Round+1)
		}
	}
	for _, c := range r.Cells {
		i := slices.IndexFunc(rep.Cells, func(have *cell) bool { return have.Mode == c.Mode && have.Test == c.Test })
		if i < 0 {
			rep.Cells = append(rep.Cells, &cell{Mode: c.Mode, Test: c.Test})
			i = len(rep.Cells) - 1
		}
		for _, smp := range c.Samples {
			smp.Round += offset
			rep.Cells[i].Samples = append(rep.Cells[i].Samples, smp)
		}
		rep.Cells[i].Failures = append(rep.Cells[i].Failures, c.Failures...)
	}
	rep.Rounds += r.Rounds
	if rep.MTUs == nil {
		rep.MTUs = map[string]int{}
	}
	for k, v := range r.MTUs {
		rep.MTUs[k] = v
	}
	rep.Notes = append(rep.Notes, r.Notes...)
	return nil
}
