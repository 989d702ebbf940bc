package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/internal/clustertest"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
)

// The whole daemon, in-process and without root: real config loading,
// the real reconciler, routes.Manager, policy.Enforcer and serf, with the
// kernel, the WireGuard devices and the network replaced by fakes.

// running is a daemon whose loop runs in the background.
type running struct {
	d      *Daemon
	cancel context.CancelFunc
	done   chan error
	// closeChecked: the test already judged Close's error.
	closeChecked bool
}

func startDaemon(t *testing.T, h *testHost, cfg *config.Config, opts Options) *running {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", h.name)
	}
	d := New(cfg, log, h.system(), opts)
	ctx, cancel := context.WithCancel(context.Background())
	if err := d.Start(ctx); err != nil {
		cancel()
		d.Close()
		t.Fatalf("%s: start: %v", h.name, err)
	}
	r := &running{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop is SIGTERM: the loop ends, then everything is undone.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Errorf("run: %v", err)
	}
	r.done <- nil // a second stop returns at once
	if err := r.d.Close(); err != nil && !r.closeChecked {
		t.Errorf("close: %v", err)
	}
}

type cluster3 struct {
	net   *clustertest.Network
	key   string
	hosts []*testHost
}

func newCluster3(t *testing.T) *cluster3 {
	c := &cluster3{net: clustertest.NewNetwork(), key: gossipKeyFile(t)}
	for i := 1; i <= 3; i++ {
		c.hosts = append(c.hosts, newTestHost(t, c.net, fmt.Sprintf("h%d", i)))
	}
	return c
}

func (c *cluster3) config(i int, extra string) *config.Config {
	return c.hosts[i-1].config(c.text(i, extra))
}

// text is host i's meshd.toml, joining the other hosts.
func (c *cluster3) text(i int, extra string) string {
	h := c.hosts[i-1]
	var join []string
	for _, o := range c.hosts {
		if o != h {
			join = append(join, o.tr.Addr())
		}
	}
	return h.configText(c.key, join, i, extra)
}

func (h *testHost) publicKey() wgtypes.Key {
	h.t.Helper()
	k, err := crypto.LoadPrivateKey(filepath.Join(h.dir, "data", crypto.KeyFileName))
	if err != nil {
		h.t.Fatal(err)
	}
	return k.PublicKey()
}

// meshed checks that h has exactly the given hosts as WireGuard peers and
// a tunnel route to each one's blue slice.
func meshed(h *testHost, others ...*testHost) error {
	keys := h.peerKeys()
	if len(keys) != len(others) {
		return fmt.Errorf("%s has %d peers, want %d", h.name, len(keys), len(others))
	}
	rs := strings.Join(h.nl.Routes(), "\n")
	for _, o := range others {
		if !keys[o.publicKey()] {
			return fmt.Errorf("%s has no peer with %s's key", h.name, o.name)
		}
		i := o.name[1:]
		if !strings.Contains(rs, "10.42."+i+".0/24 tunnel") {
			return fmt.Errorf("%s has no tunnel route to %s's slice:\n%s", h.name, o.name, rs)
		}
	}
	return nil
}

func TestStartAndShutdownOrder(t *testing.T) {
	c := newCluster3(t)
	h := c.hosts[0]
	r := startDaemon(t, h, c.config(1, ""), Options{})
	// The allow-list before the interface (no unfiltered moment), routes
	// and rules before the cluster is joined (no packet to the overlay can
	// take the underlay), the join last.
	want := []string{"lock", "open netlink", "open nftables", "apply allow-list", "create interface", "join"}
	if got := h.takeEvents(); !slices.Equal(got, want) {
		t.Fatalf("start created\n  %q\nwant\n  %q", got, want)
	}
	if !h.nft.HasTable(policy.TableName) {
		t.Fatal("no nftables table after start")
	}
	if rules := h.nl.Rules(); len(rules) != 4 {
		t.Fatalf("%d rules after start, want 4 (from and to, two segments): %v", len(rules), rules)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "meshd.sock")); err != nil {
		t.Fatalf("control socket: %v", err)
	}

	r.stop(t)
	want = []string{"leave", "remove interface", "remove allow-list", "close nftables", "close netlink", "unlock"}
	if got := h.takeEvents(); !slices.Equal(got, want) {
		t.Fatalf("shutdown removed\n  %q\nwant\n  %q", got, want)
	}
	assertClean(t, h)
}

// assertClean checks that nothing meshd creates is left on the host.
func assertClean(t *testing.T, h *testHost) {
	t.Helper()
	if rs, rules := h.nl.Routes(), h.nl.Rules(); len(rs)+len(rules) != 0 {
		t.Errorf("left routes %v and rules %v", rs, rules)
	}
	if h.nft.HasTable(policy.TableName) {
		t.Error("left the nftables table")
	}
	if h.link("mesh0") != nil {
		t.Error("left the interface")
	}
	if _, err := os.Stat(filepath.Join(h.dir, "meshd.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("left the control socket: %v", err)
	}
}

// A start that fails at any step undoes exactly what it created, in
// reverse, and returns the step's error.
func TestFailedStartIsUndone(t *testing.T) {
	for _, tc := range []struct {
		step string
		undo []string
	}{
		{"router", []string{"unlock"}},
		{"enforcer", []string{"close netlink", "unlock"}},
		{"device", []string{"remove allow-list", "close nftables", "close netlink", "unlock"}},
		{"join", []string{"remove interface", "remove allow-list", "close nftables", "close netlink", "unlock"}},
	} {
		t.Run(tc.step, func(t *testing.T) {
			c := newCluster3(t)
			h := c.hosts[0]
			injected := errors.New("injected failure at " + tc.step)
			h.failOn(tc.step, injected)
			d := New(c.config(1, ""), slog.New(slog.DiscardHandler), h.system(), Options{})
			err := d.Start(context.Background())
			if !errors.Is(err, injected) {
				t.Fatalf("start: %v, want the injected error", err)
			}
			h.takeEvents()
			if err := d.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if got := h.takeEvents(); !slices.Equal(got, tc.undo) {
				t.Fatalf("undo\n  %q\nwant\n  %q", got, tc.undo)
			}
			assertClean(t, h)
		})
	}
}

// A second daemon with the same control socket fails after it created
// its own interface and table; undoing that must not touch the running
// daemon's files. (CNI configs stay when meshd stops anyway; this is the
// case that once removed them from under a running daemon.)
func TestFailedSecondStartLeavesTheFirstAlone(t *testing.T) {
	c := newCluster3(t)
	first := c.hosts[0]
	cfg := c.config(1, "")
	startDaemon(t, first, cfg, Options{})
	eventually(t, 5*time.Second, "first daemon's CNI config", func() error {
		_, err := os.Stat(filepath.Join(first.dir, "cni", "10-meshd-blue.conflist"))
		return err
	})
	second := newTestHost(t, c.net, "h1")
	second.addr = first.addr // the same machine's address, in another namespace
	d := New(cfg, slog.New(slog.DiscardHandler), second.system(), Options{})
	if err := d.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "control socket") {
		t.Fatalf("second start: %v, want a control socket refusal", err)
	}
	d.Close()
	if _, err := os.Stat(filepath.Join(first.dir, "cni", "10-meshd-blue.conflist")); err != nil {
		t.Fatalf("the failed second start removed the running daemon's CNI config: %v", err)
	}
}

func TestClusterLifecycle(t *testing.T) {
	c := newCluster3(t)
	h1, h2, h3 := c.hosts[0], c.hosts[1], c.hosts[2]
	reloaded := c.config(1, `
[[allow]]
from = "green"
to = "blue"
ports = ["tcp/8080"]
`)
	c.config(1, "") // the file h1 starts from
	r1 := startDaemon(t, h1, c.config(1, ""), Options{Reload: func() (*config.Config, error) { return reloaded, nil }})
	startDaemon(t, h2, c.config(2, ""), Options{})
	r3 := startDaemon(t, h3, c.config(3, ""), Options{})

	took := eventually(t, 15*time.Second, "three hosts meshed", func() error {
		return errors.Join(meshed(h1, h2, h3), meshed(h2, h1, h3), meshed(h3, h1, h2))
	})
	t.Logf("joined and meshed in %s", took.Round(time.Millisecond))

	t.Run("reload", func(t *testing.T) {
		if err := control.NewClient(filepath.Join(h1.dir, "meshd.sock")).Post("/v1/reload"); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(r1.d.Status().Policy, func(p control.PolicyCounter) bool { return p.Label == "allow[0]" }) {
			t.Fatalf("allow[0] not enforced after reload: %+v", r1.d.Status().Policy)
		}
		if err := meshed(h1, h2, h3); err != nil {
			t.Fatalf("reload disturbed the mesh: %v", err)
		}
	})

	t.Run("rotate key", func(t *testing.T) {
		old := h2.publicKey()
		var out map[string]string
		if err := control.NewClient(filepath.Join(h2.dir, "meshd.sock")).PostJSON("/v1/rotate-key", "", &out); err != nil {
			t.Fatal(err)
		}
		if h2.publicKey() == old || out["public_key"] != h2.publicKey().String() {
			t.Fatalf("key file %s, answer %s, old %s", h2.publicKey(), out["public_key"], old)
		}
		took := eventually(t, 10*time.Second, "peers learn h2's new key", func() error {
			for _, h := range []*testHost{h1, h3} {
				if h.peerKeys()[old] {
					return fmt.Errorf("%s still has h2's old key", h.name)
				}
			}
			return errors.Join(meshed(h1, h2, h3), meshed(h3, h1, h2))
		})
		t.Logf("rotation reached every peer in %s", took.Round(time.Millisecond))
	})

	t.Run("leave", func(t *testing.T) {
		r3.stop(t)
		took := eventually(t, 5*time.Second, "h3 dropped after its graceful leave", func() error {
			return errors.Join(meshed(h1, h2), meshed(h2, h1))
		})
		t.Logf("graceful leave seen everywhere in %s", took.Round(time.Millisecond))
		if st := memberStatus(r1.d, "h3"); st != mesh.StatusLeft {
			t.Errorf("h1 sees h3 as %q after its graceful leave, want left", st)
		}
		assertClean(t, h3)
	})

	t.Run("failure and crash cleanup", func(t *testing.T) {
		r3 := startDaemon(t, h3, c.config(3, ""), Options{})
		eventually(t, 15*time.Second, "h3 back", func() error {
			return errors.Join(meshed(h1, h2, h3), meshed(h3, h1, h2))
		})
		key := h3.publicKey()
		// A crash: the process is gone without a word to anyone, and
		// everything it put into the kernel stays.
		c.net.Cut("h3")
		r3.cancel()
		<-r3.done
		r3.d.members.Leave() // stops serf; the cut keeps anything from leaving
		r3.done <- nil
		r3.d.closeOnce.Do(func() {}) // never undone, as after a SIGKILL
		// A dead process answers nothing on its socket, whose file stays.
		r3.d.ctrl.Close()
		staleSocket(t, filepath.Join(h3.dir, "meshd.sock"))
		took := eventually(t, 15*time.Second, "h3 detected as failed", func() error {
			return errors.Join(meshed(h1, h2), meshed(h2, h1))
		})
		t.Logf("failure detected in %s", took.Round(time.Millisecond))
		if st := memberStatus(r1.d, "h3"); st != mesh.StatusFailed {
			t.Errorf("h1 sees the crashed h3 as %q, want failed", st)
		}
		if len(h3.nl.Routes()) == 0 || !h3.nft.HasTable(policy.TableName) || h3.link("mesh0") == nil {
			t.Fatal("the simulated crash removed state; it must leave it as a killed process would")
		}

		// Same host, same kernel, same data_dir, a new process.
		h3.net.Heal("h3")
		h3.tr = c.net.NewTransport("h3-restarted")
		h3.takeEvents()
		startDaemon(t, h3, c.config(3, ""), Options{})
		if ev := h3.takeEvents(); !slices.Contains(ev, "remove stale interface") {
			t.Fatalf("restart events %q: the crashed run's interface was not replaced", ev)
		}
		eventually(t, 15*time.Second, "h3 back after the crash, with the same key", func() error {
			if h3.publicKey() != key {
				return errors.New("h3's key changed across the restart")
			}
			return errors.Join(meshed(h1, h2, h3), meshed(h2, h1, h3), meshed(h3, h1, h2))
		})
	})
}

// staleSocket leaves a socket file that nothing serves, as a killed
// process does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
}

func memberStatus(d *Daemon, name string) mesh.Status {
	for _, m := range d.members.Members() {
		if m.Name == name {
			return m.Status
		}
	}
	return ""
}

// A teardown step that hangs (a device that stopped answering) is given
// up on, the steps after it still run, and Close returns within its
// budget, so SIGTERM always ends the process.
func TestCloseIsBoundedWhenADependencyHangs(t *testing.T) {
	c := newCluster3(t)
	h := c.hosts[0]
	d := New(c.config(1, ""), slog.New(slog.DiscardHandler), h.system(), Options{})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.hang = make(chan struct{})
	h.mu.Unlock()
	defer close(h.hang)
	h.takeEvents()
	began := time.Now()
	err := d.Close()
	took := time.Since(began)
	if err == nil || !strings.Contains(err.Error(), "WireGuard interface") {
		t.Errorf("Close = %v, want the hung step named", err)
	}
	if took > shutdownBudget+time.Second {
		t.Errorf("Close took %s with a hung device, budget %s", took, shutdownBudget)
	}
	// Everything after the hung step was still undone.
	if got := h.takeEvents(); !slices.Contains(got, "remove allow-list") || !slices.Contains(got, "unlock") {
		t.Errorf("after the hung step, Close did %q", got)
	}
}
