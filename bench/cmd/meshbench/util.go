package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/lab"
)

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

// cpuPercents turns CPU times over elapsed into CPU % (100 = one core),
// -1 for a process that was gone.
func cpuPercents(times []time.Duration, elapsed time.Duration) []float64 {
	out := make([]float64, len(times))
	for i, d := range times {
		if d < 0 || elapsed <= 0 {
			out[i] = -1
			continue
		}
		out[i] = 100 * float64(d) / float64(elapsed)
	}
	return out
}
