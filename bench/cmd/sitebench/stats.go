package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
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

// clkTck is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clkTck = 100

// parseStatCPU reads utime+stime (fields 14 and 15) from the contents of
// /proc/<pid>/stat. The command name in field 2 is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the
// last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat: no ')'")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so utime (14) is f[11] and stime (15) f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat: %d fields after the name", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("malformed /proc stat times: %w", err)
	}
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// procCPU is a process's user+system time so far.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

// parseMachineCPU reads busy and total jiffies from the first line of
// /proc/stat ("cpu user nice system idle iowait irq softirq steal guest
// guest_nice"). guest and guest_nice are already counted in user and nice,
// so they are skipped; idle and iowait are not busy, everything else
// (steal too: the vCPU was not free) is.
func parseMachineCPU(b []byte) (busy, total uint64, err error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("malformed /proc/stat first line %q", line)
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("malformed /proc/stat value %q: %w", s, err)
		}
		if i == 8 || i == 9 {
			continue
		}
		total += v
		if i != 3 && i != 4 {
			busy += v
		}
	}
	return busy, total, nil
}

func machineCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	busy, total, _ = parseMachineCPU(b)
	return busy, total
}

// cpuMeter measures the CPU time of some processes and the machine's busy
// share over an interval.
type cpuMeter struct {
	pids      []int
	start     time.Time
	procStart []time.Duration
	busy, tot uint64
}

func newCPUMeter(pids ...int) *cpuMeter {
	m := &cpuMeter{pids: pids, start: time.Now()}
	for _, p := range pids {
		c, _ := procCPU(p)
		m.procStart = append(m.procStart, c)
	}
	m.busy, m.tot = machineCPU()
	return m
}

// read returns each process's CPU time since newCPUMeter (-1 s for one
// that is gone), the elapsed time, and the machine's busy % (100 = every
// core busy).
func (m *cpuMeter) read() (procs []time.Duration, elapsed time.Duration, machine float64) {
	elapsed = time.Since(m.start)
	for i, p := range m.pids {
		c, err := procCPU(p)
		if err != nil {
			procs = append(procs, -time.Second)
			continue
		}
		procs = append(procs, c-m.procStart[i])
	}
	b, t := machineCPU()
	if t > m.tot {
		machine = 100 * float64(b-m.busy) / float64(t-m.tot)
	}
	return procs, elapsed, machine
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
