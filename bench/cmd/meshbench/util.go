package main

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

	"github.com/meshd/meshd/lab"
)

// clkTck is USER_HZ, the unit of /proc/<pid>/stat times; 100 on every
// Linux architecture Go supports.
const clkTck = 100

// procCPU returns a process's user+system time.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// After ")": state(3) ppid ... utime is field 14, stime 15 (1-based).
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed stat times")
	}
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// procRSS returns VmRSS in KiB.
func procRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fs := strings.Fields(v)
			if len(fs) > 0 {
				return strconv.ParseInt(fs[0], 10, 64)
			}
		}
	}
	return 0, errors.New("no VmRSS")
}

// sysCPU returns busy and total jiffies of the whole machine.
func sysCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		if i == 7 || i == 8 { // guest, guest_nice are already in user
			continue
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// cpuMeter measures CPU% of some processes and of the machine over an
// interval; 100% is one core.
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
	m.busy, m.tot = sysCPU()
	return m
}

// read returns each process's CPU% and the machine's busy% (100% = all
// cores busy) since newCPUMeter.
func (m *cpuMeter) read() (procs []float64, machine float64) {
	el := time.Since(m.start)
	for i, p := range m.pids {
		c, err := procCPU(p)
		if err != nil {
			procs = append(procs, -1)
			continue
		}
		procs = append(procs, 100*float64(c-m.procStart[i])/float64(el))
	}
	b, t := sysCPU()
	if t > m.tot {
		machine = 100 * float64(b-m.busy) / float64(t-m.tot)
	}
	return procs, machine
}

// waitListening waits until something listens on port in ns.
func waitListening(ctx context.Context, ns, proto string, port int) error {
	flag := "-ltnH"
	if proto == "udp" {
		flag = "-lunH"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := lab.WaitFor(ctx, 50*time.Millisecond, func() error {
		out, err := lab.Exec(ctx, ns, "ss", flag, "sport", "=", ":"+strconv.Itoa(port))
		if err == nil && strings.TrimSpace(out) == "" {
			return errors.New("no listener")
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("nothing listens on %s/%d in %s: %w", proto, port, ns, err)
	}
	return nil
}

// waitReachable waits until e's target answers ICMP echo from e's client
// side (from e.bind, if set): the tunnel is up end to end.
func waitReachable(ctx context.Context, e endpoints, timeout time.Duration) error {
	p, err := newPinger(e.clientNS, e.bind, e.target)
	if err != nil {
		return err
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := lab.WaitFor(ctx, 100*time.Millisecond, func() error { return p.ping(ctx, 500*time.Millisecond) }); err != nil {
		return fmt.Errorf("%s cannot reach %s: %w", e.clientNS, e.target, err)
	}
	return nil
}

// waitWhile waits up to timeout for cond to return nil, trying every
// interval; before each try alive must return nil, and its error (say,
// the process that was to make cond true has exited) ends the wait at
// once.
func waitWhile(ctx context.Context, timeout, interval time.Duration, alive, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var dead error
	err := lab.WaitFor(ctx, interval, func() error {
		if dead = alive(); dead != nil {
			cancel()
			return dead
		}
		return cond()
	})
	if dead != nil {
		return dead
	}
	return err
}

// logTail returns the last n lines of a file, for error messages.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// firstErrorLine picks the most telling line of a meshd log that ended in
// an error: meshd's own last word ("meshd: ..."), else the last line
// mentioning "error", "invalid" or "unknown" at a level above debug
// (serf's debug lines carry "error" in passing), else the last line.
func firstErrorLine(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "meshd: ") {
			return strings.TrimSpace(lines[i])
		}
	}
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.ToLower(lines[i])
		if strings.Contains(l, "level=debug") {
			continue
		}
		if strings.Contains(l, "error") || strings.Contains(l, "invalid") || strings.Contains(l, "unknown") {
			return strings.TrimSpace(lines[i])
		}
	}
	if len(lines) > 0 {
		return strings.TrimSpace(lines[len(lines)-1])
	}
	return ""
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

// otherLoad samples the CPU used by user processes that are not part of
// the benchmark (not in one of its namespaces, not meshbench itself):
// other people's builds and tests on a shared machine. Processes living
// shorter than one sampling interval are missed, so it is a lower bound.
type otherLoad struct {
	mine  map[uint64]bool // netns inodes of the benchmark
	self  int
	start time.Time
	base  map[procKey]time.Duration
	last  map[procKey]time.Duration
	stop  chan struct{}
	done  chan struct{}
}

type procKey struct {
	pid       int
	starttime uint64
}

func netnsInodes(names []string) map[uint64]bool {
	m := map[uint64]bool{}
	for _, n := range names {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/run/netns", n), &st) == nil {
			m[st.Ino] = true
		}
	}
	return m
}

func startOtherLoad(mine map[uint64]bool, interval time.Duration) *otherLoad {
	o := &otherLoad{mine: mine, self: os.Getpid(), start: time.Now(), last: map[procKey]time.Duration{},
		stop: make(chan struct{}), done: make(chan struct{})}
	o.base = o.scan()
	go func() {
		defer close(o.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-o.stop:
				maps := o.scan()
				for k, v := range maps {
					o.last[k] = v
				}
				return
			case <-t.C:
				for k, v := range o.scan() {
					o.last[k] = v
				}
			}
		}
	}()
	return o
}

// read stops sampling and returns the others' CPU% (100 = one core).
func (o *otherLoad) read() float64 {
	close(o.stop)
	<-o.done
	var sum time.Duration
	for k, v := range o.last {
		sum += v - o.base[k] // base is 0 for processes born meanwhile
	}
	return 100 * float64(sum) / float64(time.Since(o.start))
}

func (o *otherLoad) scan() map[procKey]time.Duration {
	out := map[procKey]time.Duration{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == o.self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 20 {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		if flags&0x00200000 != 0 { // PF_KTHREAD: softirq work etc. belongs to whoever caused it
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) == nil && o.mine[st.Ino] {
			continue
		}
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		stt, _ := strconv.ParseUint(f[12], 10, 64)
		start, _ := strconv.ParseUint(f[19], 10, 64)
		out[procKey{pid, start}] = time.Duration(ut+stt) * time.Second / clkTck
	}
	return out
}
