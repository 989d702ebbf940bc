// Package procstat measures CPU from /proc for the benchmarks: a
// process's CPU time, the machine's busy share, and the CPU other
// processes on a shared machine take meanwhile.
package procstat

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// clkTck is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clkTck = 100

// ParseStatCPU reads utime+stime (fields 14 and 15) from the contents of
// /proc/<pid>/stat. The command name in field 2 is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the
// last ')'.
func ParseStatCPU(b []byte) (time.Duration, error) {
	f, err := statFields(b)
	if err != nil {
		return 0, err
	}
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

func statFields(b []byte) ([]string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed /proc stat: no ')'")
	}
	return strings.Fields(string(b[i+1:])), nil
}

// ProcCPU is a process's user+system time so far.
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return ParseStatCPU(b)
}

// ProcRSS returns a process's VmRSS in KiB.
func ProcRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			if fs := strings.Fields(v); len(fs) > 0 {
				return strconv.ParseInt(fs[0], 10, 64)
			}
		}
	}
	return 0, errors.New("no VmRSS")
}

// ParseMachineCPU reads busy and total jiffies from the first line of
// /proc/stat ("cpu user nice system idle iowait irq softirq steal guest
// guest_nice"). guest and guest_nice are already counted in user and nice,
// so they are skipped; idle and iowait are not busy, everything else
// (steal too: the vCPU was not free) is.
func ParseMachineCPU(b []byte) (busy, total uint64, err error) {
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

// MachineCPU returns the machine's busy and total jiffies so far.
func MachineCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	busy, total, _ = ParseMachineCPU(b)
	return busy, total
}

// Meter measures the CPU time of some processes and the machine's busy
// share over an interval.
type Meter struct {
	pids      []int
	start     time.Time
	procStart []time.Duration
	busy, tot uint64
}

// NewMeter starts measuring pids and the machine.
func NewMeter(pids ...int) *Meter {
	m := &Meter{pids: pids, start: time.Now()}
	for _, p := range pids {
		c, _ := ProcCPU(p)
		m.procStart = append(m.procStart, c)
	}
	m.busy, m.tot = MachineCPU()
	return m
}

// Read returns each process's CPU time since NewMeter (-1 s for one that
// is gone), the elapsed time, and the machine's busy % (100 = every core
// busy).
func (m *Meter) Read() (procs []time.Duration, elapsed time.Duration, machine float64) {
	elapsed = time.Since(m.start)
	for i, p := range m.pids {
		c, err := ProcCPU(p)
		if err != nil {
			procs = append(procs, -time.Second)
			continue
		}
		procs = append(procs, c-m.procStart[i])
	}
	b, t := MachineCPU()
	if t > m.tot {
		machine = 100 * float64(b-m.busy) / float64(t-m.tot)
	}
	return procs, elapsed, machine
}

// NetnsInodes returns the inodes of the named network namespaces, so the
// processes in them count as the benchmark's own.
func NetnsInodes(names []string) map[uint64]bool {
	m := map[uint64]bool{}
	for _, n := range names {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/run/netns", n), &st) == nil {
			m[st.Ino] = true
		}
	}
	return m
}

// OtherLoad samples the CPU time of user processes that are not part of
// the benchmark (not in one of its namespaces, not this process): on a
// shared machine, other people's builds and benchmarks. A process living
// shorter than one sampling interval is missed, so it is a lower bound.
type OtherLoad struct {
	mine  map[uint64]bool // netns inodes of the benchmark's namespaces
	start time.Time
	base  map[procKey]time.Duration
	last  map[procKey]time.Duration
	stop  chan struct{}
	done  chan struct{}
}

// procKey tells a process from a later one that reused its pid.
type procKey struct {
	pid       int
	starttime uint64
}

// StartOtherLoad samples every interval until Read.
func StartOtherLoad(mine map[uint64]bool, interval time.Duration) *OtherLoad {
	o := &OtherLoad{mine: mine, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	o.base = o.scan()
	o.last = o.base
	go func() {
		defer close(o.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-o.stop:
				o.merge(o.scan())
				return
			case <-t.C:
				o.merge(o.scan())
			}
		}
	}()
	return o
}

// merge keeps the latest time of every process seen, also of those that
// exited since.
func (o *OtherLoad) merge(now map[procKey]time.Duration) {
	next := make(map[procKey]time.Duration, len(o.last)+len(now))
	for k, v := range o.last {
		next[k] = v
	}
	for k, v := range now {
		next[k] = v
	}
	o.last = next
}

// Read stops sampling and returns the others' CPU % (100 = one core).
func (o *OtherLoad) Read() float64 {
	close(o.stop)
	<-o.done
	var sum time.Duration
	for k, v := range o.last {
		sum += v - o.base[k] // base is 0 for processes born meanwhile
	}
	return 100 * float64(sum) / float64(time.Since(o.start))
}

func (o *OtherLoad) scan() map[procKey]time.Duration {
	out := map[procKey]time.Duration{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f, err := statFields(b)
		if err != nil || len(f) < 20 {
			continue
		}
		// Kernel threads (softirq work and the like) belong to whoever
		// caused the work, the benchmark included.
		if flags, _ := strconv.ParseUint(f[6], 10, 64); flags&0x00200000 != 0 {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) == nil && o.mine[st.Ino] {
			continue
		}
		cpu, err := ParseStatCPU(b)
		if err != nil {
			continue
		}
		start, _ := strconv.ParseUint(f[19], 10, 64)
		out[procKey{pid, start}] = cpu
	}
	return out
}

// WaitQuiet samples other processes' CPU in one-second windows until it is
// below threshold or maxWait passes, and returns the last sample.
func WaitQuiet(ctx context.Context, mine map[uint64]bool, threshold float64, maxWait time.Duration) float64 {
	deadline := time.Now().Add(maxWait)
	for {
		o := StartOtherLoad(mine, 250*time.Millisecond)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
		v := o.Read()
		if v <= threshold || time.Now().After(deadline) || ctx.Err() != nil {
			return v
		}
	}
}

// KernelRelease is the running kernel's release, for reports.
func KernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// CPUModel is the first CPU's model name, for reports.
func CPUModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// PinThreads restricts every thread of pid to cpu. Threads the process
// starts later inherit the affinity of the thread that starts them, so
// a Go program stays on cpu once all its threads are.
func PinThreads(pid, cpu int) error {
	tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	var set unix.CPUSet
	set.Set(cpu)
	for _, t := range tids {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		// A thread may exit between the listing and the call.
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pin thread %d of %d to cpu %d: %w", tid, pid, cpu, err)
		}
	}
	return nil
}
