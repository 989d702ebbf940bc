package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/meshd/meshd/bench/internal/procstat"
	"github.com/meshd/meshd/lab"
)

// join starts newcomer h in site b and measures when its pod answers
// every probe from site a: each host's pod, and (unless -pods-only) each
// host itself. Afterwards h leaves again (SIGTERM), so every repetition
// measures a host new to the cluster at the same size.
func (cl *convergeLab) join(ctx context.Context, f cvFlags, wg *wgctrl.Client, h *lab.Host) (res joinResult) {
	res.Host = h.Name()
	var probes []probe
	for _, a := range cl.a.Hosts() {
		probes = append(probes, probe{a.PodNS(segment), h.PodAddr(segment)})
		if !f.noHostProbes {
			probes = append(probes, probe{a.NS(), h.PodAddr(segment)})
		}
	}
	res.Probes = len(probes)
	before := cl.devicePeers(wg, cl.a.Hosts())
	// Streams first: until h exists nothing answers them, so their first
	// replies time the join, at the streams' interval.
	ss, err := startProbes(probes, f.joinEvery)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer ss.Stop()
	others := procstat.StartOtherLoad(benchNetns(prefixConverge), 500*time.Millisecond)
	t0 := time.Now()
	if err := cl.startHost(h); err != nil {
		res.Err = err.Error()
		return res
	}
	err = waitReachable(ctx, ss, h, t0, &res)
	res.Other = others.Read()
	if err != nil {
		res.Err = err.Error()
	}
	res.SiteAUnchanged = cl.devicePeers(wg, cl.a.Hosts()) == before
	ss.Stop()
	if err := cl.leave(ctx, h); err != nil && res.Err == "" {
		res.Err = err.Error()
	}
	return res
}

// startHost writes h's default config and starts its meshd.
func (cl *convergeLab) startHost(h *lab.Host) error {
	if _, err := h.WriteConfig(""); err != nil {
		return err
	}
	return h.Start(cl.bin)
}

// waitReachable polls h's control socket (for Up) and the streams (for
// their first replies) until every stream has answered, at most 60 s.
func waitReachable(ctx context.Context, ss echoStreams, h *lab.Host, t0 time.Time, res *joinResult) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return lab.WaitFor(ctx, 50*time.Millisecond, func() error {
		if res.Up == 0 {
			if _, err := status(h); err == nil {
				res.Up = time.Since(t0).Seconds()
			}
		}
		if !h.Running() {
			return fmt.Errorf("%s: meshd exited: %v", h.Name(), h.Wait(0))
		}
		var firsts []float64
		for _, s := range ss {
			first, ok := firstReply(s.records())
			if !ok {
				return fmt.Errorf("%s has no reply yet", s.label)
			}
			firsts = append(firsts, first.Sub(t0).Seconds())
		}
		res.Median, res.All = median(firsts), slices.Max(firsts)
		return nil
	})
}

// leave stops h (SIGTERM) and waits until its site's gateways no longer
// have it as an alive member, so the next measurement starts settled.
func (cl *convergeLab) leave(ctx context.Context, h *lab.Host) error {
	if err := h.Stop(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return lab.WaitFor(ctx, 200*time.Millisecond, func() error {
		for _, g := range h.Site().Gateways() {
			st, err := status(g)
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if p.Name == h.Name() && p.State == "alive" {
					return fmt.Errorf("%s still has %s alive", g.Name(), h.Name())
				}
			}
		}
		return nil
	})
}

// devicePeers renders the peers of the hosts' WireGuard devices, to tell
// whether any changed.
func (cl *convergeLab) devicePeers(wg *wgctrl.Client, hosts []*lab.Host) string {
	var b strings.Builder
	for _, h := range hosts {
		d, err := wg.Device(h.Interface())
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", h.Name(), err)
			continue
		}
		var keys []string
		for _, p := range d.Peers {
			keys = append(keys, p.PublicKey.String())
		}
		slices.Sort(keys)
		fmt.Fprintf(&b, "%s: %s\n", h.Name(), strings.Join(keys, " "))
	}
	return b.String()
}

// failover SIGKILLs the gateway of site a that serves the pair (a, b)
// while every plain host of a pings one of b and the other way round,
// measures when the streams flow again, then restarts the gateway and
// measures the silence while the pair settles again. Gateways that
// drained meanwhile (meshd's gateway probes) are recorded.
func (cl *convergeLab) failover(ctx context.Context, f cvFlags) (res failResult) {
	waited, err := cl.settle(ctx, 6*time.Minute)
	res.SettleWait = waited.Seconds()
	if err != nil {
		res.Err = "before: " + err.Error()
		return res
	}
	watcher := cl.plainHosts(cl.a)[0]
	ss, victim, err := cl.steadyPair(ctx, f, watcher, &res)
	if err != nil {
		res.Err = "before the kill: " + err.Error()
		return res
	}
	defer ss.Stop()
	others := procstat.StartOtherLoad(benchNetns(prefixConverge), 500*time.Millisecond)
	drains := cl.watchDrains()
	defer func() {
		res.Other = others.Read()
		res.Drained = drains.stop()
	}()
	kill := time.Now()
	if err := victim.Kill(); err != nil {
		res.Err = err.Error()
		return res
	}
	if err := waitBack(ctx, ss, kill, 60*time.Second); err != nil {
		res.Err = "after the kill: " + err.Error()
	}
	measureOutage(ss, kill, &res)
	if g, _, err := cl.serving(watcher); err == nil {
		res.NewGateway = g.Name()
	}
	if res.Err != "" {
		_ = cl.startHost(victim)
		return res
	}
	if err := cl.failback(ctx, ss, watcher, victim, &res); err != nil {
		res.Err = "failback: " + err.Error()
	}
	return res
}

// steadyPair starts the streams and waits until they flow without loss,
// then checks that the gateway serving (a, b) is still the one it was
// when they started: a pair that moved meanwhile (a drain, a failback)
// would make the kill measure nothing, so it starts over, at most three
// times.
func (cl *convergeLab) steadyPair(ctx context.Context, f cvFlags, watcher *lab.Host, res *failResult) (echoStreams, *lab.Host, error) {
	var last error
	for try := 0; try < 3; try++ {
		victim, remote, err := cl.serving(watcher)
		if err != nil {
			return nil, nil, err
		}
		ss, err := startProbes(cl.pairProbes(), f.failEvery)
		if err != nil {
			return nil, nil, err
		}
		if last = waitSteady(ctx, ss, 2*time.Second, 30*time.Second); last == nil {
			now, nowRemote, err := cl.serving(watcher)
			if err == nil && now == victim && nowRemote == remote {
				res.Victim, res.Remote = victim.Name(), remote
				return ss, victim, nil
			}
			last = fmt.Errorf("the pair moved from %s-%s while the streams started", victim.Name(), remote)
		}
		ss.Stop()
		fmt.Fprintf(os.Stderr, "  %v; again\n", last)
	}
	return nil, nil, last
}

// settle waits until no gateway of the lab drains, so one repetition's
// aftermath (a gateway the probes drained for 30 s or more) does not
// decide the next one's path. It returns how long it waited.
func (cl *convergeLab) settle(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := lab.WaitFor(ctx, time.Second, func() error {
		for _, s := range cl.l.Sites() {
			for _, g := range s.Gateways() {
				st, err := status(g)
				if err != nil {
					return fmt.Errorf("%s: %w", g.Name(), err)
				}
				if st.Node.Draining {
					return fmt.Errorf("%s drains: %s", g.Name(), st.Node.DrainReason)
				}
			}
		}
		return nil
	})
	return time.Since(t0), err
}

// drainWatch polls every gateway's status and notes each that drains,
// with the reason it gives.
type drainWatch struct {
	stopc chan struct{}
	done  chan struct{}
	seen  []string
}

func (cl *convergeLab) watchDrains() *drainWatch {
	w := &drainWatch{stopc: make(chan struct{}), done: make(chan struct{})}
	noted := map[string]bool{}
	go func() {
		defer close(w.done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			for _, s := range cl.l.Sites() {
				for _, g := range s.Gateways() {
					st, err := status(g)
					if err != nil || !st.Node.Draining || noted[g.Name()] {
						continue
					}
					noted[g.Name()] = true
					w.seen = append(w.seen, fmt.Sprintf("%s (site %s): %s", g.Name(), s.Name(), st.Node.DrainReason))
				}
			}
			select {
			case <-w.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

func (w *drainWatch) stop() []string {
	close(w.stopc)
	<-w.done
	return w.seen
}

// serving is the gateway of site a that watcher routes site b through,
// and the gateway of b at the far end.
func (cl *convergeLab) serving(watcher *lab.Host) (*lab.Host, string, error) {
	st, err := status(watcher)
	if err != nil {
		return nil, "", err
	}
	b := siteOf(st, "b")
	if b == nil || b.Gateway == "" {
		return nil, "", fmt.Errorf("%s has no gateway for site b: %+v", watcher.Name(), b)
	}
	for _, g := range cl.a.Gateways() {
		if g.Name() == b.Gateway {
			return g, b.Remote, nil
		}
	}
	return nil, "", fmt.Errorf("%s routes site b through %s, not a gateway of site a", watcher.Name(), b.Gateway)
}

// pairProbes: every plain host of a pings a plain host of b, and every
// plain host of b one of a, rotating.
func (cl *convergeLab) pairProbes() []probe {
	as, bs := cl.plainHosts(cl.a), cl.plainHosts(cl.b)
	var probes []probe
	for i, h := range as {
		probes = append(probes, probe{h.PodNS(segment), bs[i%len(bs)].PodAddr(segment)})
	}
	for i, h := range bs {
		probes = append(probes, probe{h.PodNS(segment), as[i%len(as)].PodAddr(segment)})
	}
	return probes
}

// waitSteady waits until every stream answered every request of the last
// window.
func waitSteady(ctx context.Context, ss echoStreams, window, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return lab.WaitFor(ctx, 100*time.Millisecond, func() error {
		if ok, which := ss.allSteady(window, time.Second); !ok {
			return fmt.Errorf("%s lost requests in the last %s", which, window)
		}
		return nil
	})
}

// waitBack waits until every stream had a reply to a request sent after t.
func waitBack(ctx context.Context, ss echoStreams, t time.Time, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return lab.WaitFor(ctx, 100*time.Millisecond, func() error {
		for _, s := range ss {
			if _, ok := firstReplySentAfter(s.records(), t); !ok {
				return fmt.Errorf("%s not back yet", s.label)
			}
		}
		return nil
	})
}

// measureOutage fills the back and gap figures from the streams' records.
func measureOutage(ss echoStreams, kill time.Time, res *failResult) {
	var backs, gaps []float64
	for _, s := range ss {
		recs := s.records()
		res.Lost += lostBetween(recs, kill, time.Now())
		if back, gap, ok := outage(recs, kill); ok {
			backs, gaps = append(backs, back.Seconds()), append(gaps, gap.Seconds())
		}
	}
	res.Streams = len(ss)
	if len(backs) > 0 {
		res.BackMedian, res.BackMax = median(backs), slices.Max(backs)
		res.GapMedian, res.GapMax = median(gaps), slices.Max(gaps)
	}
}

// failback restarts the killed gateway and waits until watcher routes
// site b through it again (rendezvous hashing gives the pair back to it)
// or 60 s pass, then until every stream is steady for 2 s; the longest
// silence of each stream since the restart is the failback's cost.
func (cl *convergeLab) failback(ctx context.Context, ss echoStreams, watcher, victim *lab.Host, res *failResult) error {
	restart := time.Now()
	if err := cl.startHost(victim); err != nil {
		return err
	}
	back, cancel := context.WithTimeout(ctx, 60*time.Second)
	err := lab.WaitFor(back, 200*time.Millisecond, func() error {
		g, _, err := cl.serving(watcher)
		if err != nil {
			return err
		}
		if g != victim {
			return fmt.Errorf("site b still through %s", g.Name())
		}
		return nil
	})
	cancel()
	res.MovedBack = err == nil
	if err := waitSteady(ctx, ss, 2*time.Second, 60*time.Second); err != nil {
		return err
	}
	end := time.Now()
	var silences []float64
	for _, s := range ss {
		silences = append(silences, longestSilence(s.records(), restart, end).Seconds())
	}
	res.FailbackMedian, res.FailbackMax = median(silences), slices.Max(silences)
	// Everyone routes everything again before the next measurement.
	if err := waitSites(ctx, cl.l, cl.steadyHost, 60*time.Second); err != nil {
		fmt.Fprintf(os.Stderr, "  after the failback: %v\n", err)
		return err
	}
	return nil
}
