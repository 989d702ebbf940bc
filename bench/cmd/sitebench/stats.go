package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
)

// median of vs; NaN for none. Even counts average the middle two.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// spread is the min and max of vs.
func spread(vs []float64) (lo, hi float64) {
	if len(vs) == 0 {
		return math.NaN(), math.NaN()
	}
	return slices.Min(vs), slices.Max(vs)
}

// seconds converts durations for median and spread.
func seconds(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}

// fmtMedian renders "median (min-max)" with prec decimals, or "-" for
// no values; the range is left out for a single value.
func fmtMedian(vs []float64, prec int) string {
	if len(vs) == 0 {
		return "-"
	}
	m := strconv.FormatFloat(median(vs), 'f', prec, 64)
	if len(vs) == 1 {
		return m
	}
	lo, hi := spread(vs)
	return fmt.Sprintf("%s (%s-%s)", m, strconv.FormatFloat(lo, 'f', prec, 64), strconv.FormatFloat(hi, 'f', prec, 64))
}

// coresPerGbps is how many cores a process keeps busy per Gbit/s it
// carries: its CPU seconds over the run divided by the gigabits carried
// meanwhile (the run's length cancels out). NaN when nothing was carried
// or the process was gone.
func coresPerGbps(cpuSeconds float64, bytes int64) float64 {
	if bytes <= 0 || cpuSeconds < 0 {
		return math.NaN()
	}
	return cpuSeconds / (float64(bytes) * 8 / 1e9)
}
