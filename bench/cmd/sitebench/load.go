package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshd/meshd/lab"
)

// otherLoad samples the CPU time of user processes that are not part of
// the benchmark (not in one of its namespaces, not sitebench itself): on a
// shared machine, other people's builds and benchmarks. A process living
// shorter than one sampling interval is missed, so it is a lower bound.
type otherLoad struct {
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

// benchNetns returns the inodes of every namespace of the given lab
// prefixes, so their processes (meshd, iperf3, wireguard-go) count as the
// benchmark's own.
func benchNetns(prefixes ...string) map[uint64]bool {
	m := map[uint64]bool{}
	for _, p := range prefixes {
		names, _ := lab.ListNetns(p)
		for _, n := range names {
			var st syscall.Stat_t
			if syscall.Stat(filepath.Join("/run/netns", n), &st) == nil {
				m[st.Ino] = true
			}
		}
	}
	return m
}

func startOtherLoad(mine map[uint64]bool, interval time.Duration) *otherLoad {
	o := &otherLoad{mine: mine, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
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
func (o *otherLoad) merge(now map[procKey]time.Duration) {
	next := make(map[procKey]time.Duration, len(o.last)+len(now))
	for k, v := range o.last {
		next[k] = v
	}
	for k, v := range now {
		next[k] = v
	}
	o.last = next
}

// read stops sampling and returns the others' CPU % (100 = one core).
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
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 20 {
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
		cpu, err := parseStatCPU(b)
		if err != nil {
			continue
		}
		start, _ := strconv.ParseUint(f[19], 10, 64)
		out[procKey{pid, start}] = cpu
	}
	return out
}

// waitQuiet samples other processes' CPU in one-second windows until it is
// below threshold or maxWait passes, and returns the last sample.
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
