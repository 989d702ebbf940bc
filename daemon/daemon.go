// Package daemon wires meshd's parts together: it creates them in a fixed
// order, runs the single reconciler goroutine, and tears everything down in
// the reverse order. All decisions live in mesh (pure); all OS effects in
// wgdev and routes.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/metrics"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/routes"
	"github.com/meshd/meshd/wgdev"
)

const (
	// resyncInterval bounds how long drift made by someone else (a peer
	// removed with `wg`, a route flushed by hand) survives.
	resyncInterval = 30 * time.Second
	// coalesce lets a burst of serf events (a host joining produces
	// several) become one reconcile.
	coalesce   = 50 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// cluster is what the reconciler needs from membership; *mesh.Membership
// implements it and tests substitute a fake.
type cluster interface {
	Members() []mesh.Member
	SetTags(map[string]string) error
	LamportTime() uint64
}

// Options carries what the daemon needs from its caller besides the
// config.
type Options struct {
	// Reload re-reads the configuration (SIGHUP, `meshd reload`); nil
	// disables reloading.
	Reload func() (*config.Config, error)
	// Hangup delivers SIGHUP.
	Hangup <-chan struct{}
}

// Daemon is one running meshd.
type Daemon struct {
	opts  Options
	cfg   *config.Config
	log   *slog.Logger
	key   wgtypes.Key
	local mesh.Local
	mtu   int
	// endpointAddr is what this host announces as its WireGuard endpoint.
	endpointAddr netip.AddrPort
	// counter orders this host's signed announcements; see tags.
	counter uint64
	// announceDirty is set when an announcement failed to go out; the
	// reconciler retries it, so peers never stay on a stale key.
	announceDirty bool
	// provisional names segments claimed while this host saw no other
	// member: their Lamport time says nothing about the cluster, so they
	// are re-stamped once the host has joined.
	provisional map[string]bool
	// stopping is closed when the reconciler exits, so requests for it
	// fail fast instead of waiting out their timeout.
	stopping chan struct{}
	// fullDue asks the next pass to read the kernel and the device back
	// instead of trusting the last state reached (someone else changed
	// them).
	fullDue atomic.Bool
	// keepaliveTimer brings the reconciler back for deferred keepalives.
	keepaliveTimer *time.Timer

	dev     wgdev.Device
	wg      *wgctrl.Client
	peers   *wgdev.PeerSync
	routes  *routes.Manager
	members cluster
	// membership is the serf agent behind members, for leave and the
	// gossip keyring.
	membership *mesh.Membership
	ctrl       *control.Server
	policy     *policy.Enforcer
	metrics    *metrics.Metrics
	kick       chan struct{}
	// requests run on the reconciler goroutine: everything that changes
	// the data plane or this host's identity goes through it.
	requests chan request

	// teardown holds the undo step of every resource created so far, run
	// in reverse order on shutdown or when startup fails half-way.
	teardown []func() error

	mu         sync.Mutex // guards the fields below, read by status queries
	state      *mesh.State
	lastSeen   []mesh.Member
	reconciles int
	lastErr    error
}

// Run starts meshd and blocks until ctx is cancelled, then leaves the
// cluster and removes everything it created.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, opts Options) error {
	d := &Daemon{opts: opts, cfg: cfg, log: log, kick: make(chan struct{}, 1), requests: make(chan request), stopping: make(chan struct{})}
	if err := d.start(ctx); err != nil {
		if terr := d.shutdown(); terr != nil {
			log.Error("cleanup after failed start", "err", terr)
		}
		return err
	}
	log.Info("meshd running", "interface", d.dev.Name(), "mode", string(d.dev.Kind()),
		"endpoint", d.endpointAddr, "key", crypto.Fingerprint(d.key.PublicKey()))
	d.loop(ctx)
	close(d.stopping)
	log.Info("shutting down")
	return d.shutdown()
}

func (d *Daemon) start(ctx context.Context) error {
	cfg := d.cfg
	lock, err := lockNamespace()
	if err != nil {
		return err
	}
	d.defer_(lock.Close)
	warnReadable(d.log, cfg.Cluster.GossipKeyFile)
	key, created, err := crypto.LoadOrCreatePrivateKey(filepath.Join(cfg.DataDir, crypto.KeyFileName))
	if err != nil {
		return err
	}
	if created {
		d.log.Info("created WireGuard private key", "path", filepath.Join(cfg.DataDir, crypto.KeyFileName))
	}
	d.key = key
	under, err := resolveUnderlay(cfg)
	if err != nil {
		return err
	}
	d.mtu = under.mtu
	d.local = localNode(cfg, key.PublicKey())
	d.endpointAddr = under.endpoint
	if err := d.loadClaims(); err != nil {
		return err
	}

	// A crashed run may have left routes and rules; they are found by
	// their protocol mark, with no saved state.
	// Route netlink only: a bare NewHandle also opens XFRM and netfilter
	// sockets, loading modules meshd never uses and failing where they
	// cannot be loaded.
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	d.defer_(func() error { nl.Close(); return nil })
	if err := routes.Cleanup(nl); err != nil {
		return fmt.Errorf("remove routes left by an earlier run: %w", err)
	}

	// The allow-list goes in before the interface exists, so there is no
	// moment in which the tunnel carries unfiltered traffic.
	ruleset, err := cfg.Policy()
	if err != nil {
		return err
	}
	nft, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	d.defer_(nft.CloseLasting)
	// A batch sent to a kernel without nf_tables is answered with one
	// error ack that the library keeps waiting past; a plain dump fails
	// at once, with the reason.
	if _, err := nft.ListTables(); err != nil {
		return fmt.Errorf("nf_tables is not usable on this kernel (allow-lists need it; load the nf_tables module): %w", err)
	}
	if err := policy.Cleanup(nft); err != nil {
		return fmt.Errorf("remove the nftables table left by an earlier run: %w", err)
	}
	d.policy = policy.NewEnforcer(nft, cfg.WireGuard.Interface, d.log)
	if err := d.policy.Apply(ruleset); err != nil {
		return fmt.Errorf("install allow-list: %w", err)
	}
	d.defer_(d.policy.Flush)

	d.dev, err = wgdev.Open(wgdev.Options{Name: cfg.WireGuard.Interface, Mode: wgdev.Mode(cfg.WireGuard.Mode), MTU: d.mtu, Log: d.log})
	if err != nil {
		return err
	}
	d.defer_(d.dev.Close)
	d.wg, err = wgctrl.New()
	if err != nil {
		return fmt.Errorf("open wgctrl: %w", err)
	}
	d.defer_(d.wg.Close)
	if err := wgdev.Configure(d.wg, d.dev.Name(), key, cfg.WireGuard.ListenPort); err != nil {
		return err
	}
	d.peers = wgdev.NewPeerSync(d.wg, d.dev.Name(), d.log)

	d.routes = routes.New(nl, d.log)
	d.defer_(func() error { return d.routes.Set(nil) })
	initial := mesh.Compute(d.local, nil, nil)
	if err := d.routes.Set(&initial.Routes); err != nil {
		return fmt.Errorf("install segment routes: %w", err)
	}
	if err := d.startContainers(); err != nil {
		return err
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	d.defer_(func() error { stopWatch(); return nil })
	go d.watchRoutes(watchCtx)

	d.ctrl, err = control.Listen(cfg.ControlSocket, d)
	if err != nil {
		return err
	}
	d.defer_(d.ctrl.Close)
	d.ctrl.Handle("POST /v1/reload", d.serveReload)
	if err := d.startMetrics(ctx); err != nil {
		return err
	}

	tags, err := d.tags()
	if err != nil {
		return err
	}
	d.membership, err = mesh.JoinCluster(mesh.MembershipConfig{
		NodeName: cfg.NodeName, BindAddr: cfg.Cluster.BindAddr, BindPort: cfg.Cluster.BindPort,
		AdvertiseAddr: under.advertise, GossipKey: cfg.Cluster.GossipKey, KeyringFile: cfg.Cluster.GossipKeyring, Tags: tags,
		SnapshotPath: filepath.Join(cfg.DataDir, "serf.snapshot"), Join: cfg.Cluster.Join,
		Profile: string(cfg.Cluster.Profile), ProbeInterval: cfg.Cluster.ProbeInterval,
		Log: d.log,
	}, d.Kick)
	if err != nil {
		return err
	}
	d.members = d.membership
	d.defer_(d.membership.Leave)
	d.registerTrustEndpoints()
	return d.claimMissing(ctx)
}

// watchRoutes restores routes someone else deletes, resubscribing when
// the kernel drops the subscription (e.g. ENOBUFS after a burst).
func (d *Daemon) watchRoutes(ctx context.Context) {
	for ctx.Err() == nil {
		if err := routes.Watch(ctx, netns.None(), d.kickFull); err != nil && ctx.Err() == nil {
			d.log.Warn("route watch interrupted; resubscribing", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// warnReadable flags a gossip key other users can read. It is a warning,
// not a refusal: 'meshd keygen gossip > FILE' under the usual umask makes
// such a file, and refusing it would break the documented first start.
func warnReadable(log *slog.Logger, path string) {
	if info, err := os.Stat(path); err == nil && info.Mode().Perm()&0o077 != 0 {
		log.Warn("gossip key file is readable by other users; anyone who reads it can join the cluster: chmod 600 it",
			"path", path, "mode", fmt.Sprintf("%04o", info.Mode().Perm()))
	}
}

func (d *Daemon) defer_(undo func() error) { d.teardown = append(d.teardown, undo) }

// shutdown undoes start in reverse: serf leave (peers drop us at once),
// control socket, routes, WireGuard client, device.
func (d *Daemon) shutdown() error {
	var errs []error
	for i := len(d.teardown) - 1; i >= 0; i-- {
		if err := d.teardown[i](); err != nil {
			errs = append(errs, err)
		}
	}
	d.teardown = nil
	return errors.Join(errs...)
}

// Kick asks the reconciler for a pass without blocking the caller (serf's
// event loop, the route watcher).
func (d *Daemon) Kick() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// kickFull asks for a pass that reads the kernel back: a route meshd owns
// was deleted by someone else.
func (d *Daemon) kickFull() {
	d.fullDue.Store(true)
	d.Kick()
}

// loop is the only goroutine that changes peers and routes.
func (d *Daemon) loop(ctx context.Context) {
	resync := time.NewTicker(resyncInterval)
	defer resync.Stop()
	retry := time.NewTimer(0) // first pass at once
	backoff := time.Second
	d.fullDue.Store(true)
	for {
		select {
		case <-ctx.Done():
			retry.Stop()
			return
		case <-d.kick:
			time.Sleep(coalesce)
		case <-resync.C:
			d.fullDue.Store(true)
		case <-retry.C:
		case <-d.opts.Hangup:
			if err := d.reload(); err != nil {
				d.log.Error("reload failed; keeping the running configuration", "err", err)
			}
			continue
		case req := <-d.requests:
			req.answer <- req.fn()
			continue
		}
		if err := d.reconcile(); err != nil {
			d.fullDue.Store(true) // the state reached is unknown
			d.log.Error("reconcile failed; retrying", "in", backoff, "err", err)
			retry.Reset(backoff)
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		backoff = time.Second
	}
}

func (d *Daemon) reconcile() (err error) {
	began := time.Now()
	defer func() { d.metrics.ObserveReconcile(time.Since(began), err) }()
	members := d.members.Members()
	d.mu.Lock()
	prev := d.state
	local := d.local
	d.mu.Unlock()
	local.Now = time.Now()
	st := mesh.Compute(local, members, prev)
	d.logRejections(prev, &st)
	var claimErr error
	if restamp := d.restampDue(members); restamp || len(st.Lost) > 0 {
		if restamp {
			claimErr = d.restamp(st.Lost)
		}
		// Yield first: routing a slice another host owns would split it.
		// A failed re-claim must not stop peers and routes from following
		// the membership: the lost slice is simply not routed meanwhile.
		if len(st.Lost) > 0 {
			claimErr = errors.Join(claimErr, d.claim(st.Lost, &st))
		}
		local = d.localCopy()
		local.Now = time.Now()
		st = mesh.Compute(local, members, prev)
	}
	if d.announceDirty {
		claimErr = errors.Join(claimErr, d.publish())
	}
	// Membership events apply the difference from the last state reached;
	// resyncs, repairs and retries read the device and the kernel back.
	var peerErr, routeErr error
	if full := d.fullDue.Swap(false) || prev == nil; full {
		peerErr, routeErr = d.peers.Set(st.Peers), d.routes.Set(&st.Routes)
	} else {
		peerErr, routeErr = d.peers.SetFrom(prev.Peers, st.Peers), d.routes.SetFrom(&prev.Routes, &st.Routes)
	}
	err = errors.Join(claimErr, peerErr, routeErr, d.syncCNI(local))
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state, d.lastSeen, d.lastErr = &st, members, err
	d.reconciles++
	d.wakeForKeepalives()
	return err
}

// wakeForKeepalives kicks the reconciler when a new peer's deferred
// keepalive falls due (see wgdev.KeepaliveDelay).
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

func localNode(cfg *config.Config, pub wgtypes.Key) mesh.Local {
	l := mesh.Local{
		Name: cfg.NodeName, PublicKey: pub, Link: cfg.WireGuard.Interface,
		TableBase: cfg.Routing.TableBase, RulePriority: cfg.Routing.RulePriority,
		Keepalive: time.Duration(cfg.WireGuard.PersistentKeepalive) * time.Second,
		CA:        cfg.Identity.CA,
	}
	for _, s := range cfg.Segments {
		l.Segments = append(l.Segments, mesh.LocalSegment{Name: s.Name, CIDR: s.CIDR, Subnet: s.Subnet})
	}
	return l
}
