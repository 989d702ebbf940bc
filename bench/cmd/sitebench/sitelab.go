package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/lab"
)

// segment is the one overlay segment of the benchmarks' labs.
const segment = "blue"

// siteSegment gives each site a /18 of blue, room for 63 hosts of /24
// slices per site (the lab's default, /20, holds 15).
var siteSegment = lab.SegmentSpec{Name: segment, CIDR: "10.42.0.0/16", SliceBits: 24, SiteBits: 18}

// newLab builds a lab and returns it with a close function that reports
// its own errors, so every caller tears down the same way.
func newLab(ctx context.Context, spec lab.Spec) (*lab.Lab, func(), error) {
	l, err := lab.New(ctx, spec)
	if err != nil {
		return nil, nil, err
	}
	return l, func() {
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
	}, nil
}

// startMeshd writes every host's default config and starts its meshd.
func startMeshd(bin string, hosts []*lab.Host) error {
	for _, h := range hosts {
		if _, err := h.WriteConfig(""); err != nil {
			return err
		}
		if err := h.Start(bin); err != nil {
			return err
		}
	}
	return nil
}

func status(h *lab.Host) (*control.Status, error) {
	return control.NewClient(h.ControlSocket()).Status()
}

// siteOf finds the named site in a status.
func siteOf(st *control.Status, name string) *control.Site {
	for i := range st.Sites {
		if st.Sites[i].Name == name {
			return &st.Sites[i]
		}
	}
	return nil
}

// reachesSites checks that h's meshd runs and routes every other site of
// the lab through a gateway.
func reachesSites(l *lab.Lab, h *lab.Host) error {
	if !h.Running() {
		return fmt.Errorf("%s: meshd exited: %v (log %s)", h.Name(), h.Wait(0), h.LogPath())
	}
	st, err := status(h)
	if err != nil {
		return fmt.Errorf("%s: %w", h.Name(), err)
	}
	for _, s := range l.Sites() {
		if s == h.Site() {
			continue
		}
		ss := siteOf(st, s.Name())
		switch {
		case ss == nil:
			return fmt.Errorf("%s does not know site %s yet", h.Name(), s.Name())
		case ss.Unreachable != "":
			return fmt.Errorf("%s: site %s unreachable: %s", h.Name(), s.Name(), ss.Unreachable)
		case ss.Gateway == "":
			return fmt.Errorf("%s: no gateway for site %s", h.Name(), s.Name())
		}
	}
	return nil
}

// waitSites waits until every host routes every other site.
func waitSites(ctx context.Context, l *lab.Lab, hosts []*lab.Host, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return lab.WaitFor(ctx, 500*time.Millisecond, func() error {
		for _, h := range hosts {
			if err := reachesSites(l, h); err != nil {
				return err
			}
		}
		return nil
	})
}

// siteTimes waits until every host routes every other site and returns
// when each first did, in seconds after t0, so the slowest can be named.
func siteTimes(ctx context.Context, l *lab.Lab, hosts []*lab.Host, t0 time.Time, timeout time.Duration) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := map[string]float64{}
	err := lab.WaitFor(ctx, 500*time.Millisecond, func() error {
		var last error
		for _, h := range hosts {
			if _, ok := done[h.Name()]; ok {
				continue
			}
			if err := reachesSites(l, h); err != nil {
				last = err
				continue
			}
			done[h.Name()] = time.Since(t0).Seconds()
		}
		return last
	})
	return done, err
}

// slowest names the n hosts that took longest, slowest first.
func slowest(times map[string]float64, n int) []string {
	names := make([]string, 0, len(times))
	for name := range times {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(times[b], times[a]) })
	var out []string
	for _, name := range names[:min(n, len(names))] {
		out = append(out, fmt.Sprintf("%s %.1f s", name, times[name]))
	}
	return out
}

// probe is one echo stream to be: from a namespace to an address.
type probe struct {
	from string
	to   netip.Addr
}

// waitAnswered starts a stream per probe and waits until each has had a
// reply, so every path is known to carry traffic (and has handshaken)
// before anything is measured.
func waitAnswered(ctx context.Context, probes []probe, timeout time.Duration) error {
	ss, err := startProbes(probes, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer ss.Stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return lab.WaitFor(ctx, 100*time.Millisecond, func() error {
		var silent []string
		for _, s := range ss {
			if _, ok := firstReply(s.records()); !ok {
				silent = append(silent, s.label)
			}
		}
		if len(silent) > 0 {
			return fmt.Errorf("%d of %d paths never answered, e.g. %s", len(silent), len(ss), silent[0])
		}
		return nil
	})
}

func startProbes(probes []probe, interval time.Duration) (echoStreams, error) {
	from := make([]string, len(probes))
	to := make([]netip.Addr, len(probes))
	for i, p := range probes {
		from[i], to[i] = p.from, p.to
	}
	return startEchoes(from, to, interval)
}

// keepLogs copies every host's meshd log into dir (as <lab>-<host>.log)
// before the lab, and its directory, go.
func keepLogs(l *lab.Lab, dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, h := range l.Hosts() {
		b, err := os.ReadFile(h.LogPath())
		if err != nil {
			continue // never started
		}
		errs = append(errs, os.WriteFile(filepath.Join(dir, l.Prefix()+"-"+h.Name()+".log"), b, 0o644))
	}
	return errors.Join(errs...)
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
