package daemon

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/cni"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/clustertest"
	"github.com/meshd/meshd/internal/policytest"
	"github.com/meshd/meshd/internal/routestest"
	"github.com/meshd/meshd/internal/wgdevtest"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/routes"
	"github.com/meshd/meshd/wgdev"
)

// A testHost is one machine of an in-process cluster: its "kernel" (routes
// and rules in a routestest.Fake, the nftables ruleset in a
// policytest.Conn, WireGuard interfaces whose peers live in a
// wgdevtest.Client), its files in a temporary directory, and its gossip
// on a clustertest network. The kernel outlives the daemons started on
// it, so a crash and a restart can be played.
type testHost struct {
	t    testing.TB
	name string
	dir  string
	net  *clustertest.Network
	tr   *clustertest.Transport
	addr netip.Addr
	// wanTr is a gateway's transport in the WAN pool, on its own network.
	wanTr *clustertest.Transport
	// wanUpdates counts the gateway's announcements in the WAN pool.
	wanUpdates int
	// wanPool is the gateway's WAN membership while a daemon runs.
	wanPool *recordingCluster
	// tune sets the gossip's transport and timers; nil is fastGossip.
	tune func(memberlist.Transport) func(*serf.Config)
	// echo answers the daemon's gateway probes; nil fails them all, as a
	// host without routes would.
	echo func(src, dst netip.Addr) error

	nl  *routestest.Fake
	nft *policytest.Conn

	mu sync.Mutex
	// events is the order in which the daemon created and removed things.
	events []string
	// links holds the WireGuard interfaces that exist; a deleted one is
	// gone from here and from nl.
	links map[string]*fakeDevice
	fail  map[string]error // System step -> injected error
	// hang makes the device's Close block until it is closed, as a
	// device that stopped answering would.
	hang chan struct{}
	// joining, when set, holds the join until it is closed, as a join
	// waiting on its seeds does.
	joining chan struct{}
}

func newTestHost(t testing.TB, net *clustertest.Network, name string) *testHost {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	h := &testHost{t: t, name: name, dir: dir, net: net, nl: routestest.NewFake(), nft: policytest.New(),
		links: map[string]*fakeDevice{}, fail: map[string]error{}}
	h.tr = net.NewTransport(name)
	h.addr = netip.MustParseAddrPort(h.tr.Addr()).Addr()
	return h
}

func (h *testHost) record(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, fmt.Sprintf(format, args...))
}

func (h *testHost) takeEvents() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.events
	h.events = nil
	return e
}

func (h *testHost) failOn(step string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail[step] = err
}

func (h *testHost) injected(step string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fail[step]
}

// gossipKey is shared by every host of a test cluster.
func gossipKeyFile(t testing.TB) string {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	path := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// configText renders a host's meshd.toml; slice i of 10.42.0.0/16 (blue)
// and of 10.43.0.0/16 (green) belongs to host i; extra is appended.
func (h *testHost) configText(keyFile string, join []string, index int, extra string) string {
	quoted := make([]string, len(join))
	for i, j := range join {
		quoted[i] = fmt.Sprintf("%q", j)
	}
	return fmt.Sprintf(`node_name = %q
data_dir = %q
control_socket = %q
cni_conf_dir = %q
cni_ipam_dir = %q
docker_plugin_socket = ""

[cluster]
bind_addr = %q
join = [%s]
gossip_key_file = %q

[wireguard]
interface = "mesh0"
mode = "userspace"

[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
subnet = "10.42.%d.0/24"

[[segments]]
name = "green"
cidr = "10.43.0.0/16"
subnet = "10.43.%d.0/24"
%s`, h.name, filepath.Join(h.dir, "data"), filepath.Join(h.dir, "meshd.sock"), filepath.Join(h.dir, "cni"), filepath.Join(h.dir, "ipam"),
		h.addr, strings.Join(quoted, ", "), keyFile, index, index, extra)
}

func (h *testHost) config(text string) *config.Config {
	h.t.Helper()
	path := filepath.Join(h.dir, "meshd.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		h.t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		h.t.Fatal(err)
	}
	return cfg
}

// fastGossip shortens serf's timers so joins, leaves and failures settle
// within a second or two in tests.
func fastGossip(tr memberlist.Transport) func(*serf.Config) {
	return func(c *serf.Config) {
		ml := c.MemberlistConfig
		ml.Transport = tr
		ml.ProbeInterval = 100 * time.Millisecond
		ml.ProbeTimeout = 50 * time.Millisecond
		ml.GossipInterval = 20 * time.Millisecond
		ml.PushPullInterval = time.Second
		ml.SuspicionMult = 2
		ml.SuspicionMaxTimeoutMult = 2
		ml.TCPTimeout = time.Second
		ml.DeadNodeReclaimTime = time.Millisecond
		c.ReapInterval = 200 * time.Millisecond
		c.ReconnectInterval = 200 * time.Millisecond
		c.TombstoneTimeout = time.Minute
	}
}

// system wires a daemon to this host's fakes. Each factory records what
// it created, and its closer what it removed, so tests can check order.
func (h *testHost) system() System {
	return System{
		Host: fakeHostView{h},
		Lock: func() (io.Closer, error) {
			if err := h.injected("lock"); err != nil {
				return nil, err
			}
			h.record("lock")
			return closer(func() { h.record("unlock") }), nil
		},
		Underlay: func(cfg *config.Config) (Underlay, error) {
			return Underlay{Advertise: h.addr, Endpoint: netip.AddrPortFrom(h.addr, uint16(cfg.WireGuard.ListenPort)), MTU: 1420}, nil
		},
		Router: func(log *slog.Logger) (Router, io.Closer, error) {
			if err := h.injected("router"); err != nil {
				return nil, nil, err
			}
			h.record("open netlink")
			return routes.New(h.nl, log), closer(func() { h.record("close netlink") }), nil
		},
		WatchRoutes: func(ctx context.Context, kick func()) error {
			deleted := h.nl.Watch()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-deleted:
					kick()
				}
			}
		},
		Enforcer: func(iface string, log *slog.Logger) (Enforcer, io.Closer, error) {
			if err := h.injected("enforcer"); err != nil {
				return nil, nil, err
			}
			h.record("open nftables")
			return &recordingEnforcer{Enforcer: policy.NewEnforcer(h.nft, iface, log), h: h}, closer(func() { h.record("close nftables") }), nil
		},
		Device: func(opts wgdev.Options) (Device, error) {
			if err := h.injected("device"); err != nil {
				return nil, err
			}
			return h.createLink(opts.Name)
		},
		Join: func(mc cluster.MembershipConfig, kick func()) (Cluster, error) {
			if err := h.injected("join"); err != nil {
				return nil, err
			}
			h.mu.Lock()
			joining := h.joining
			h.mu.Unlock()
			if joining != nil {
				<-joining
			}
			tr := h.tr
			if mc.BindPort == 7947 { // the WAN pool: a gateway's second leg
				if h.wanTr == nil {
					return nil, errors.New("test host " + h.name + " has no WAN transport")
				}
				tr = h.wanTr
				h.record("join WAN")
			} else {
				h.record("join")
			}
			mc.Tune = fastGossip(tr)
			if h.tune != nil {
				mc.Tune = h.tune(tr)
			}
			m, err := cluster.Join(mc, kick)
			if err != nil {
				return nil, err
			}
			rc := &recordingCluster{Membership: m, h: h, wan: tr == h.wanTr}
			if rc.wan {
				h.mu.Lock()
				h.wanPool = rc
				h.mu.Unlock()
			}
			return rc, nil
		},
		ConfigWriter: func(dir string) ConfigWriter { return cni.NewWriter(dir) },
		Echo: func(ctx context.Context, src, dst netip.Addr) error {
			if h.echo == nil {
				return errors.New("no route")
			}
			return h.echo(src, dst)
		},
	}
}

type closer func()

func (c closer) Close() error { c(); return nil }

type recordingEnforcer struct {
	*policy.Enforcer
	h *testHost
}

func (e *recordingEnforcer) Apply(rs *policy.Ruleset) error {
	err := e.Enforcer.Apply(rs)
	if err == nil {
		e.h.record("apply allow-list")
	}
	return err
}

func (e *recordingEnforcer) Flush() error {
	had := e.h.nft.HasTable(policy.TableName)
	err := e.Enforcer.Flush()
	if err == nil && had {
		e.h.record("remove allow-list")
	}
	return err
}

type recordingCluster struct {
	*cluster.Membership
	h *testHost
	// wan marks the WAN pool, whose tag updates the host counts.
	wan bool
}

// SetTags counts the WAN pool's announcements: a site's churn must not
// cause any.
func (c *recordingCluster) SetTags(tags map[string]string) error {
	if c.wan {
		c.h.mu.Lock()
		c.h.wanUpdates++
		c.h.mu.Unlock()
	}
	return c.Membership.SetTags(tags)
}

func (h *testHost) wan() *recordingCluster {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.wanPool
}

func (h *testHost) wanAnnouncements() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.wanUpdates
}

func (c *recordingCluster) Leave() error {
	c.h.record("leave")
	return c.Membership.Leave()
}

// fakeDevice is a WireGuard interface in the fake kernel: a link in nl
// (so tunnel routes can point at it) and a device holding peers.
type fakeDevice struct {
	*wgdevtest.Client
	h     *testHost
	name  string
	index int

	mu     sync.Mutex
	key    wgtypes.Key
	port   int
	addrs  []netip.Prefix
	closed bool
}

// createLink refuses a name that is taken, as wgdev.Open does for a link
// meshd cannot prove is its own; a leftover of meshd's is replaced.
func (h *testHost) createLink(name string) (*fakeDevice, error) {
	h.mu.Lock()
	old := h.links[name]
	h.mu.Unlock()
	if old != nil {
		h.record("remove stale interface")
		h.deleteLink(name)
	}
	d := &fakeDevice{Client: wgdevtest.NewClient(), h: h, name: name, index: h.nl.AddLink(name)}
	h.mu.Lock()
	h.links[name] = d
	h.mu.Unlock()
	h.record("create interface")
	return d, nil
}

// deleteLink removes an interface as `ip link del` would: its peers and
// the routes through it are gone.
func (h *testHost) deleteLink(name string) {
	h.mu.Lock()
	delete(h.links, name)
	h.mu.Unlock()
	h.nl.DelLink(name)
}

func (h *testHost) link(name string) *fakeDevice {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.links[name]
}

// SetAddrs records the interface's addresses.
func (d *fakeDevice) SetAddrs(addrs []netip.Prefix) error {
	if err := d.Present(); err != nil {
		return err
	}
	d.mu.Lock()
	d.addrs = slices.Clone(addrs)
	d.mu.Unlock()
	return nil
}

func (d *fakeDevice) Name() string     { return d.name }
func (d *fakeDevice) Kind() wgdev.Mode { return wgdev.ModeUserspace }

func (d *fakeDevice) Present() error {
	if d.h.link(d.name) != d {
		return errors.New("interface " + d.name + " is gone")
	}
	return nil
}

func (d *fakeDevice) Device(name string) (*wgtypes.Device, error) {
	if err := d.Present(); err != nil {
		return nil, err
	}
	dev, err := d.Client.Device(name)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	dev.Name, dev.PrivateKey, dev.PublicKey, dev.ListenPort = d.name, d.key, d.key.PublicKey(), d.port
	d.mu.Unlock()
	return dev, nil
}

func (d *fakeDevice) ConfigureDevice(name string, cfg wgtypes.Config) error {
	if err := d.Present(); err != nil {
		return err
	}
	if err := d.h.injected("configure key"); err != nil && cfg.PrivateKey != nil {
		return err
	}
	d.mu.Lock()
	if cfg.PrivateKey != nil {
		d.key = *cfg.PrivateKey
	}
	if cfg.ListenPort != nil {
		d.port = *cfg.ListenPort
	}
	d.mu.Unlock()
	return d.Client.ConfigureDevice(name, cfg)
}

func (d *fakeDevice) Close() error {
	d.h.mu.Lock()
	hang := d.h.hang
	d.h.mu.Unlock()
	if hang != nil {
		<-hang
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.h.link(d.name) == d {
		d.h.deleteLink(d.name)
		d.h.record("remove interface")
	}
	return nil
}

// peerKeys lists the public keys a host's interface holds, by the names
// of the hosts they belong to.
func (h *testHost) peerKeys() map[wgtypes.Key]bool {
	out := map[wgtypes.Key]bool{}
	d := h.link("mesh0")
	if d == nil {
		return out
	}
	dev, err := d.Client.Device("mesh0")
	if err != nil {
		return out
	}
	for _, p := range dev.Peers {
		out[p.PublicKey] = true
	}
	return out
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	began := time.Now()
	var err error
	for time.Since(began) < timeout {
		if err = cond(); err == nil {
			return time.Since(began)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
	return 0
}

// fakeHostView is the host as the checks before a start see it: one
// underlay address on u0 in 198.18.0.0/15, where the test network puts
// every member, and WireGuard interfaces that are all meshd's.
type fakeHostView struct{ h *testHost }

func (f fakeHostView) Addrs() ([]HostAddr, error) {
	return []HostAddr{{Prefix: netip.PrefixFrom(f.h.addr, 15), Link: "u0"}}, nil
}

func (f fakeHostView) RouteTo(a netip.Addr) (HostRoute, error) {
	return HostRoute{Dst: netip.PrefixFrom(f.h.addr, 15).Masked(), Link: "u0"}, nil
}

func (f fakeHostView) CheckInterface(string) error { return nil }

func (f fakeHostView) Forwarding() (bool, bool, error) { return true, true, nil }
