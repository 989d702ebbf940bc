// Package cluster is meshd's membership adapter: a serf agent (encrypted
// gossip over memberlist) whose members it hands to the pure core as
// mesh.Member values, and whose tags carry this host's announcement. All
// serf side effects live here.
package cluster

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/meshd/meshd/mesh"
)

// MembershipConfig configures this host's serf agent.
type MembershipConfig struct {
	NodeName      string
	BindAddr      netip.Addr
	BindPort      int
	AdvertiseAddr netip.Addr
	GossipKey     []byte
	// KeyringFile persists the gossip keyring: once keys are rotated with
	// `meshd gossip-key`, it, not GossipKey, is what a restart uses.
	KeyringFile string
	Tags        map[string]string
	// SnapshotPath lets a restarted host rejoin the members it last knew,
	// even when every configured seed is gone.
	SnapshotPath string
	Join         []string
	Log          *slog.Logger
	// Profile is memberlist's timer set: "lan" (default), "wan" or
	// "local". ProbeInterval, when non-zero, overrides its probe interval.
	Profile       string
	ProbeInterval time.Duration
	// Tune lets tests and benchmarks shorten serf's timers; nil keeps the
	// LAN defaults.
	Tune func(*serf.Config)
}

// Membership is this host's serf agent. Its event channel is drained by
// its own goroutine, because a blocked channel stalls serf's own state
// updates; each event becomes a non-blocking kick to the reconciler.
type Membership struct {
	serf   *serf.Serf
	events chan serf.Event
	log    *slog.Logger
	join   []string
	// conflict remembers the address serf last named as holding this
	// host's name, for the error when serf gives up over it.
	conflict *conflictLog

	stop context.CancelFunc
	wg   sync.WaitGroup
	// failed carries why serf stopped without Leave (a lost name
	// conflict); it is closed by Leave.
	failed chan error

	leaveMu  sync.Mutex
	leftOnce bool
}

// Timing of a graceful leave: every host of a cluster stopping at once
// (a whole-site reboot) has nobody left to acknowledge the broadcast, and
// serf would wait out its default five seconds.
const (
	leaveBroadcastTimeout = 1 * time.Second
	leavePropagateDelay   = 300 * time.Millisecond
	leaveBudget           = 1500 * time.Millisecond
)

// JoinCluster starts serf and keeps trying the seeds in the background for
// as long as this host is alone, so hosts may start in any order.
func Join(cfg MembershipConfig, kick func()) (*Membership, error) {
	conf := serf.DefaultConfig()
	conf.Init()
	conf.NodeName = cfg.NodeName
	conf.Tags = cfg.Tags
	conf.SnapshotPath = cfg.SnapshotPath
	conf.RejoinAfterLeave = true
	conf.MemberlistConfig = memberlistProfile(cfg.Profile, cfg.ProbeInterval)
	ml := conf.MemberlistConfig
	ml.Name = cfg.NodeName
	ml.BindAddr = cfg.BindAddr.String()
	ml.BindPort = cfg.BindPort
	if cfg.AdvertiseAddr.IsValid() {
		ml.AdvertiseAddr = cfg.AdvertiseAddr.String()
		ml.AdvertisePort = cfg.BindPort
	}
	keyring, err := loadKeyring(cfg.KeyringFile, cfg.GossipKey)
	if err != nil {
		return nil, err
	}
	ml.Keyring = keyring
	conf.KeyringFile = cfg.KeyringFile
	// Encrypted gossip only: refuse plaintext and unencrypted peers.
	ml.GossipVerifyIncoming = true
	ml.GossipVerifyOutgoing = true
	conflict := &conflictLog{}
	logger := serfLogger(cfg.Log, conflict)
	ml.Logger = logger
	conf.Logger = logger
	conf.BroadcastTimeout = leaveBroadcastTimeout
	conf.LeavePropagateDelay = leavePropagateDelay
	events := make(chan serf.Event, 256)
	conf.EventCh = events
	if cfg.Tune != nil {
		cfg.Tune(conf)
	}

	s, err := serf.Create(conf)
	if err != nil {
		return nil, fmt.Errorf("start serf on %s: %w", net.JoinHostPort(ml.BindAddr, strconv.Itoa(ml.BindPort)), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Membership{serf: s, events: events, log: cfg.Log, join: cfg.Join, stop: cancel, conflict: conflict, failed: make(chan error, 1)}
	m.wg.Add(4)
	go m.watchShutdown(ctx)
	go m.drain(ctx, kick)
	go m.joinLoop(ctx)
	go func() {
		defer m.wg.Done()
		tick := time.NewTicker(intentPoll)
		defer tick.Stop()
		kickOnClockChange(ctx, m.LamportTime, tick.C, kick)
	}()
	return m, nil
}

// memberlistProfile returns the named timer set. A shorter probe interval
// shortens the suspicion timeout with it (memberlist scales one by the
// other); the probe timeout must stay below the interval.
func memberlistProfile(profile string, probeInterval time.Duration) *memberlist.Config {
	var ml *memberlist.Config
	switch profile {
	case "wan":
		ml = memberlist.DefaultWANConfig()
	case "local":
		ml = memberlist.DefaultLocalConfig()
	default:
		ml = memberlist.DefaultLANConfig()
	}
	if probeInterval > 0 {
		ml.ProbeInterval = probeInterval
		ml.ProbeTimeout = min(ml.ProbeTimeout, probeInterval/2)
	}
	return ml
}

// intentPoll is how often leave intents are looked for; see
// kickOnClockChange.
const intentPoll = 200 * time.Millisecond

// kickOnClockChange covers what serf emits no event for. A leave intent
// marks the member "leaving" (which Compute drops), and EventMemberLeave
// only follows once memberlist's own leave broadcast arrives: on a loaded
// network that can be many seconds later, or never, leaving failure
// detection to catch it. Every intent advances serf's Lamport clock, so a
// clock change kicks the reconciler, and so does the poll after it,
// because the clock moves just before the member's status does.
// The ticker is the caller's, so a test can step it.
func kickOnClockChange(ctx context.Context, clock func() uint64, tick <-chan time.Time, kick func()) {
	last, settling := clock(), false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			now := clock()
			if now != last || settling {
				kick()
			}
			settling, last = now != last, now
		}
	}
}

func (m *Membership) drain(ctx context.Context, kick func()) {
	defer m.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-m.events:
			if me, ok := ev.(serf.MemberEvent); ok {
				for _, mem := range me.Members {
					m.log.Debug("serf member event", "event", me.Type.String(), "member", mem.Name, "addr", mem.Addr.String())
				}
			}
			kick()
		}
	}
}

// watchShutdown turns serf stopping on its own into a fatal error: after
// losing a node-name conflict serf quits, and a meshd carrying on without
// it would keep routes to a cluster it no longer hears.
func (m *Membership) watchShutdown(ctx context.Context) {
	defer m.wg.Done()
	select {
	case <-ctx.Done():
		return
	case <-m.serf.ShutdownCh():
	}
	if ctx.Err() != nil {
		return // Leave stopped it
	}
	err := errors.New("serf stopped unexpectedly")
	if addr := m.conflict.get(); addr != "" {
		err = fmt.Errorf("node_name %q is also used by the host at %s, and serf gave the name to it; give every host a unique node_name", m.serf.LocalMember().Name, addr)
	}
	m.failed <- err
}

// Failed delivers an error if serf stopped without Leave being called.
func (m *Membership) Failed() <-chan error { return m.failed }

// aloneWarnEvery spaces the warnings of a host that cannot join: often
// enough to be seen, rarely enough not to flood the log.
const aloneWarnEvery = time.Minute

// joinLoop retries the seeds with backoff whenever this host sees no other
// live member, so a seed that starts late, or a whole-cluster restart,
// heals without an operator. While alone it warns, naming the seeds and
// the last error, so a host that never joins is not silent.
func (m *Membership) joinLoop(ctx context.Context) {
	defer m.wg.Done()
	if len(m.join) == 0 {
		return
	}
	const firstRetry = 500 * time.Millisecond
	backoff := firstRetry
	alone := true
	aloneSince := time.Now()
	var lastWarn time.Time
	for {
		if m.aliveOthers() == 0 {
			if !alone {
				m.log.Warn("no other live member; retrying the seeds", "seeds", m.join)
				aloneSince, lastWarn = time.Now(), time.Now()
			}
			alone = true
			// A seed list usually contains this host itself, which
			// "succeeds" without ending the isolation, so success alone
			// does not reset the backoff: finding another member does.
			n, err := m.serf.Join(m.join, true)
			if err != nil && n == 0 {
				m.log.Debug("join failed", "seeds", m.join, "err", err)
			}
			if time.Since(aloneSince) > 10*time.Second && time.Since(lastWarn) >= aloneWarnEvery {
				lastWarn = time.Now()
				last := "none of the seeds answered as another member"
				if err != nil {
					last = err.Error()
				}
				m.log.Warn("still alone: no other live member yet; check that the seeds run meshd, share the gossip key, and that TCP and UDP to the gossip port are open",
					"seeds", m.join, "alone_for", time.Since(aloneSince).Round(time.Second), "last_error", last)
			}
			backoff = min(backoff*2, 30*time.Second)
		} else {
			if alone {
				m.log.Info("joined cluster", "members", len(m.serf.Members()))
			}
			alone, backoff = false, firstRetry
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

func (m *Membership) aliveOthers() int {
	n := 0
	local := m.serf.LocalMember().Name
	for _, mem := range m.serf.Members() {
		if mem.Name != local && mem.Status == serf.StatusAlive {
			n++
		}
	}
	return n
}

// Members returns every known member with its state. Safe for concurrent
// use.
func (m *Membership) Members() []mesh.Member {
	sm := m.serf.Members()
	out := make([]mesh.Member, 0, len(sm))
	for _, mem := range sm {
		addr, _ := netip.AddrFromSlice(mem.Addr)
		out = append(out, mesh.Member{Name: mem.Name, Addr: addr.Unmap(), Status: statusOf(mem.Status), Tags: mem.Tags})
	}
	return out
}

func statusOf(s serf.MemberStatus) mesh.Status {
	switch s {
	case serf.StatusAlive:
		return mesh.StatusAlive
	case serf.StatusLeaving:
		return mesh.StatusLeaving
	case serf.StatusLeft:
		return mesh.StatusLeft
	default:
		return mesh.StatusFailed
	}
}

// loadKeyring prefers the persisted keyring (primary key first, as serf
// writes it) over the configured gossip key.
func loadKeyring(path string, gossipKey []byte) (*memberlist.Keyring, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) || path == "" {
		return memberlist.NewKeyring(nil, gossipKey)
	}
	if err != nil {
		return nil, fmt.Errorf("read gossip keyring: %w", err)
	}
	var encoded []string
	if err := json.Unmarshal(raw, &encoded); err != nil || len(encoded) == 0 {
		return nil, fmt.Errorf("gossip keyring %s is not a JSON list of base64 keys; remove it to fall back to cluster.gossip_key_file", path)
	}
	keys := make([][]byte, len(encoded))
	for i, e := range encoded {
		if keys[i], err = base64.StdEncoding.DecodeString(e); err != nil {
			return nil, fmt.Errorf("gossip keyring %s: key %d is not base64", path, i)
		}
	}
	kr, err := memberlist.NewKeyring(keys, keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip keyring %s: %w", path, err)
	}
	return kr, nil
}

// LamportTime is serf's member clock: the order in which every host saw
// membership changes, used to order slice claims the same way everywhere.
func (m *Membership) LamportTime() uint64 {
	t, _ := strconv.ParseUint(m.serf.Stats()["member_time"], 10, 64)
	return t
}

// SetTags republishes this host's announcement.
func (m *Membership) SetTags(tags map[string]string) error {
	return m.serf.SetTags(tags)
}

// Serf exposes the agent for diagnostics.
func (m *Membership) Serf() *serf.Serf { return m.serf }

// KeyResponse is what a keyring operation reports from every member.
type KeyResponse = serf.KeyResponse

// KeyringOp runs a gossip keyring operation ("list", "install", "use",
// "remove") on every member. It waits for the members' answers and is
// safe for concurrent use.
func (m *Membership) KeyringOp(op, key string) (*KeyResponse, error) {
	km := m.serf.KeyManager()
	switch op {
	case "list":
		return km.ListKeys()
	case "install":
		return km.InstallKey(key)
	case "use":
		return km.UseKey(key)
	case "remove":
		return km.RemoveKey(key)
	}
	return nil, fmt.Errorf("unknown keyring operation %q", op)
}

// Leave announces a graceful leave, so peers drop this host at once rather
// than after failure detection, then stops serf. It returns within about
// leaveBudget even when nobody acknowledges. Safe to call many times.
func (m *Membership) Leave() error {
	m.leaveMu.Lock()
	defer m.leaveMu.Unlock()
	if m.leftOnce {
		return nil
	}
	m.leftOnce = true
	m.stop()
	var err error
	// With nobody to tell, serf's leave would only wait out its broadcast
	// timeout and delay shutdown by seconds. A serf that already stopped
	// (a lost name conflict) cannot leave at all.
	if m.aliveOthers() > 0 && m.serf.State() == serf.SerfAlive {
		done := make(chan error, 1)
		go func() { done <- m.serf.Leave() }()
		select {
		case err = <-done:
		case <-time.After(leaveBudget):
			m.log.Debug("graceful leave not acknowledged in time; shutting down anyway", "waited", leaveBudget)
		}
	}
	if serr := m.serf.Shutdown(); err == nil {
		err = serr
	}
	m.wg.Wait()
	close(m.failed)
	return err
}

// serfLogger routes serf's and memberlist's "[LEVEL] text" lines into
// slog at the matching level.
func serfLogger(l *slog.Logger, conflict *conflictLog) *log.Logger {
	return log.New(&levelWriter{l: l, conflict: conflict}, "", 0)
}

// conflictLog keeps the address in serf's name-conflict error: serf
// reports it only as a log line, and meshd's own error must name it.
type conflictLog struct {
	mu   sync.Mutex
	addr string
}

// conflictMarker is how serf (v0.11) words a name conflict, followed by
// the other node's address.
const conflictMarker = "Node name conflicts with another node at "

func (c *conflictLog) note(line string) {
	_, rest, ok := strings.Cut(line, conflictMarker)
	if !ok {
		return
	}
	addr, _, _ := strings.Cut(rest, ".  ")
	addr, _, _ = strings.Cut(addr, " ")
	c.mu.Lock()
	c.addr = strings.TrimSuffix(addr, ".")
	c.mu.Unlock()
}

func (c *conflictLog) get() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

type levelWriter struct {
	l        *slog.Logger
	conflict *conflictLog
}

func (w *levelWriter) Write(p []byte) (int, error) {
	if w.conflict != nil {
		w.conflict.note(string(p))
	}
	line := string(bytes.TrimSpace(p))
	level := slog.LevelDebug
	for prefix, lv := range map[string]slog.Level{"[ERR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelDebug} {
		if i := bytes.Index(p, []byte(prefix)); i >= 0 {
			level = lv
			line = string(bytes.TrimSpace(p[i+len(prefix):]))
			break
		}
	}
	w.l.Log(context.Background(), level, line, "component", "serf")
	return len(p), nil
}

var _ io.Writer = (*levelWriter)(nil)
