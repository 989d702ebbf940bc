// Package daemon wires meshd's parts together: it creates them in a fixed
// order, runs the single reconciler goroutine, and tears everything down in
// the reverse order. All decisions live in mesh (pure); all OS effects
// reach the host through the small interfaces of System.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/metrics"
	"github.com/meshd/meshd/wgdev"
)

// Options carries what the daemon needs from its caller besides the
// config.
type Options struct {
	// Reload re-reads the configuration (SIGHUP, `meshd reload`); nil
	// disables reloading.
	Reload func() (*config.Config, error)
	// ConfigPath is the file Reload reads, so that a reload asked for
	// with another file is refused; "" skips that check.
	ConfigPath string
	// Hangup delivers SIGHUP.
	Hangup <-chan struct{}
}

// Daemon is one meshd. New builds it without touching the host; Start
// creates everything in a fixed order; Run reconciles until its context
// ends; Close removes what Start created, in reverse.
//
// Ownership: fields under "set by New" never change. Fields under "set
// by Start" are written before Run starts the loop and only read after,
// except where a comment names the loop as their owner. mu guards the
// fields the control socket and metrics read while the loop runs.
type Daemon struct {
	// Set by New.
	sys  System
	opts Options
	log  *slog.Logger
	// kick asks the loop for a pass; full asks that pass to read the
	// device and the kernel back. Both are safe from any goroutine.
	kick chan struct{}
	full atomic.Bool
	// requests run on the loop goroutine: everything that changes the
	// data plane or this host's identity goes through it.
	requests chan request
	// stopping is closed when the loop exits, so requests for it fail
	// fast instead of waiting out their timeout.
	stopping chan struct{}
	repairs  *repairs
	// directory holds other sites' gateways as this site's gateways
	// relay them (safe from any goroutine); paths what a gateway learns
	// of its WAN tunnels (see paths for who owns what).
	directory *directory
	// retired are the site's gateways this gateway told the WAN pool
	// failed, while the site pool shows them failed. Loop only.
	retired map[string]bool
	// askedRejoin is when this gateway last asked each of the site's
	// gateways to rejoin the WAN pool, rejoinedAt when it last rejoined on
	// request (both the loop's); rejoinWanted is a request received.
	askedRejoin  map[string]time.Time
	rejoinedAt   time.Time
	rejoinWanted atomic.Bool
	paths        *paths
	// prober is a probing host's record of its site's gateways, ejector
	// a gateway's of the reports naming it (see probe.go).
	prober  *prober
	ejector *ejector
	inbox   *inbox
	// probeErrOnce logs the first probe that could not be sent at all.
	probeErrOnce sync.Once

	// Set by Start.
	under    Underlay
	router   Router
	enforcer Enforcer
	cni      ConfigWriter
	// members is written by join under mu, since the control socket
	// already serves then and reads it through siteCluster.
	members Cluster
	// wan is the WAN pool on a gateway, nil elsewhere.
	wan     Cluster
	ctrl    *control.Server
	metrics *metrics.Metrics
	ann     *announcer
	claims  *claimer
	// peers is the loop's: per-peer deltas against the device.
	peers *wgdev.PeerSync
	// keepaliveTimer is the loop's; it brings the loop back for deferred
	// keepalives.
	keepaliveTimer *time.Timer
	// healthTicks is the loop's count of health checks.
	healthTicks int
	// expiryWarned is the loop's count of certificate expiry thresholds
	// (see expiryThresholds) already logged for the certificate in use.
	expiryWarned int
	// guarded is the loop's record of the slices the applied allow-list
	// lets through its no-plaintext guard.
	guarded []netip.Prefix
	// meshAddrs is the loop's record of the addresses it put on the
	// interface; dirty when that failed or the interface was recreated.
	meshAddrs      []netip.Prefix
	meshAddrsDirty bool
	// forwarding is the loop's last reading of the kernel's forwarding
	// switches; a gateway drains while it is off.
	forwarding bool
	// teardown holds the undo step of every resource created so far, run
	// in reverse order by Close (also when Start fails half-way).
	teardown []step

	mu sync.Mutex
	// cfg is replaced by reload (the loop), read by status.
	cfg *config.Config
	// dev is replaced when the loop recreates a deleted interface.
	dev Device
	// The loop's results, for status.
	state      *mesh.State
	lastSeen   []mesh.Member
	reconciles int
	failovers  int
	lastErr    error
	// drainWhy says why this gateway drains ("" when it does not).
	drainWhy string
	// missing names what a health check found gone and not yet put
	// back; status --check fails while it is not empty.
	missing map[string]string

	closeOnce sync.Once
	closeErr  error
}

// step is one teardown action with a name for the log.
type step struct {
	name string
	undo func() error
}

// New returns a daemon for cfg that will reach the host through sys.
// Nothing is created until Start.
func New(cfg *config.Config, log *slog.Logger, sys System, opts Options) *Daemon {
	return &Daemon{
		sys: sys, opts: opts, log: log, cfg: cfg,
		kick: make(chan struct{}, 1), requests: make(chan request), stopping: make(chan struct{}),
		repairs: newRepairs(), missing: map[string]string{},
		directory: newDirectory(), retired: map[string]bool{}, askedRejoin: map[string]time.Time{}, paths: newPaths(), forwarding: true, prober: newProber(), ejector: newEjector(), inbox: &inbox{},
	}
}

// Run starts meshd and blocks until ctx is cancelled, then leaves the
// cluster and removes everything it created.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, opts Options) error {
	d := New(cfg, log, HostSystem(), opts)
	if err := d.Start(ctx); err != nil {
		if cerr := d.Close(); cerr != nil {
			log.Error("cleanup after failed start", "err", cerr)
		}
		return err
	}
	err := d.Run(ctx)
	return errors.Join(err, d.Close())
}

// Start creates everything in a fixed order. The allow-list goes in
// before the interface exists, so the tunnel never carries unfiltered
// traffic; routes and rules before the cluster is joined, so no packet to
// the overlay can take the underlay. On error, Close undoes what was
// created.
func (d *Daemon) Start(ctx context.Context) error {
	cfg := d.config()
	if err := Check(cfg, d.sys.Host); err != nil {
		return err
	}
	lock, err := d.sys.Lock()
	if err != nil {
		return err
	}
	d.undo("namespace lock", lock.Close)
	warnReadable(d.log, cfg.Cluster.GossipKeyFile)
	keyPath := filepath.Join(cfg.DataDir, crypto.KeyFileName)
	key, created, err := crypto.LoadOrCreatePrivateKey(keyPath)
	if err != nil {
		return err
	}
	if created {
		d.log.Info("created WireGuard private key", "path", keyPath)
	}
	if d.under, err = d.sys.Underlay(cfg); err != nil {
		return err
	}
	d.ann = newAnnouncer(cfg, key, d.under.Endpoint)
	d.claims = newClaimer(cfg, d.log)
	if err := d.claims.load(d.ann); err != nil {
		return err
	}

	// A crashed run may have left routes, rules and the nftables table;
	// they are found by their marks, with no saved state.
	router, closeRouter, err := d.sys.Router(d.log)
	if err != nil {
		return err
	}
	d.undo("netlink handle", closeRouter.Close)
	if err := router.Set(nil); err != nil {
		return fmt.Errorf("remove routes left by an earlier run: %w", err)
	}
	d.router = router
	if err := d.startEnforcer(cfg); err != nil {
		return err
	}
	if err := d.openDevice(key); err != nil {
		return err
	}
	initial := mesh.Compute(d.ann.local(), nil, nil)
	d.undo("routes", func() error { return d.router.Set(nil) })
	if err := d.router.Set(&initial.Routes); err != nil {
		return fmt.Errorf("install segment routes: %w", err)
	}
	d.cni = d.sys.ConfigWriter(cfg.CNIConfDir)
	if err := d.startContainers(); err != nil {
		return err
	}
	d.startWatchers(ctx)
	if cfg.Site.Multi() {
		// Plain hosts probe their site's gateways; a gateway checks its
		// far gateways when probes name it (probe.go).
		d.startProbes(ctx)
	}
	if err := d.startControl(ctx, cfg); err != nil {
		return err
	}
	if err := d.join(cfg, key); err != nil {
		return err
	}
	if err := d.claims.claimMissing(ctx, d.ann, d.members); err != nil {
		return err
	}
	return d.joinWAN(cfg)
}

func (d *Daemon) startEnforcer(cfg *config.Config) error {
	enf, closeEnf, err := d.sys.Enforcer(cfg.WireGuard.Interface, d.log)
	if err != nil {
		return err
	}
	d.undo("nftables handle", closeEnf.Close)
	if err := enf.Flush(); err != nil {
		return fmt.Errorf("remove the nftables table left by an earlier run: %w", err)
	}
	d.enforcer = enf
	d.undo("allow-list", enf.Flush)
	if err := d.applyPolicy(); err != nil {
		return fmt.Errorf("install allow-list: %w", err)
	}
	return nil
}

// openDevice creates the interface and gives it this host's identity.
// Peers are the loop's business.
func (d *Daemon) openDevice(key wgtypes.Key) error {
	cfg := d.config()
	dev, err := d.sys.Device(d.deviceOptions())
	if err != nil {
		return err
	}
	d.setDevice(dev)
	d.undo("WireGuard interface", func() error { return d.device().Close() })
	if err := wgdev.Configure(dev, dev.Name(), key, cfg.WireGuard.ListenPort); err != nil {
		return err
	}
	d.peers = wgdev.NewPeerSync(dev, dev.Name(), d.log)
	return nil
}

func (d *Daemon) deviceOptions() wgdev.Options {
	cfg := d.config()
	return wgdev.Options{
		Name: cfg.WireGuard.Interface, Mode: wgdev.Mode(cfg.WireGuard.Mode), MTU: d.under.MTU, Log: d.log,
		OnRepair: d.repairs.note,
	}
}

func (d *Daemon) startControl(ctx context.Context, cfg *config.Config) error {
	ctrl, err := control.Listen(cfg.ControlSocket, d)
	if err != nil {
		return err
	}
	d.ctrl = ctrl
	d.undo("control socket", ctrl.Close)
	newAPI(d).register(ctrl)
	return d.startMetrics(ctx)
}

func (d *Daemon) join(cfg *config.Config, key wgtypes.Key) error {
	tags, err := d.ann.tags()
	if err != nil {
		return err
	}
	members, err := d.sys.Join(cluster.MembershipConfig{
		NodeName: cfg.NodeName, BindAddr: cfg.Cluster.BindAddr, BindPort: cfg.Cluster.BindPort,
		AdvertiseAddr: d.under.Advertise, GossipKey: cfg.Cluster.GossipKey, KeyringFile: cfg.Cluster.GossipKeyring, Tags: tags,
		SnapshotPath: filepath.Join(cfg.DataDir, "serf.snapshot"), Join: cfg.Cluster.Join,
		Profile: string(cfg.Cluster.Profile), ProbeInterval: cfg.Cluster.ProbeInterval,
		Log: d.log, OnEvent: d.onSiteEvent,
	}, d.Kick)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.members = members
	d.mu.Unlock()
	d.ann.site = members
	d.undo("cluster membership", members.Leave)
	d.log.Info("meshd running", "interface", d.device().Name(), "mode", string(d.device().Kind()),
		"endpoint", d.under.Endpoint, "key", crypto.Fingerprint(key.PublicKey()))
	return nil
}

func (d *Daemon) undo(name string, fn func() error) {
	d.teardown = append(d.teardown, step{name, fn})
}

// shutdownBudget bounds Close: SIGTERM must end the process within 5 s
// even when a dependency hangs, and the command adds its own margin.
const shutdownBudget = 4 * time.Second

// stepReserve is what Close keeps back for each teardown step still to
// come when one step runs long.
const stepReserve = 100 * time.Millisecond

// Close undoes Start in reverse: serf leave (peers drop us at once),
// control socket, CNI configs, routes, device, allow-list, handles. A
// step that hangs is abandoned when the budget runs out, so the steps
// after it still run. Safe to call twice.
func (d *Daemon) Close() error {
	d.closeOnce.Do(func() {
		deadline := time.Now().Add(shutdownBudget)
		var errs []error
		for i := len(d.teardown) - 1; i >= 0; i-- {
			s := d.teardown[i]
			// Every step after this one keeps a little time of its own.
			if err := runBounded(s.undo, time.Until(deadline)-time.Duration(i)*stepReserve); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
			}
		}
		d.teardown = nil
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// runBounded gives one teardown step at least its share of what is left;
// a step that takes longer keeps running, but Close moves on.
func runBounded(fn func() error, share time.Duration) error {
	share = max(share, stepReserve)
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(share):
		return fmt.Errorf("did not finish within %s; moved on", share.Round(time.Millisecond))
	}
}

// Kick asks the reconciler for a pass without blocking the caller (serf's
// event loop, the route watcher).
func (d *Daemon) Kick() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// kickFull asks for a pass that reads the kernel and the device back:
// something meshd owns was changed by someone else.
func (d *Daemon) kickFull() {
	d.full.Store(true)
	d.Kick()
}

func (d *Daemon) config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// siteCluster is the site pool for the control socket's goroutines; nil
// until the join.
func (d *Daemon) siteCluster() Cluster {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.members
}

func (d *Daemon) device() Device {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dev
}

func (d *Daemon) setDevice(dev Device) {
	d.mu.Lock()
	d.dev = dev
	d.mu.Unlock()
}
