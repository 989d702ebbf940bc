package mesh

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
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
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

	stop     context.CancelFunc
	wg       sync.WaitGroup
	leaveMu  sync.Mutex
	leftOnce bool
}

// JoinCluster starts serf and keeps trying the seeds in the background for
// as long as this host is alone, so hosts may start in any order.
func JoinCluster(cfg MembershipConfig, kick func()) (*Membership, error) {
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
	logger := serfLogger(cfg.Log)
	ml.Logger = logger
	conf.Logger = logger
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
	m := &Membership{serf: s, events: events, log: cfg.Log, join: cfg.Join, stop: cancel}
	m.wg.Add(3)
	go m.drain(ctx, kick)
	go m.joinLoop(ctx)
	go func() {
		defer m.wg.Done()
		kickOnClockChange(ctx, m.LamportTime, intentPoll, kick)
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
func kickOnClockChange(ctx context.Context, clock func() uint64, every time.Duration, kick func()) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	last, settling := clock(), false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
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

// joinLoop retries the seeds with backoff whenever this host sees no other
// live member, so a seed that starts late, or a whole-cluster restart,
// heals without an operator.
func (m *Membership) joinLoop(ctx context.Context) {
	defer m.wg.Done()
	if len(m.join) == 0 {
		return
	}
	const firstRetry = 500 * time.Millisecond
	backoff := firstRetry
	alone := true
	for {
		if m.aliveOthers() == 0 {
			if !alone {
				m.log.Warn("no other live member; retrying the seeds", "seeds", m.join)
			}
			alone = true
			// A seed list usually contains this host itself, which
			// "succeeds" without ending the isolation, so success alone
			// does not reset the backoff: finding another member does.
			if n, err := m.serf.Join(m.join, true); err != nil && n == 0 {
				m.log.Debug("join failed", "seeds", m.join, "err", err)
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
func (m *Membership) Members() []Member {
	sm := m.serf.Members()
	out := make([]Member, 0, len(sm))
	for _, mem := range sm {
		addr, _ := netip.AddrFromSlice(mem.Addr)
		out = append(out, Member{Name: mem.Name, Addr: addr.Unmap(), Status: statusOf(mem.Status), Tags: mem.Tags})
	}
	return out
}

func statusOf(s serf.MemberStatus) Status {
	switch s {
	case serf.StatusAlive:
		return StatusAlive
	case serf.StatusLeaving:
		return StatusLeaving
	case serf.StatusLeft:
		return StatusLeft
	default:
		return StatusFailed
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

// Serf exposes the agent for keyring management and diagnostics.
func (m *Membership) Serf() *serf.Serf { return m.serf }

// Leave announces a graceful leave, so peers drop this host at once rather
// than after failure detection, then stops serf. Safe to call many times.
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
	// timeout and delay shutdown by seconds.
	if m.aliveOthers() > 0 {
		err = m.serf.Leave()
	}
	if serr := m.serf.Shutdown(); err == nil {
		err = serr
	}
	m.wg.Wait()
	return err
}

// serfLogger routes serf's and memberlist's "[LEVEL] text" lines into
// slog at the matching level.
func serfLogger(l *slog.Logger) *log.Logger {
	return log.New(&levelWriter{l: l}, "", 0)
}

type levelWriter struct{ l *slog.Logger }

func (w *levelWriter) Write(p []byte) (int, error) {
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
