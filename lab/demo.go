package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	demoHosts         = 3
	demoConnectWithin = 60 * time.Second
	demoStatusTimeout = 10 * time.Second
	demoPingParallel  = 16
	demoLogTail       = 20
)

// DemoSegments are the overlay segments RunDemo builds.
var DemoSegments = []SegmentSpec{
	{Name: "blue", CIDR: "10.42.0.0/16", SliceBits: 24},
	{Name: "green", CIDR: "10.43.0.0/16", SliceBits: 24},
}

// podPair is one directed pod-to-pod path of a segment.
type podPair struct {
	segment  string
	from, to *Host
}

// RunDemo brings up a lab of hosts (default 3) running meshdBin, waits
// until every pod reaches every other pod of its segment, shows the result
// and meshd's status, stops meshd and removes everything again, also when
// ctx is cancelled or the user presses Ctrl-C. It fails if connectivity was
// not reached, meshd did not stop cleanly, or cleanup found leftovers.
func RunDemo(ctx context.Context, out io.Writer, meshdBin string, hosts int) (err error) {
	if hosts <= 0 {
		hosts = demoHosts
	}
	if err := demoPreflight(); err != nil {
		return err
	}
	bin, err := resolveBin(meshdBin)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Fprintf(out, "creating %d namespace hosts with segments %s\n", hosts, describeSegments())
	l, err := New(ctx, Spec{Hosts: hosts, Segments: DemoSegments})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeAndVerify(l, out)) }()
	fmt.Fprintf(out, "lab %s in %s (switch netns %s)\n", l.Prefix(), l.Dir(), l.SwitchNS())

	if err := startAll(l, out, bin); err != nil {
		return err
	}
	start := time.Now()
	ok, err := waitConnected(ctx, out, l, start)
	if err == nil {
		printMatrix(out, l, ok)
		if missing := countMissing(ok); missing > 0 {
			err = fmt.Errorf("demo: %d pod pairs still unreachable after %s", missing, demoConnectWithin)
			printLogTails(out, l)
		} else {
			fmt.Fprintf(out, "full connectivity after %.1fs\n", time.Since(start).Seconds())
			printStatus(ctx, out, l, bin)
		}
	}
	// Even when interrupted, stop meshd gracefully: that is part of what
	// the demo shows, and Close would otherwise have to SIGKILL it.
	return errors.Join(err, stopAll(out, l))
}

// demoPreflight turns the usual first-run problems into one clear message
// instead of an "ip netns add" failure.
func demoPreflight() error {
	if os.Geteuid() != 0 {
		return errors.New("demo: needs root to create network namespaces (try sudo)")
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("demo: %s not found (install iproute2 and iputils-ping): %w", tool, err)
		}
	}
	return nil
}

// resolveBin makes the binary path absolute: it is executed by
// "ip netns exec", and the demo may be started from anywhere.
func resolveBin(bin string) (string, error) {
	if bin == "" {
		return os.Executable()
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("demo: meshd binary: %w", err)
	}
	return filepath.Abs(p)
}

func describeSegments() string {
	var s []string
	for _, seg := range DemoSegments {
		s = append(s, seg.Name+" "+seg.CIDR)
	}
	return strings.Join(s, ", ")
}

func startAll(l *Lab, out io.Writer, bin string) error {
	for _, h := range l.Hosts() {
		if _, err := h.WriteConfig(""); err != nil {
			return err
		}
		if err := h.Start(bin); err != nil {
			return err
		}
		fmt.Fprintf(out, "  %s: meshd started (netns %s, underlay %s, wg %s, log %s)\n",
			h.Name(), h.NS(), h.UnderlayAddr(), h.Interface(), h.LogPath())
	}
	return nil
}

func demoPairs(l *Lab) []podPair {
	var pairs []podPair
	for _, seg := range DemoSegments {
		for _, from := range l.Hosts() {
			for _, to := range l.Hosts() {
				if from != to {
					pairs = append(pairs, podPair{seg.Name, from, to})
				}
			}
		}
	}
	return pairs
}

// waitConnected pings all pairs each round until all answer in the same
// round, the deadline passes (not an error: the caller reports it with the
// matrix), a meshd dies, or ctx ends.
func waitConnected(ctx context.Context, out io.Writer, l *Lab, start time.Time) (map[podPair]bool, error) {
	pairs := demoPairs(l)
	ctx, cancel := context.WithDeadline(ctx, start.Add(demoConnectWithin))
	defer cancel()
	last := -1
	for {
		ok := pingPairs(ctx, pairs)
		if n := len(pairs) - countMissing(ok); n != last {
			fmt.Fprintf(out, "  [%5.1fs] %d/%d pod pairs reachable\n", time.Since(start).Seconds(), n, len(pairs))
			last = n
		}
		if countMissing(ok) == 0 {
			return ok, nil
		}
		for _, h := range l.Hosts() {
			if !h.Running() {
				printLogTails(out, l)
				return nil, fmt.Errorf("demo: meshd on %s exited: %v", h.Name(), h.Wait(0))
			}
		}
		select {
		case <-ctx.Done():
			if time.Since(start) >= demoConnectWithin {
				return ok, nil
			}
			return nil, fmt.Errorf("demo interrupted: %w", ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func pingPairs(ctx context.Context, pairs []podPair) map[podPair]bool {
	ok := make(map[podPair]bool, len(pairs))
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, demoPingParallel)
	for _, p := range pairs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := Ping(ctx, p.from.PodNS(p.segment), p.to.PodAddr(p.segment), 1, time.Second)
			mu.Lock()
			ok[p] = err == nil
			mu.Unlock()
		}()
	}
	wg.Wait()
	return ok
}

func countMissing(ok map[podPair]bool) int {
	n := 0
	for _, v := range ok {
		if !v {
			n++
		}
	}
	return n
}

func printMatrix(out io.Writer, l *Lab, ok map[podPair]bool) {
	for _, seg := range DemoSegments {
		fmt.Fprintf(out, "segment %s (%s), pod to pod:\n", seg.Name, seg.CIDR)
		fmt.Fprintf(out, "  %-6s", "")
		for _, to := range l.Hosts() {
			fmt.Fprintf(out, "%5s", to.Name())
		}
		fmt.Fprintln(out)
		for _, from := range l.Hosts() {
			fmt.Fprintf(out, "  %-6s", from.Name())
			for _, to := range l.Hosts() {
				cell := "-"
				if from != to {
					cell = "FAIL"
					if ok[podPair{seg.Name, from, to}] {
						cell = "ok"
					}
				}
				fmt.Fprintf(out, "%5s", cell)
			}
			fmt.Fprintln(out)
		}
	}
}

func printStatus(ctx context.Context, out io.Writer, l *Lab, bin string) {
	h := l.Host(1)
	ctx, cancel := context.WithTimeout(ctx, demoStatusTimeout)
	defer cancel()
	fmt.Fprintf(out, "$ meshd status --config %s   (in %s)\n", h.ConfigPath(), h.NS())
	res, err := Exec(ctx, h.NS(), bin, "status", "--config", h.ConfigPath())
	if err != nil {
		fmt.Fprintf(out, "status failed: %v\n", err)
		return
	}
	fmt.Fprint(out, res)
}

func printLogTails(out io.Writer, l *Lab) {
	for _, h := range l.Hosts() {
		lines := strings.Split(strings.TrimRight(h.Log(), "\n"), "\n")
		if len(lines) > demoLogTail {
			lines = lines[len(lines)-demoLogTail:]
		}
		fmt.Fprintf(out, "--- last lines of %s ---\n%s\n", h.LogPath(), strings.Join(lines, "\n"))
	}
}

// stopAll stops meshd everywhere at once, then checks each WireGuard
// interface is gone: meshd must clean up after itself on SIGTERM.
func stopAll(out io.Writer, l *Lab) error {
	fmt.Fprintln(out, "stopping meshd (SIGTERM)")
	errs := make([]error, len(l.Hosts()))
	var wg sync.WaitGroup
	for i, h := range l.Hosts() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.Stop()
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), demoStatusTimeout)
	defer cancel()
	for _, h := range l.Hosts() {
		if _, err := run(ctx, "ip", "-n", h.NS(), "link", "show", "dev", h.Interface()); err == nil {
			errs = append(errs, fmt.Errorf("demo: %s: interface %s still exists after meshd stopped", h.Name(), h.Interface()))
		}
	}
	return errors.Join(errs...)
}

// closeAndVerify tears the lab down and checks that nothing of it remains.
func closeAndVerify(l *Lab, out io.Writer) error {
	fmt.Fprintln(out, "cleaning up")
	errs := []error{l.Close()}
	left, err := ListNetns(l.Prefix())
	errs = append(errs, err)
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("demo: namespaces left behind: %v", left))
	}
	for _, h := range l.Hosts() {
		if _, err := os.Stat(h.UAPISocket()); err == nil {
			errs = append(errs, fmt.Errorf("demo: socket %s left behind", h.UAPISocket()))
		}
	}
	if _, err := os.Stat(l.Dir()); err == nil {
		errs = append(errs, fmt.Errorf("demo: directory %s left behind", l.Dir()))
	}
	err = errors.Join(errs...)
	if err == nil {
		fmt.Fprintln(out, "done: no namespaces, sockets or files left")
	}
	return err
}
