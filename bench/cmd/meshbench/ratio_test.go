package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func cellOf(mode, test string, gbps ...float64) *cell {
	c := &cell{Mode: mode, Test: test}
	for i, g := range gbps {
		c.Samples = append(c.Samples, sample{Gbps: g, Round: i})
	}
	return c
}

func TestRatioCI(t *testing.T) {
	// Ratios 0.9, 1.0, 1.1 against a base that changes from round to
	// round: only the same-round ratios count.
	c := cellOf("m", "tcp x1", 0.9, 3, 5.5)
	b := cellOf("wireguard-go", "tcp x1", 1, 3, 5)
	gm, lo, hi, n := ratioCI([]*cell{c}, []*cell{b})
	logs := []float64{math.Log(0.9), 0, math.Log(1.1)}
	mean := (logs[0] + logs[1] + logs[2]) / 3
	var ss float64
	for _, v := range logs {
		ss += (v - mean) * (v - mean)
	}
	half := 4.303 * math.Sqrt(ss/2/3)
	if n != 3 || math.Abs(gm-math.Exp(mean)) > 1e-9 || math.Abs(lo-math.Exp(mean-half)) > 1e-9 || math.Abs(hi-math.Exp(mean+half)) > 1e-9 {
		t.Fatalf("ratioCI = %v (%v-%v) n %d; want %v (%v-%v) n 3", gm, lo, hi, n, math.Exp(mean), math.Exp(mean-half), math.Exp(mean+half))
	}
	if lo >= gm || hi <= gm {
		t.Fatalf("interval %v-%v does not contain %v", lo, hi, gm)
	}

	// Pooling two tests doubles the pairs and narrows the interval when
	// the ratios agree.
	c2 := cellOf("m", "tcp x4", 0.9, 3, 5.5)
	b2 := cellOf("wireguard-go", "tcp x4", 1, 3, 5)
	_, plo, phi, pn := ratioCI([]*cell{c, c2}, []*cell{b, b2})
	if pn != 6 || phi-plo >= hi-lo {
		t.Errorf("pooled: %d pairs, width %.3f; want 6 pairs narrower than %.3f", pn, phi-plo, hi-lo)
	}

	// A round the base failed in has no pair.
	b.Samples = b.Samples[:2]
	if _, _, _, n := ratioCI([]*cell{c}, []*cell{b}); n != 2 {
		t.Errorf("%d pairs with the base's third round missing, want 2", n)
	}
	if got := fmtCI(ratioCI([]*cell{c}, []*cell{nil})); got != "-" {
		t.Errorf("no base: %q, want -", got)
	}
	if got := fmtCI(ratioCI([]*cell{cellOf("m", "x", 2)}, []*cell{cellOf("b", "x", 1)})); !strings.HasPrefix(got, "2.000 (1 pair)") {
		t.Errorf("one pair: %q", got)
	}
}

func TestTQuantile975(t *testing.T) {
	for df, want := range map[int]float64{1: 12.706, 9: 2.262, 19: 2.093, 30: 2.042, 45: 2.000, 1000: 1.960} {
		if got := tQuantile975(df); got != want {
			t.Errorf("t(%d) = %v, want %v", df, got, want)
		}
	}
}

func TestReportReprintsASavedRun(t *testing.T) {
	rep := tpReport{Date: "2026-12-01T00:00:00Z", Seconds: 8, Rounds: 2, Path: "pod", MTUs: map[string]int{}, Cells: []*cell{
		cellOf("wireguard-go", "tcp x1", 4, 5),
		cellOf("meshd", "tcp x1", 3.8, 5),
	}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "run.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := cmdReport(&out, []string{path}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| meshd | tcp x1 | 4.40 | 3.80-5.00 |") {
		t.Errorf("no meshd row in:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "| meshd | 0.975 (0.704-1.350, 2 pairs) | 0.975 (0.704-1.350, 2 pairs) |") {
		t.Errorf("no confidence interval row in:\n%s", out.String())
	}
	if err := os.WriteFile(path, []byte(`{"cells":[{"mode":"someone else's","test":"tcp x1"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmdReport(&out, []string{path}); err == nil || !strings.Contains(err.Error(), "unknown mode") {
		t.Errorf("a file with an unknown mode: %v", err)
	}
	if err := cmdReport(&out, nil); err != errUsage {
		t.Errorf("no file: %v, want usage", err)
	}
}

// TestLayersTable: with the modes that add meshd's routing, its table and
// meshd itself in one run, the second table divides each by the layer
// below it, round by round; pairs whose modes did not run are left out.
func TestLayersTable(t *testing.T) {
	label := func(key string) string {
		return allModes[slices.IndexFunc(allModes, func(m modeInfo) bool { return m.key == key })].label
	}
	cells := []*cell{
		cellOf("wireguard-go", "tcp x1", 4, 5),
		cellOf(label("wggorules"), "tcp x1", 3.9, 4.9),
		cellOf(label("wggofull"), "tcp x1", 3.8, 4.6),
		cellOf("meshd", "tcp x1", 3.8, 4.6),
	}
	var modes []modeInfo
	for _, k := range []string{"wggo", "wggorules", "wggofull", "meshd"} {
		modes = append(modes, allModes[slices.IndexFunc(allModes, func(m modeInfo) bool { return m.key == k })])
	}
	find := func(l, test string) *cell {
		i := slices.IndexFunc(cells, func(c *cell) bool { return c.Mode == l && c.Test == test })
		if i < 0 {
			return nil
		}
		return cells[i]
	}
	var out strings.Builder
	printRatioCIs(&out, find, modes, []testKind{{name: "tcp x1"}})
	for _, want := range []string{
		"| meshd / " + label("wggofull") + " | 1.000 (1.000-1.000, 2 pairs) |",
		"| " + label("wggofull") + " / " + label("wggorules") + " | ",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no row %q in:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "meshd +100 rules / meshd") {
		t.Errorf("a row for a mode that did not run:\n%s", out.String())
	}
}

// TestReportPoolsRuns: two runs of the same path pool into one interval
// over all their pairs, no round of one paired with the other's; runs of
// different paths are refused.
func TestReportPoolsRuns(t *testing.T) {
	dir := t.TempDir()
	write := func(name, path string, wggo, meshd []float64) string {
		rep := tpReport{Seconds: 8, Rounds: len(wggo), Path: path, MTUs: map[string]int{}, Cells: []*cell{
			cellOf("wireguard-go", "tcp x1", wggo...),
			cellOf("meshd", "tcp x1", meshd...),
		}}
		b, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	// Every same-run ratio is 0.9; pairing across runs would not be.
	a := write("a.json", "pod", []float64{4, 5}, []float64{3.6, 4.5})
	b := write("b.json", "pod", []float64{2, 3}, []float64{1.8, 2.7})
	var out strings.Builder
	if err := cmdReport(&out, []string{a, b}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| meshd | 0.900 (0.900-0.900, 4 pairs) |") {
		t.Errorf("no pooled interval over 4 pairs in:\n%s", out.String())
	}
	host := write("c.json", "host", []float64{4}, []float64{3.6})
	if err := cmdReport(&out, []string{a, host}); err == nil || !strings.Contains(err.Error(), "host") {
		t.Errorf("pooling a pod run with a host run: %v, want a refusal", err)
	}
}
