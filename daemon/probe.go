package daemon

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/probe"
)

// A gateway that is alive in gossip but does not forward (a firewall
// reload that dropped the FORWARD chain, a wedged data path) is found by
// probes through it: the site's probers (mesh.Probe says who, and why
// these addresses) ping the remote gateways at the far end of its WAN
// tunnels every probeInterval, and the gateway's own mesh address. When
// pings through it keep failing while the comparison says it is the
// gateway (it answers itself, or another gateway of the site forwards),
// they report it in a signed site-pool event. A gateway that every prober
// reported drains for a while, as it does when its IP forwarding is off:
// both ends of its pairs of sites move to another gateway. After the
// ejection it carries traffic again and is probed again; one that is
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
	// reReportEvery renews a report while the gateway still carries
	// traffic and still forwards nothing: the other prober's report must
	// meet it within reportFresh, and a gateway that was the site's only
	// usable one when the first came may have company now.
	reReportEvery = 10 * time.Second
	// reportFresh is how long a gateway counts a report.
	reportFresh = 15 * time.Second
	// maxProbedGateways bounds the echoes of one round.
	maxProbedGateways = 8
	// maxInbox bounds the report events queued for the loop.
	maxInbox = 64

	ejectBase = 30 * time.Second
	ejectMax  = 5 * time.Minute
	// ejectForgetAfter resets the doubling once a gateway went this long
	// without being ejected.
	ejectForgetAfter = 10 * time.Minute
)

// gatewayProbe is what one prober knows of one gateway's forwarding.
type gatewayProbe struct {
	since      time.Time // first round in the plan, or with these targets
	targets    []netip.Addr
	round      int
	fails      int // failed rounds in a row that point at the gateway
	failed     map[netip.Addr]bool
	reportedAt time.Time
	// silent: in the last round neither the gateway nor the remote
	// gateway answered.
	silent bool
}

// prober is the probing host's side. The probe goroutine writes it,
// status reads it.
type prober struct {
	mu   sync.Mutex
	gw   map[string]*gatewayProbe
	made int
}

func newProber() *prober { return &prober{gw: map[string]*gatewayProbe{}} }

// target picks this round's remote gateway for pr, in turn.
func (p *prober) target(pr mesh.Probe, now time.Time) netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.gw[pr.Gateway]
	if g == nil {
		g = &gatewayProbe{since: now, failed: map[netip.Addr]bool{}}
		p.gw[pr.Gateway] = g
	}
	if !slices.Equal(g.targets, pr.Targets) {
		// The pairs moved, most often because a far gateway died: the
		// failures so far were the old far end's, and the new one's
		// tunnel may still be handshaking.
		g.targets = slices.Clone(pr.Targets)
		g.since, g.fails = now, 0
		clear(g.failed)
	}
	g.round++
	return pr.Targets[g.round%len(pr.Targets)]
}

// roundResult is one gateway's outcome in one round. unknown is set when
// an echo could not be sent at all: the round says nothing of the path.
type roundResult struct {
	target                   netip.Addr
	viaOK, targetOK, unknown bool
}

// observe takes a whole round, one result per gateway of plan, and
// returns the gateways to report now. A failed round counts against a
// gateway only with evidence that the gateway is at fault: it answered
// itself, or another gateway forwarded in the same round. When nothing
// works, the fault is more likely this host's or the site's uplink.
func (p *prober) observe(plan []mesh.Probe, results []roundResult, now time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var report []string
	for i, pr := range plan {
		g := p.gw[pr.Gateway]
		r := results[i]
		if g == nil {
			continue
		}
		g.silent = !r.viaOK && !r.targetOK
		if r.unknown || now.Sub(g.since) < probeGrace {
			continue
		}
		otherOK := slices.ContainsFunc(results, func(o roundResult) bool { return o.targetOK && o != r })
		switch {
		case r.targetOK:
			g.fails = 0
			clear(g.failed)
			g.reportedAt = time.Time{}
			continue
		case r.viaOK || otherOK:
			g.fails++
			g.failed[r.target] = true
		default:
			g.fails = 0
			clear(g.failed)
			continue
		}
		if g.fails < stuckRounds || len(g.failed) < min(2, len(pr.Targets)) {
			continue
		}
		// Reporting every gateway of the site at once would drain none
		// usefully: with several probed, one must still work.
		if len(plan) > 1 && !otherOK {
			continue
		}
		if now.Sub(g.reportedAt) >= reReportEvery {
			g.reportedAt = now
			p.made++
			report = append(report, pr.Gateway)
		}
	}
	return report
}

// retain forgets the results of gateways no longer probed (draining, or
// no longer assigned a pair).
func (p *prober) retain(plan []mesh.Probe) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name := range p.gw {
		if !slices.ContainsFunc(plan, func(pr mesh.Probe) bool { return pr.Gateway == name }) {
			delete(p.gw, name)
		}
	}
}

// status describes the gateways in plan, and counts the reports made.
func (p *prober) status(plan []mesh.Probe, now time.Time) ([]control.GatewayProbe, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []control.GatewayProbe
	for _, pr := range plan {
		gp := control.GatewayProbe{Gateway: pr.Gateway, Targets: len(pr.Targets)}
		if g := p.gw[pr.Gateway]; g != nil {
			gp.Failing, gp.Silent = g.fails, g.silent
			gp.Reported = !g.reportedAt.IsZero() && now.Sub(g.reportedAt) < reportFresh
		}
		out = append(out, gp)
	}
	return out, p.made
}

// probeLoop runs the probe rounds until ctx ends.
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
	d.prober.retain(st.Probes)
	local := d.ann.local()
	src := local.MeshAddr()
	if local.Gateway && src.IsValid() && d.ejector.farCheckDue() {
		d.checkFarGateways(ctx, src)
	}
	plan := st.Probes[:min(len(st.Probes), maxProbedGateways)]
	if !src.IsValid() || len(plan) == 0 {
		return
	}
	now := time.Now()
	results := make([]roundResult, len(plan))
	unknown := make([][2]bool, len(plan))
	var wg sync.WaitGroup
	for i, pr := range plan {
		results[i].target = d.prober.target(pr, now)
		wg.Add(2)
		go func() {
			defer wg.Done()
			results[i].viaOK, unknown[i][0] = d.echo(ctx, src, pr.Via)
		}()
		go func() {
			defer wg.Done()
			results[i].targetOK, unknown[i][1] = d.echo(ctx, src, results[i].target)
		}()
	}
	wg.Wait()
	for i := range results {
		results[i].unknown = unknown[i][0] || unknown[i][1]
	}
	if ctx.Err() != nil {
		return
	}
	for _, gw := range d.prober.observe(plan, results, time.Now()) {
		r := mesh.Report{Reporter: local.Name, Gateway: gw, At: uint64(time.Now().Unix())}
		if err := d.members.Broadcast(mesh.ReportEvent, r.Encode(d.ann.reportSigner())); err != nil {
			d.log.Warn("could not report a gateway that forwards nothing", "gateway", gw, "err", err)
			continue
		}
		d.log.Warn("gateway forwards none of the probes through it; reporting it to the site so that it drains", "gateway", gw)
	}
}

// checkFarGateways pings, from this gateway itself, the far gateways of
// the pairs of sites it carries, and wakes the loop with the answer.
// Every one must answer: its forwarding is at fault only if the far ends
// of all its pairs work.
func (d *Daemon) checkFarGateways(ctx context.Context, src netip.Addr) {
	far := d.ejector.farGateways(src.Is4())
	var silent atomic.Bool
	var wg sync.WaitGroup
	for _, a := range far[:min(len(far), maxProbedGateways)] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// An echo that could not be sent says nothing of the far end.
			if ok, unknown := d.echo(ctx, src, a); !ok && !unknown {
				silent.Store(true)
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	// With no far gateway to ask (none of this family), there is no
	// evidence against the gateway's own forwarding being at fault.
	d.ejector.farResult(!silent.Load(), time.Now())
	d.Kick()
}

// farGateways returns the far gateways of the family of the gateway's
// own mesh address, which it pings from.
func (e *ejector) farGateways(v4 bool) []netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []netip.Addr
	for _, a := range e.far {
		if a.Is4() == v4 {
			out = append(out, a)
		}
	}
	return out
}

// farOf lists the far gateways of the pairs me carries, sorted.
func farOf(st *mesh.State, me string) []netip.Addr {
	var far []netip.Addr
	for _, ss := range st.Sites {
		if ss.Gateway == me && ss.Unreachable == "" && ss.RemoteMesh.IsValid() && !slices.Contains(far, ss.RemoteMesh) {
			far = append(far, ss.RemoteMesh)
		}
	}
	slices.SortFunc(far, netip.Addr.Compare)
	return far
}

// echo sends one probe and reports whether it was answered, or unknown
// when it could not be sent at all (no permission for ICMP sockets, no
// route): that is logged once, and counts against no gateway.
func (d *Daemon) echo(ctx context.Context, src, dst netip.Addr) (ok, unknown bool) {
	ctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	err := d.sys.Echo(ctx, src, dst)
	if err != nil && !errors.Is(err, probe.ErrNoReply) {
		d.probeErrOnce.Do(func() {
			d.log.Warn("gateway probes cannot be sent; gateways that stop forwarding will not be found", "err", err)
		})
		return false, true
	}
	return err == nil, false
}

// onSiteEvent dispatches the site pool's user events; it runs on the
// membership's event goroutine and must not block.
func (d *Daemon) onSiteEvent(name string, payload []byte, ltime uint64) {
	switch name {
	case eventGateway:
		d.directory.receive(name, payload, ltime)
	case eventRejoin:
		if string(payload) == d.ann.local().Name {
			d.rejoinWanted.Store(true)
			d.Kick()
		}
	case mesh.ReportEvent:
		if d.inbox.add(payload) {
			d.Kick()
		}
	}
}

// inbox queues report events for the loop, which verifies them against
// the state it computes.
type inbox struct {
	mu    sync.Mutex
	items [][]byte
}

func (in *inbox) add(p []byte) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(in.items) >= maxInbox {
		return false
	}
	in.items = append(in.items, slices.Clone(p))
	return true
}

func (in *inbox) take() [][]byte {
	in.mu.Lock()
	defer in.mu.Unlock()
	items := in.items
	in.items = nil
	return items
}

// ejector is a gateway's side: the reports it accepted, and its ejection.
// Owned by the loop; status reads it under mu.
type ejector struct {
	mu sync.Mutex
	// fresh holds, per gateway of the site, when each prober's latest
	// report naming it arrived.
	fresh map[string]map[string]time.Time
	// lastAt is each reporter's newest report time about each gateway
	// (key reporter "\n" gateway): an older one is a replay.
	lastAt   map[string]uint64
	until    time.Time
	by       string
	count    int // ejections in a row, for the doubling
	lastEnd  time.Time
	total    int
	declined string // why reports were not acted on, for the log
	// farOK is when this gateway last reached a far gateway of its own
	// pairs itself, farChecked when it last tried; farWanted asks the
	// probe goroutine to try (see decide).
	farOK, farChecked time.Time
	farWanted         bool
	// far is the far gateways this gateway carries pairs to, farSince
	// when that last changed: reports from before were about other far
	// ends.
	far      []netip.Addr
	farSince time.Time
}

func newEjector() *ejector {
	return &ejector{fresh: map[string]map[string]time.Time{}, lastAt: map[string]uint64{}}
}

// reportSkew is how far a report's time may be from this host's clock:
// older ones are replays (recorded before a restart emptied lastAt),
// later ones would make every real report after them look old.
const reportSkew = 2 * time.Minute

// add takes a verified report; replays and reports dated outside
// reportSkew are dropped.
func (e *ejector) add(r mesh.Report, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := r.Reporter + "\n" + r.Gateway
	if r.At <= e.lastAt[key] || r.At > uint64(now.Add(reportSkew).Unix()) || r.At < uint64(now.Add(-reportSkew).Unix()) {
		return
	}
	e.lastAt[key] = r.At
	if e.fresh[r.Gateway] == nil {
		e.fresh[r.Gateway] = map[string]time.Time{}
	}
	e.fresh[r.Gateway][r.Reporter] = now
}

// decide drains this gateway when every prober of the site reported it
// within reportFresh and another usable gateway, reported by none, can
// take its traffic: reports that name every gateway at once (the site's
// uplink went down) drain none. It reports whether an ejection started.
func (e *ejector) decide(me string, probers, usable []string, now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for gw, by := range e.fresh {
		for r, at := range by {
			if now.Sub(at) > reportFresh {
				delete(by, r)
			}
		}
		if len(by) == 0 {
			delete(e.fresh, gw)
		}
	}
	mine := e.fresh[me]
	for r, at := range mine {
		if at.Before(e.farSince.Add(reportLatency)) {
			delete(mine, r)
		}
	}
	if now.Before(e.until) || len(probers) == 0 || len(mine) == 0 {
		return false
	}
	for _, p := range probers {
		if _, ok := mine[p]; !ok {
			return false
		}
	}
	reporters := strings.Join(slices.Sorted(maps.Keys(mine)), ", ")
	if !slices.ContainsFunc(usable, func(g string) bool { return g != me && len(e.fresh[g]) == 0 }) {
		e.declined = "reported by " + reporters + ", but no other gateway could take its traffic"
		return false
	}
	// Probers cannot tell a gateway that forwards nothing from a far
	// gateway that died: their pings to it fail through this one either
	// way until the WAN pool moves the pair. This gateway can: if it
	// reaches a far gateway itself, the far end works and its forwarding
	// is what fails; if not, the far end or the WAN is at fault, which
	// membership handles, and draining would only push the site's
	// traffic onto another gateway facing the same dead far end. Only for
	// so long: a far end that stays silent past membership's time to
	// move the pairs, or this gateway's own wedged device, which silences
	// its own echoes too, is no longer explained by the far end.
	switch {
	case now.Sub(e.farSince) >= farVetoMax:
	case now.Sub(e.farOK) <= farFresh:
	case now.Sub(e.farChecked) <= farFresh:
		e.declined = "reported by " + reporters + ", but not every far gateway answers this gateway either: the far end is at fault"
		return false
	default:
		e.farWanted = true
		return false
	}
	if !e.lastEnd.IsZero() && now.Sub(e.lastEnd) > ejectForgetAfter {
		e.count = 0
	}
	e.until = now.Add(min(ejectBase<<min(e.count, 4), ejectMax))
	e.by, e.count, e.lastEnd = reporters, e.count+1, e.until
	e.total++
	delete(e.fresh, me) // spent: another ejection needs new reports
	return true
}

// setFar records the far gateways this gateway carries pairs to.
func (e *ejector) setFar(far []netip.Addr, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !slices.Equal(e.far, far) {
		e.far, e.farSince = far, now
	}
}

// reportLatency covers a report made before the far gateways changed and
// delivered after.
const reportLatency = time.Second

// farVetoMax is how long, after its far gateways last changed, a
// gateway's failed check of them keeps it from draining: longer than the
// WAN pool's failure detection at a few hundred gateways (its suspicion
// lasts up to about a minute there).
const farVetoMax = 90 * time.Second

// farFresh is how long this gateway's own check of its far gateways
// counts.
const farFresh = 3 * time.Second

// farCheckDue reports whether decide waits for a check of the far
// gateways, and clears the request.
func (e *ejector) farCheckDue() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	due := e.farWanted
	e.farWanted = false
	return due
}

// farResult records a check of the far gateways.
func (e *ejector) farResult(ok bool, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.farChecked = now
	if ok {
		e.farOK = now
	}
}

// ejected reports whether this gateway drains on reports now, on whose,
// and until when.
func (e *ejector) ejected(now time.Time) (bool, string, time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return now.Before(e.until), e.by, e.until
}

// takeDeclined returns the reporters of reports not acted on since the
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

// takeReports verifies the queued report events against st and feeds
// the accepted ones to the ejector (gateways only).
func (d *Daemon) takeReports(st *mesh.State, local mesh.Local, now time.Time) {
	for _, p := range d.inbox.take() {
		r, err := st.VerifyReport(local, p)
		if err != nil {
			d.log.Debug("gateway report refused", "err", err)
			continue
		}
		d.ejector.add(r, now)
	}
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
