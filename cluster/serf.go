// Package cluster is meshd's membership adapter: a serf agent (encrypted
// gossip over memberlist) whose members it hands to the pure core as
// mesh.Member values, and whose tags carry this host's announcement. All
// serf side effects live here.
package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/meshd/meshd/internal/fileio"
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
	// OnEvent receives user events (broadcasts) of other members with
	// their Lamport time, which orders events of different senders as
	// far as one could have seen the other; it runs on the drain goroutine
	// and must not block.
	OnEvent func(name string, payload []byte, ltime uint64)
	// OnQuery answers queries of other members; a nil answer sends
	// nothing. It runs on the drain goroutine and must not block.
	OnQuery func(name string, payload []byte) []byte
}

// maxEventBytes bounds one broadcast: memberlist piggybacks broadcasts on
// gossip packets of at most 1400 bytes, and a larger one would never be
// sent.
const maxEventBytes = 1024

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
	// onEvent and onQuery are set at Join and never change.
	onEvent func(name string, payload []byte, ltime uint64)
	onQuery func(name string, payload []byte) []byte

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
	reconnectInterval     = 5 * time.Second
	// maxJoinBackoff caps the retries of a host that sees no other
	// member, for the same reason.
	maxJoinBackoff = 10 * time.Second
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
	keyring, adopted, err := LoadKeyring(cfg.KeyringFile, cfg.GossipKey)
	if err != nil {
		return nil, err
	}
	if adopted {
		cfg.Log.Warn("cluster.gossip_key_file holds a new key the saved keyring lacks: writing with it and keeping the saved keys for reading, so this host can rejoin a cluster that rotated its key while it was away",
			"keyring", cfg.KeyringFile, "key", keyFingerprint(cfg.GossipKey))
	}
	if info, err := os.Stat(cfg.KeyringFile); err == nil && !fileio.Private(info) {
		cfg.Log.Warn("gossip keyring is readable by other users; anyone who reads it can join the cluster: chmod 600 it",
			"path", cfg.KeyringFile, "mode", fmt.Sprintf("%04o", info.Mode().Perm()))
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
	// Serf retries failed members this often; its default of 30 s would
	// keep a partition apart for that long after the network healed.
	conf.ReconnectInterval = reconnectInterval
	events := make(chan serf.Event, 256)
	conf.EventCh = events
	conf.UserEventSizeLimit = maxEventBytes
	if cfg.Tune != nil {
		cfg.Tune(conf)
	}

	s, err := serf.Create(conf)
	if err != nil {
		return nil, fmt.Errorf("start serf on %s: %w", net.JoinHostPort(ml.BindAddr, strconv.Itoa(ml.BindPort)), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Membership{serf: s, events: events, log: cfg.Log, join: cfg.Join, stop: cancel, conflict: conflict, failed: make(chan error, 1),
		onEvent: cfg.OnEvent, onQuery: cfg.OnQuery}
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
			switch e := ev.(type) {
			case serf.MemberEvent:
				for _, mem := range e.Members {
					m.log.Debug("serf member event", "event", e.Type.String(), "member", mem.Name, "addr", mem.Addr.String())
				}
			case serf.UserEvent:
				if m.onEvent != nil {
					m.onEvent(e.Name, e.Payload, uint64(e.LTime))
				}
			case *serf.Query:
				if m.onQuery != nil {
					if answer := m.onQuery(e.Name, e.Payload); answer != nil {
						if err := e.Respond(answer); err != nil {
							m.log.Debug("answer query", "query", e.Name, "err", err)
						}
					}
				}
				continue // a query changes no member
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

// joinLoop retries the seeds with backoff until this host has merged
// with one of them, and again whenever it sees no other live member, so a
// seed that starts late, or a whole-cluster restart, heals without an
// operator. Others joining this host is not enough: when hosts start
// together, a host whose seed was not up yet can be joined by the hosts
// that list it, and that group would live on as its own cluster, never
// meeting the rest. While alone it warns, naming the seeds and the last
// error, so a host that never joins is not silent.
func (m *Membership) joinLoop(ctx context.Context) {
	defer m.wg.Done()
	if len(m.join) == 0 {
		return
	}
	// A seed list usually names this host too; joining itself "succeeds"
	// and proves nothing, so merging is judged on the other seeds.
	seeds := m.otherSeeds(ctx)
	const firstRetry = 500 * time.Millisecond
	backoff := firstRetry
	alone, merged := true, len(seeds) == 0
	aloneSince := time.Now()
	var lastWarn time.Time
	for {
		others := m.aliveOthers()
		switch {
		case others == 0:
			if !alone {
				m.log.Warn("no other live member; retrying the seeds", "seeds", m.join)
				aloneSince, lastWarn = time.Now(), time.Now()
			}
			alone, merged = true, len(seeds) == 0
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
			backoff = min(backoff*2, maxJoinBackoff)
		case !merged:
			if alone {
				m.log.Info("joined by other members; still reaching for the seeds", "members", len(m.serf.Members()), "seeds", seeds)
				alone = false
			}
			// A join that reached a seed exchanged full state with it:
			// the two groups are one from then on.
			n, err := m.serf.Join(seeds, true)
			if n > 0 {
				merged = true
				m.log.Info("joined cluster", "members", len(m.serf.Members()))
				backoff = firstRetry
				break
			}
			m.log.Debug("join failed", "seeds", seeds, "err", err)
			backoff = min(backoff*2, maxJoinBackoff)
		default:
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

// otherSeeds are the seeds that are not this host (as far as its
// advertised address and the seeds' names tell).
func (m *Membership) otherSeeds(ctx context.Context) []string {
	local := m.serf.LocalMember()
	localAddr, _ := netip.AddrFromSlice(local.Addr)
	self := netip.AddrPortFrom(localAddr.Unmap(), local.Port)
	var out []string
	for _, seed := range m.join {
		isSelf := false
		for _, ap := range resolveSeed(ctx, seed) {
			if ap == self || (ap.Addr().IsUnspecified() && ap.Port() == self.Port()) {
				isSelf = true
			}
		}
		if !isSelf {
			out = append(out, seed)
		}
	}
	return out
}

// seedLookupTimeout bounds the name lookup of a seed given by name.
const seedLookupTimeout = 2 * time.Second

// resolveSeed turns a seed (host:port, as the config normalised it) into
// addresses; a name that does not resolve gives none.
func resolveSeed(ctx context.Context, seed string) []netip.AddrPort {
	if ap, err := netip.ParseAddrPort(seed); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	}
	host, portText, err := net.SplitHostPort(seed)
	port, perr := strconv.ParseUint(portText, 10, 16)
	if err != nil || perr != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, seedLookupTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil
	}
	out := make([]netip.AddrPort, len(addrs))
	for i, a := range addrs {
		out[i] = netip.AddrPortFrom(a.Unmap(), uint16(port))
	}
	return out
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

// LoadKeyring returns the gossip keyring this host starts with. The
// keyring serf saved (primary key first) normally wins over
// cluster.gossip_key_file, which still holds the key the cluster started
// with after a rotation. But when the operator has put a different key
// into the file since this host last started (the way back for a host
// that was offline while the cluster rotated its key), that key becomes
// primary and the saved ones stay installed for reading. The file key
// last seen is remembered beside the keyring. adopted reports that case,
// for the log.
func LoadKeyring(path string, fileKey []byte) (kr *memberlist.Keyring, adopted bool, err error) {
	if path == "" {
		kr, err = memberlist.NewKeyring(nil, fileKey)
		return kr, false, err
	}
	saved, err := ReadKeyring(path)
	if err != nil {
		return nil, false, err
	}
	seen, seenErr := fileio.ReadRegular(path+seenSuffix, fileio.MaxKeySize)
	fp := keyFingerprint(fileKey)
	switch {
	case len(saved) == 0:
		kr, err = memberlist.NewKeyring(nil, fileKey)
	case slices.ContainsFunc(saved, func(k []byte) bool { return bytes.Equal(k, fileKey) }):
		kr, err = memberlist.NewKeyring(saved, saved[0])
	case seenErr == nil && strings.TrimSpace(string(seen)) != fp:
		kr, err = memberlist.NewKeyring(append([][]byte{fileKey}, saved...), fileKey)
		adopted = true
	default:
		// The file still holds a key the cluster rotated away from.
		kr, err = memberlist.NewKeyring(saved, saved[0])
	}
	if err != nil {
		return nil, false, fmt.Errorf("gossip keyring %s: %w", path, err)
	}
	if err := fileio.WriteAtomic(path+seenSuffix, []byte(fp+"\n"), 0o600, fileio.Overwrite); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("remember the gossip key file's key: %w", err)
	}
	return kr, adopted, nil
}

// seenSuffix names the file beside the keyring that holds the fingerprint
// of the gossip_key_file key this host last started with.
const seenSuffix = ".filekey"

// keyFingerprint identifies a key without revealing it.
func keyFingerprint(k []byte) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:8])
}

// KeyFingerprint is how operators see gossip keys (`gossip-key list`):
// enough to tell keys apart, nothing that would let anyone join.
func KeyFingerprint(base64Key string) string {
	raw, err := base64.StdEncoding.DecodeString(base64Key)
	if err != nil {
		return "?"
	}
	return keyFingerprint(raw)
}

// ReadKeyring reads the keyring serf saved; a missing file (or no path)
// is an empty keyring.
func ReadKeyring(path string) ([][]byte, error) {
	if path == "" {
		return nil, nil
	}
	raw, err := fileio.ReadRegular(path, fileio.MaxStateSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
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
		if n := len(keys[i]); n != 16 && n != 24 && n != 32 {
			return nil, fmt.Errorf("gossip keyring %s: key %d is %d bytes, not 16, 24 or 32", path, i, n)
		}
	}
	return keys, nil
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

// Broadcast sends a user event to every member. It is best effort, as
// gossip is: callers repeat what must arrive.
func (m *Membership) Broadcast(name string, payload []byte) error {
	return m.serf.UserEvent(name, payload, false)
}

// Retire broadcasts a leave intent for a member that failed, as serf's
// force-leave does: every member marks it leaving at once instead of
// after its own failure detection, and the member, if it is in fact
// alive, refutes the intent with a newer join. The broadcast waits for
// its first transmission (at most serf's BroadcastTimeout), so it runs
// on its own goroutine.
func (m *Membership) Retire(name string) {
	go func() {
		if err := m.serf.RemoveFailedNode(name); err != nil {
			m.log.Debug("retire member", "member", name, "err", err)
		}
	}()
}

// Rejoin announces this member alive again with a join intent newer than
// anything the cluster holds about it: it merges state with up to three
// live members (which advances its Lamport clock past a leave intent
// others hold for it) and then broadcasts the join, as serf's Join does.
// A member that missed a leave intent about itself (it was cut off while
// the intent spread) never refutes it on its own. It returns at once; the
// join is bounded by memberlist's TCP timeout.
func (m *Membership) Rejoin() {
	local := m.serf.LocalMember()
	var addrs []string
	for _, mem := range m.serf.Members() {
		if mem.Name == local.Name || mem.Status != serf.StatusAlive {
			continue
		}
		addr, _ := netip.AddrFromSlice(mem.Addr)
		addrs = append(addrs, netip.AddrPortFrom(addr.Unmap(), mem.Port).String())
		if len(addrs) == 3 {
			break
		}
	}
	if len(addrs) == 0 {
		return
	}
	go func() {
		if _, err := m.serf.Join(addrs, true); err != nil {
			m.log.Debug("rejoin", "err", err)
		}
	}()
}

// Answer is one member's answer to a query.
type Answer struct {
	From    string
	Payload []byte
}

// Ask queries every member (or those with tags matching filter, each a
// regular expression) and collects the answers that arrive within
// timeout.
func (m *Membership) Ask(name string, payload []byte, filter map[string]string, timeout time.Duration) ([]Answer, error) {
	resp, err := m.serf.Query(name, payload, &serf.QueryParam{FilterTags: filter, Timeout: timeout})
	if err != nil {
		return nil, err
	}
	var out []Answer
	for r := range resp.ResponseCh() {
		out = append(out, Answer{From: r.From, Payload: r.Payload})
	}
	return out, nil
}

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

	mu sync.Mutex
	// warned rate-limits the explanation of undecryptable gossip, by
	// sender address.
	warned map[string]time.Time
}

// undecryptable explains memberlist's "Decrypt packet failed" in
// operator terms, once a minute per sender: a host whose gossip nobody
// can read holds a key this cluster has rotated away from.
func (w *levelWriter) undecryptable(line string) {
	_, rest, ok := strings.Cut(line, "Decrypt packet failed")
	if !ok {
		return
	}
	from := "?"
	if _, addr, ok := strings.Cut(rest, "from="); ok {
		from = strings.TrimSpace(addr)
	}
	w.mu.Lock()
	if w.warned == nil {
		w.warned = map[string]time.Time{}
	}
	last, seen := w.warned[from]
	if seen && time.Since(last) < time.Minute {
		w.mu.Unlock()
		return
	}
	w.warned[from] = time.Now()
	w.mu.Unlock()
	w.l.Warn("gossip from another host cannot be decrypted with this host's keyring: one of the two holds a gossip key the other does not (rotated while it was offline?); put a key the cluster uses into that host's cluster.gossip_key_file and restart it",
		"from", from)
}

func (w *levelWriter) Write(p []byte) (int, error) {
	if w.conflict != nil {
		w.conflict.note(string(p))
	}
	w.undecryptable(string(p))
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
