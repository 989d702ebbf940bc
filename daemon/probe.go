package daemon

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/mesh"
)

// A gateway that is alive in gossip but does not forward (a firewall
// reload that dropped the FORWARD chain, a wedged data path) is found by
// probes through it: a few hosts of its site (mesh.Probe says which, and
// why these addresses) ping the remote gateways at the far end of its WAN
// tunnels every probeInterval. When it keeps answering them itself but
// none of their pings cross it, they report it in their announcements,
// and the gateway drains for a while, as it does when its IP forwarding
// is off: both ends of its pairs of sites move to another gateway. After
// the ejection it carries traffic again and is probed again; one that is
// still broken is reported again and ejected for twice as long, as
// outlier ejection in a load balancer works (it cannot be probed while it
// carries nothing, so time is the only retest).
const (
	probeInterval = time.Second
	// probeWait bounds one echo; a round never overlaps the next.
	probeWait = 900 * time.Millisecond
	// probeGrace ignores a gateway's first rounds in the plan: the
	// tunnels behind it may still be handshaking.
	probeGrace = 5 * time.Second
	// stuckRounds failed rounds in a row make a report; with two or more
	// targets, at least two of them must have failed, so one remote
	// gateway going away is not blamed on this one.
	stuckRounds = 5
	// reReportEvery renews a report that had no effect: the gateway was
	// already ejected on an older report when it came, or was the site's
	// only usable one.
	reReportEvery = 10 * time.Second
	// clearRounds good rounds in a row withdraw a report.
	clearRounds = 3
	// maxProbedGateways bounds the echoes of one round.
	maxProbedGateways = 8

	ejectBase = 30 * time.Second
	ejectMax  = 5 * time.Minute
	// ejectForgetAfter resets the doubling once a gateway went this long
	// without being ejected.
	ejectForgetAfter = 10 * time.Minute
)

// gatewayProbe is what one host knows of one gateway's forwarding.
type gatewayProbe struct {
	since  time.Time // first round in the plan
	round  int
	fails  int // rounds in a row the gateway answered but forwarded nothing
	goods  int // rounds in a row a target answered through it
	failed map[netip.Addr]bool
}

// prober is the probing host's side: results per gateway and the reports
// they led to. The probe goroutine writes it, status reads it.
type prober struct {
	mu sync.Mutex
	gw map[string]*gatewayProbe
	// reports are this host's current reports, gateway -> At;
	// reportedAt is when each was last made.
	reports    map[string]uint64
	reportedAt map[string]time.Time
	made       int
}

func newProber() *prober {
	return &prober{gw: map[string]*gatewayProbe{}, reports: map[string]uint64{}, reportedAt: map[string]time.Time{}}
}

// target picks this round's remote gateway for pr, in turn.
func (p *prober) target(pr mesh.Probe, now time.Time) netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.gw[pr.Gateway]
	if g == nil {
		g = &gatewayProbe{since: now, failed: map[netip.Addr]bool{}}
		p.gw[pr.Gateway] = g
	}
	g.round++
	return pr.Targets[g.round%len(pr.Targets)]
}

// observe records one round's result for pr and reports whether this
// host's reports changed.
func (p *prober) observe(pr mesh.Probe, target netip.Addr, viaOK, targetOK bool, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.gw[pr.Gateway]
	if g == nil || now.Sub(g.since) < probeGrace {
		return false
	}
	name := pr.Gateway
	switch {
	case targetOK:
		g.fails, g.goods = 0, g.goods+1
		clear(g.failed)
		if _, reported := p.reports[name]; reported && g.goods >= clearRounds {
			delete(p.reports, name)
			delete(p.reportedAt, name)
			return true
		}
	case viaOK:
		g.goods, g.fails = 0, g.fails+1
		g.failed[target] = true
		if g.fails < stuckRounds || len(g.failed) < min(2, len(pr.Targets)) {
			return false
		}
		if at, reported := p.reports[name]; reported && now.Sub(p.reportedAt[name]) < reReportEvery {
			return false
		} else {
			p.reports[name] = max(at+1, uint64(now.Unix()))
		}
		p.reportedAt[name] = now
		p.made++
		return true
	default:
		// The gateway itself does not answer: the tunnel to it is down,
		// which gossip and the handshakes show; it says nothing of its
		// forwarding.
		g.goods = 0
	}
	return false
}

// retain forgets the results of gateways no longer probed (draining, or
// no longer assigned a pair), and the reports of gateways that left the
// site. Reports of a draining gateway stay: it may come back still
// broken.
func (p *prober) retain(plan []mesh.Probe, siteMembers map[string]bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name := range p.gw {
		if !slices.ContainsFunc(plan, func(pr mesh.Probe) bool { return pr.Gateway == name }) {
			delete(p.gw, name)
		}
	}
	changed := false
	for name := range p.reports {
		if !siteMembers[name] {
			delete(p.reports, name)
			delete(p.reportedAt, name)
			changed = true
		}
	}
	return changed
}

func (p *prober) current() []mesh.Report {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]mesh.Report, 0, len(p.reports))
	for _, name := range slices.Sorted(maps.Keys(p.reports)) {
		out = append(out, mesh.Report{Gateway: name, At: p.reports[name]})
	}
	return out
}

// probeLoop runs the probe rounds until ctx ends, on a host that has
// something to probe.
func (d *Daemon) probeLoop(ctx context.Context) {
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		d.probeRound(ctx)
	}
}

func (d *Daemon) probeRound(ctx context.Context) {
	d.mu.Lock()
	st := d.state
	d.mu.Unlock()
	if st == nil {
		return
	}
	members := map[string]bool{}
	for _, p := range st.Peers {
		if !p.WAN {
			members[p.Name] = true
		}
	}
	changed := d.prober.retain(st.Probes, members)
	src := MeshAddr(d.ann.local())
	plan := st.Probes[:min(len(st.Probes), maxProbedGateways)]
	if src.IsValid() && len(plan) > 0 {
		type result struct {
			target          netip.Addr
			viaOK, targetOK bool
		}
		now := time.Now()
		results := make([]result, len(plan))
		var wg sync.WaitGroup
		for i, pr := range plan {
			results[i].target = d.prober.target(pr, now)
			wg.Add(2)
			go func() {
				defer wg.Done()
				results[i].viaOK = d.echo(ctx, src, pr.Via) == nil
			}()
			go func() {
				defer wg.Done()
				results[i].targetOK = d.echo(ctx, src, results[i].target) == nil
			}()
		}
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
		now = time.Now()
		for i, pr := range plan {
			r := results[i]
			if d.prober.observe(pr, r.target, r.viaOK, r.targetOK, now) {
				changed = true
				if _, reported := d.prober.reportsOf(pr.Gateway); reported {
					d.log.Warn("gateway answers but forwards none of the probes through it; reporting it so that it drains",
						"gateway", pr.Gateway, "remote_gateways", len(pr.Targets))
				} else {
					d.log.Info("gateway forwards again; report withdrawn", "gateway", pr.Gateway)
				}
			}
		}
	}
	if changed && d.ann.setReports(d.prober.current()) {
		d.Kick()
	}
}

// status describes the gateways in plan, and counts the reports made.
func (p *prober) status(plan []mesh.Probe) ([]control.GatewayProbe, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []control.GatewayProbe
	for _, pr := range plan {
		gp := control.GatewayProbe{Gateway: pr.Gateway, Targets: len(pr.Targets)}
		if g := p.gw[pr.Gateway]; g != nil {
			gp.Failing = g.fails
		}
		_, gp.Reported = p.reports[pr.Gateway]
		out = append(out, gp)
	}
	return out, p.made
}

func (p *prober) reportsOf(gateway string) (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.reports[gateway]
	return at, ok
}

func (d *Daemon) echo(ctx context.Context, src, dst netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	return d.sys.Echo(ctx, src, dst)
}

// ejector is the reported gateway's side: it drains on a new report,
// unless draining would leave its site without a gateway. Owned by the
// loop; status reads it under mu.
type ejector struct {
	mu sync.Mutex
	// seen is the newest report time taken into account per reporter. A
	// report made before this process started counts once: a restart may
	// have fixed the problem, and then the gateway is back, probed and
	// cleared after one ejection.
	seen     map[string]uint64
	until    time.Time
	by       string
	count    int // ejections in a row, for the doubling
	lastEnd  time.Time
	total    int
	declined string // why the last report was not acted on, for the log
}

func newEjector() *ejector { return &ejector{seen: map[string]uint64{}} }

// update takes the reports naming this gateway and whether another
// gateway of the site could take its traffic, and reports whether the
// ejection started.
func (e *ejector) update(reports []mesh.GatewayReport, canMove bool, now time.Time) (started bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range reports {
		if r.At <= e.seen[r.Reporter] {
			continue
		}
		e.seen[r.Reporter] = r.At
		switch {
		case now.Before(e.until):
		case !canMove:
			e.declined = r.Reporter
		default:
			if !e.lastEnd.IsZero() && now.Sub(e.lastEnd) > ejectForgetAfter {
				e.count = 0
			}
			e.until = now.Add(min(ejectBase<<e.count, ejectMax))
			e.by, e.count, e.lastEnd = r.Reporter, e.count+1, e.until
			e.total++
			started = true
		}
	}
	return started
}

// ejected reports whether this gateway drains on a report now, and who
// made it.
func (e *ejector) ejected(now time.Time) (bool, string, time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return now.Before(e.until), e.by, e.until
}

// takeDeclined returns the reporter of a report not acted on since the
// last call, for the log.
func (e *ejector) takeDeclined() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.declined
	e.declined = ""
	return r
}

func (e *ejector) ejections() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.total
}

// otherGateway reports whether the site has a usable gateway besides
// this host.
func otherGateway(st *mesh.State, me string) bool {
	return slices.ContainsFunc(st.Gateways, func(g string) bool { return g != me })
}

// drainReason says why this gateway drains, for status and the log.
func (d *Daemon) drainReason(now time.Time) string {
	var why []string
	if !d.forwarding {
		why = append(why, "IP forwarding is off")
	}
	if ej, by, until := d.ejector.ejected(now); ej {
		why = append(why, "probes by "+by+" found no forwarding through it; back in "+until.Sub(now).Round(time.Second).String())
	}
	return strings.Join(why, "; ")
}
