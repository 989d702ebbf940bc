package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/wgdev"
)

const (
	// resyncInterval bounds how long drift nothing reports (a peer
	// removed with `wg`) survives.
	resyncInterval = 30 * time.Second
	// healthInterval is how often the interface and the nftables table
	// are looked for: someone deleting either is put right within it
	// plus one pass.
	healthInterval = 500 * time.Millisecond
	// coalesce lets a burst of serf events (a host joining produces
	// several) become one reconcile.
	coalesce   = 50 * time.Millisecond
	minBackoff = 250 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// Run is the loop: the only goroutine that changes peers, routes, the
// device and this host's announcement. It returns nil when ctx ends, or
// the error that makes carrying on pointless (serf gave up this host's
// name to another host).
func (d *Daemon) Run(ctx context.Context) error {
	defer close(d.stopping)
	resync := time.NewTicker(resyncInterval)
	defer resync.Stop()
	health := time.NewTicker(healthInterval)
	defer health.Stop()
	retry := time.NewTimer(0) // first pass at once
	defer retry.Stop()
	backoff := time.Duration(0) // non-zero while passes fail
	d.full.Store(true)
	failed := d.members.Failed()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-failed:
			if ok && err != nil {
				d.log.Error("leaving: the cluster stopped this host", "err", err)
				return err
			}
			failed = nil
			continue
		case <-d.kick:
			if backoff > 0 {
				continue // the retry timer brings the loop back
			}
			time.Sleep(coalesce)
		case <-resync.C:
			d.full.Store(true)
			if backoff > 0 {
				continue
			}
		case <-retry.C:
		case <-health.C:
			if !d.checkHealth() || backoff > 0 {
				continue
			}
		case <-d.opts.Hangup:
			if _, err := d.reload(); err != nil {
				d.log.Error("reload failed; keeping the running configuration", "err", err)
			}
			continue
		case req := <-d.requests:
			req.answer <- req.fn()
			continue
		}
		if err := d.reconcile(); err != nil {
			d.full.Store(true) // the state reached is unknown
			backoff = min(max(backoff*2, minBackoff), maxBackoff)
			d.log.Error("reconcile failed; retrying", "in", backoff, "err", err)
			retry.Reset(backoff)
			continue
		}
		backoff = 0
	}
}

func (d *Daemon) reconcile() (err error) {
	began := time.Now()
	defer func() { d.metrics.ObserveReconcile(time.Since(began), err) }()
	full := d.full.Swap(false)
	var repairErr error
	if full {
		repairErr = d.ensureDataPlane()
	}
	members := d.members.Members()
	remote := d.remoteGateways()
	d.mu.Lock()
	prev := d.state
	d.mu.Unlock()
	local := d.ann.local()
	local.Now = time.Now()
	st := mesh.ComputeTopology(local, members, remote, prev)
	d.logRejections(prev, &st)
	var claimErr error
	if restamp := d.claims.restampDue(members); restamp || len(st.Lost) > 0 {
		if restamp {
			claimErr = d.claims.restamp(d.ann, st.Lost)
		}
		// Yield first: routing a slice another host owns would split it.
		// A failed re-claim must not stop peers and routes from following
		// the membership: the lost slice is simply not routed meanwhile.
		if len(st.Lost) > 0 {
			claimErr = errors.Join(claimErr, d.claims.claim(d.ann, st.Lost, &st))
		}
		local = d.ann.local()
		local.Now = time.Now()
		st = mesh.ComputeTopology(local, members, remote, prev)
	}
	if d.ann.dirty() {
		claimErr = errors.Join(claimErr, d.ann.publish())
	}
	if !slices.Equal(d.guarded, ownSlices(local)) {
		if perr := d.applyPolicy(); perr != nil {
			claimErr = errors.Join(claimErr, fmt.Errorf("update the no-plaintext guard for this host's slices: %w", perr))
		}
	}
	// Membership events apply the difference from the last state reached;
	// resyncs, repairs and retries read the device and the kernel back.
	var peerErr, routeErr error
	if full || prev == nil {
		peerOps, routeOps := d.peers.Ops(), d.router.Ops()
		peerErr, routeErr = d.peers.Set(st.Peers), d.router.Set(&st.Routes)
		// The desired state did not move, so whatever had to be written
		// was undone by someone else.
		if prev != nil && slices.EqualFunc(prev.Peers, st.Peers, samePeer) && d.peers.Ops() > peerOps {
			d.repairs.note("peers")
		}
		if prev != nil && prev.Routes.Equal(&st.Routes) && d.router.Ops() > routeOps {
			d.repairs.note("routes")
		}
	} else {
		peerErr, routeErr = d.peers.SetFrom(prev.Peers, st.Peers), d.router.SetFrom(&prev.Routes, &st.Routes)
	}
	d.retireFellowGateways(members, remote)
	siteErr := errors.Join(d.syncMeshAddr(local), d.relayDirectory(members, remote), d.updatePaths(&st, local))
	err = errors.Join(repairErr, claimErr, peerErr, routeErr, siteErr, d.syncCNI(local))
	d.mu.Lock()
	defer d.mu.Unlock()
	if prev != nil {
		d.failovers += countFailovers(prev.Sites, st.Sites)
	}
	d.state, d.lastSeen, d.lastErr = &st, members, err
	d.reconciles++
	d.wakeForKeepalives()
	return err
}

// countFailovers counts the other sites whose path moved to another
// gateway at either end.
func countFailovers(prev, next []mesh.SiteState) int {
	n := 0
	for _, s := range next {
		i := slices.IndexFunc(prev, func(p mesh.SiteState) bool { return p.Name == s.Name })
		if i < 0 || s.Unreachable != "" || prev[i].Unreachable != "" {
			continue
		}
		if prev[i].Gateway != s.Gateway || prev[i].Remote != s.Remote {
			n++
		}
	}
	return n
}

func samePeer(a, b mesh.Peer) bool {
	return a.Name == b.Name && a.PublicKey == b.PublicKey && a.Endpoint == b.Endpoint &&
		a.Keepalive == b.Keepalive && slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

// checkHealth looks for the interface and the nftables table, which no
// kernel event reports gone, and asks for a repairing pass when either
// is missing. Routes and rules are watched through netlink instead.
func (d *Daemon) checkHealth() (repairDue bool) {
	missing := map[string]string{}
	if err := d.device().Present(); err != nil {
		missing["interface"] = err.Error()
	} else if d.healthTicks++; d.healthTicks%deviceCheckEvery == 0 {
		d.checkDeviceConfig(missing)
	}
	if err := d.enforcer.Intact(); err != nil {
		missing["nftables"] = err.Error()
	}
	d.checkForwarding(missing)
	d.drainingChanged() // forwarding, or an ejection that ended
	if at := d.directory.settleAt; !at.IsZero() && time.Now().After(at) {
		d.Kick() // the relay after a takeover is due
	}
	if at := d.paths.decideAt; !at.IsZero() && time.Now().After(at) {
		d.paths.decideAt = time.Time{}
		d.Kick() // a direct NAT-to-NAT tunnel's time to come up is over
	}
	d.askWhoamiIfDue()
	d.warnExpiry(time.Now())
	d.mu.Lock()
	d.missing = missing
	d.mu.Unlock()
	if _, off := missing["ip-forwarding"]; off && len(missing) == 1 {
		// Nothing meshd can put back: it is reported, and a gateway
		// drains, but it takes no repairing pass.
		return false
	}
	if len(missing) == 0 {
		return false
	}
	d.full.Store(true)
	return true
}

// deviceCheckEvery spaces the reads of the whole device (every peer)
// to one per second.
const deviceCheckEvery = 2

// checkDeviceConfig compares the device with what the last pass left on
// it: `wg set` can change the key, the port or the peers, and no event
// says so.
func (d *Daemon) checkDeviceConfig(missing map[string]string) {
	dev := d.device()
	got, err := dev.Device(dev.Name())
	if err != nil {
		missing["interface"] = err.Error()
		return
	}
	d.paths.observe(got)
	if got.PrivateKey != d.ann.privateKey() || got.ListenPort != d.config().WireGuard.ListenPort {
		missing["interface-config"] = "the key or listen port was changed"
	}
	d.mu.Lock()
	st := d.state
	d.mu.Unlock()
	if st == nil {
		return
	}
	want := make(map[wgtypes.Key]int, len(st.Peers))
	for _, p := range st.Peers {
		want[p.PublicKey] = len(p.AllowedIPs)
	}
	if len(got.Peers) != len(want) {
		missing["peers"] = fmt.Sprintf("%d peers on the device, want %d", len(got.Peers), len(want))
		return
	}
	for _, p := range got.Peers {
		if n, ok := want[p.PublicKey]; !ok || n != len(p.AllowedIPs) {
			missing["peers"] = "a peer or its allowed IPs were changed"
			return
		}
	}
}

// ensureDataPlane puts back the interface and the allow-list when someone
// else removed them. The routes through a deleted interface go with it;
// the read-back pass that follows restores them.
func (d *Daemon) ensureDataPlane() error {
	var errs []error
	if err := d.enforcer.Intact(); err != nil {
		if aerr := d.applyPolicy(); aerr != nil {
			errs = append(errs, fmt.Errorf("restore allow-list: %w", aerr))
		} else {
			d.log.Warn("restored the nftables table someone removed or changed", "was", err)
			d.repairs.note("nftables")
		}
	}
	if err := d.device().Present(); err != nil {
		if rerr := d.reopenDevice(); rerr != nil {
			errs = append(errs, fmt.Errorf("recreate interface: %w", rerr))
		} else {
			d.log.Warn("recreated the WireGuard interface someone removed", "interface", d.device().Name(), "was", err)
			d.repairs.note("interface")
		}
	} else if err := d.checkIdentity(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		d.mu.Lock()
		d.missing = map[string]string{}
		d.mu.Unlock()
	}
	return errors.Join(errs...)
}

// reopenDevice replaces a deleted interface: the old device is closed
// (its TUN is gone), a new one created and given the key, and the peers
// go back on with a fresh PeerSync, whose memory was of the old device.
func (d *Daemon) reopenDevice() error {
	cfg := d.config()
	old := d.device()
	old.Close()
	dev, err := d.sys.Device(d.deviceOptions())
	if err != nil {
		return err
	}
	d.setDevice(dev)
	if err := wgdev.Configure(dev, dev.Name(), d.ann.privateKey(), cfg.WireGuard.ListenPort); err != nil {
		return err
	}
	d.peers = wgdev.NewPeerSync(dev, dev.Name(), d.log)
	d.meshAddrsDirty = true
	return nil
}

// checkIdentity puts back the key and port if someone changed them with
// `wg set`: peers would otherwise reject every handshake.
func (d *Daemon) checkIdentity() error {
	cfg := d.config()
	dev := d.device()
	got, err := dev.Device(dev.Name())
	if err != nil {
		return fmt.Errorf("read %s: %w", dev.Name(), err)
	}
	key := d.ann.privateKey()
	if got.PrivateKey == key && got.ListenPort == cfg.WireGuard.ListenPort {
		return nil
	}
	if err := wgdev.Configure(dev, dev.Name(), key, cfg.WireGuard.ListenPort); err != nil {
		return err
	}
	d.log.Warn("restored the interface's key and port someone changed", "interface", dev.Name(), "port", got.ListenPort)
	d.repairs.note("interface-config")
	return nil
}

// wakeForKeepalives kicks the reconciler when a new peer's deferred
// keepalive falls due (see wgdev.KeepaliveDelay). Caller holds d.mu.
func (d *Daemon) wakeForKeepalives() {
	next := d.peers.NextKeepalive()
	if next.IsZero() {
		return
	}
	if d.keepaliveTimer == nil {
		d.keepaliveTimer = time.AfterFunc(time.Until(next), d.Kick)
		return
	}
	d.keepaliveTimer.Reset(time.Until(next))
}

// logRejections logs each refused announcement once, not at every pass.
func (d *Daemon) logRejections(prev, st *mesh.State) {
	for _, r := range st.Rejected {
		if prev != nil && slices.Contains(prev.Rejected, r) {
			continue
		}
		d.log.Warn("announcement rejected", "member", r.Member, "reason", r.Reason)
	}
}

// startProbes runs the gateway probes (probe.go) until Close.
func (d *Daemon) startProbes(ctx context.Context) {
	pctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	d.undo("gateway probes", func() error { stop(); <-done; return nil })
	go func() {
		defer close(done)
		d.probeLoop(pctx)
	}()
}

// startWatchers restores routes and rules someone else deletes,
// resubscribing when the kernel drops the subscription (e.g. ENOBUFS
// after a burst).
func (d *Daemon) startWatchers(ctx context.Context) {
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	d.undo("route watch", func() error { stop(); <-done; return nil })
	go func() {
		defer close(done)
		for wctx.Err() == nil {
			if err := d.sys.WatchRoutes(wctx, d.kickFull); err != nil && wctx.Err() == nil {
				d.log.Warn("route watch interrupted; resubscribing", "err", err)
				select {
				case <-wctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
	}()
}

// repairs counts what meshd put back after someone else removed it, for
// status and the meshd_repairs_total metric.
type repairs struct {
	mu     sync.Mutex
	counts map[string]int
}

func newRepairs() *repairs { return &repairs{counts: map[string]int{}} }

func (r *repairs) note(what string) {
	r.mu.Lock()
	r.counts[what]++
	r.mu.Unlock()
}

func (r *repairs) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.counts))
	for k, v := range r.counts {
		out[k] = v
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
