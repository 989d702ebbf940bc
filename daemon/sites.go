package daemon

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/mesh"
)

// A cluster of several sites: every host gossips in its site's pool; its
// gateways also in the WAN pool, where the gateways of all sites announce
// their sites' blocks. Hosts that are not gateways learn the other sites
// from their gateways, which relay the WAN announcements into the site
// pool as user events (signed by their authors when the cluster has a
// CA, so a relaying gateway cannot forge them).

const (
	// eventGateway carries one WAN announcement into a site pool.
	eventGateway = "meshd-gw"
	// eventRejoin asks the named gateway to announce itself again in the
	// WAN pool, which holds it as leaving while its site has it alive.
	eventRejoin = "meshd-rejoin"
	// rejoinEvery bounds how often a gateway asks another to rejoin, and
	// how often one rejoins on request.
	rejoinEvery = 10 * time.Second
	// queryWhoami asks the public gateways where they see the asking
	// gateway's tunnels come from (its NAT mapping).
	queryWhoami = "meshd-whoami"
	// directoryRefresh is how often the site's first gateway repeats every
	// WAN announcement into its site pool, so a host that missed one has it
	// within this time. A change goes out at once, a newcomer to the site
	// gets everything at once, and serf's push/pull repairs most lost
	// broadcasts, so this is a safety net, kept rare: each refresh costs
	// every member of the site about sites x 500 bytes x serf's
	// retransmissions (measured in TestSitesAtScale).
	directoryRefresh = 2 * time.Minute
	// relaySettle is how long after taking over relaying a gateway
	// relays everything once more, by when the gateway that relayed
	// before saw it take over and stopped.
	relaySettle = 5 * time.Second
	// directoryTTL forgets a relayed announcement no gateway repeated.
	directoryTTL = 3 * directoryRefresh
	// directTimeout is how long two gateways behind NAT try a direct
	// tunnel before they relay through a transit site.
	directTimeout = 10 * time.Second
	// whoamiEvery is how often a gateway behind NAT asks where it is seen
	// from; its mapping can change when the NAT restarts.
	whoamiEvery = 30 * time.Second
)

// joinWAN makes a gateway a member of the WAN pool. A gateway behind NAT
// advertises its mesh address: the others reach it through the tunnel it
// opened, not at an address of its NAT, which accepts nothing unasked.
func (d *Daemon) joinWAN(cfg *config.Config) error {
	if !cfg.Site.Gateway {
		return nil
	}
	tags, err := d.ann.wanTags()
	if err != nil {
		return err
	}
	advertise := cfg.WAN.AdvertiseAddr
	if !advertise.IsValid() {
		advertise = d.ann.meshAddr()
		if !advertise.IsValid() {
			return fmt.Errorf("a gateway behind NAT (no wan.advertise_addr) needs a slice for its mesh address first")
		}
	}
	wan, err := d.sys.Join(cluster.MembershipConfig{
		NodeName: cfg.NodeName, BindAddr: cfg.WAN.BindAddr, BindPort: cfg.WAN.BindPort, AdvertiseAddr: advertise,
		GossipKey: cfg.Cluster.GossipKey, KeyringFile: filepath.Join(cfg.DataDir, "gossip-wan.keyring"), Tags: tags,
		SnapshotPath: filepath.Join(cfg.DataDir, "serf-wan.snapshot"), Join: cfg.WAN.Join,
		Profile: string(cfg.Cluster.Profile), ProbeInterval: cfg.Cluster.ProbeInterval,
		Log: d.log.With("pool", "wan"), OnQuery: d.paths.answerWhoami,
	}, d.Kick)
	if err != nil {
		return fmt.Errorf("join the WAN pool: %w", err)
	}
	d.wan = wan
	d.ann.wan = wan
	d.undo("WAN pool membership", wan.Leave)
	d.log.Info("joined the WAN pool as a gateway", "site", cfg.Site.Name, "advertise", advertise, "behind_nat", !cfg.WAN.AdvertiseAddr.IsValid())
	return nil
}

// remoteGateways is what Compute needs of the other sites: the WAN pool on
// a gateway, the relayed announcements elsewhere.
func (d *Daemon) remoteGateways() []mesh.Member {
	if d.wan != nil {
		return d.wan.Members()
	}
	return d.directory.members(time.Now())
}

// directory holds the WAN announcements a site's gateways relayed.
// Written by the site pool's event goroutine, read by the loop.
type directory struct {
	mu      sync.Mutex
	entries map[string]dirEntry
	// sent is the gateway side's memory (the loop's) of what it relayed
	// last, to send only changes between refreshes.
	sent     map[string]string
	lastFull time.Time
	// known is the loop's record of the site's live members at the last
	// relay; relaying whether this gateway was the relayer then.
	known    map[string]bool
	relaying bool
	// settleAt is when a gateway that took over relaying relays all
	// again (see relayDirectory); zero when not due.
	settleAt time.Time
}

type dirEntry struct {
	member mesh.Member
	seen   time.Time
	ltime  uint64 // of the event that brought it
}

// dirRecord is one relayed announcement on the wire.
type dirRecord struct {
	Name   string            `json:"n"`
	Status string            `json:"s"`
	Tags   map[string]string `json:"t"`
}

func newDirectory() *directory {
	return &directory{entries: map[string]dirEntry{}, sent: map[string]string{}}
}

// maxDirectory bounds the relayed announcements a host keeps: any member
// of the site can send these events.
const maxDirectory = 4096

// receive takes a relayed announcement. Everything in it is checked
// later by Compute, as every announcement is; here only what keeps the
// directory sound: a valid name, room, and no older copy replacing a
// newer one. For signed announcements a newer counter is newer (a replay
// would otherwise make Compute refuse the gateway as replayed until the
// next refresh); for the same announcement, the event's Lamport time
// orders what the site's gateways relayed of it. Gossip delivers events
// in any order, and when the relaying gateway changes, say to one that
// just restarted, the old relayer's "failed" for that very gateway can
// arrive after the new relayer's "alive": without the order it would
// stand until the next refresh, and this host would route around a
// gateway the far end sends through.
func (dir *directory) receive(name string, payload []byte, ltime uint64) {
	if name != eventGateway {
		return
	}
	var r dirRecord
	if err := json.Unmarshal(payload, &r); err != nil || identity.ValidName(r.Name) != nil || len(r.Tags) > 32 {
		return
	}
	m := mesh.Member{Name: r.Name, Status: mesh.Status(r.Status), Tags: r.Tags}
	dir.mu.Lock()
	defer dir.mu.Unlock()
	old, had := dir.entries[r.Name]
	if !had && len(dir.entries) >= maxDirectory {
		return
	}
	if had {
		switch counter, oldCounter := signedCounter(r.Tags), signedCounter(old.member.Tags); {
		case counter < oldCounter:
			return
		case counter == oldCounter && ltime < old.ltime:
			return
		}
	}
	dir.entries[r.Name] = dirEntry{member: m, seen: time.Now(), ltime: ltime}
}

// signedCounter is a signed announcement's counter, 0 when unsigned.
func signedCounter(tags map[string]string) uint64 {
	ann, err := mesh.DecodeTags(tags)
	if err != nil {
		return 0
	}
	return ann.Counter
}

func (dir *directory) members(now time.Time) []mesh.Member {
	dir.mu.Lock()
	defer dir.mu.Unlock()
	out := make([]mesh.Member, 0, len(dir.entries))
	for name, e := range dir.entries {
		if now.Sub(e.seen) > directoryTTL {
			delete(dir.entries, name)
			continue
		}
		out = append(out, e.member)
	}
	slices.SortFunc(out, func(a, b mesh.Member) int { return cmpString(a.Name, b.Name) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// relay sends the WAN announcements into the site pool: those that
// changed since the last call, and every one when a refresh is due (only
// the site's first gateway refreshes, so a site of several gateways does
// not repeat everything several times). Runs on the loop.
func (dir *directory) relay(site Cluster, remote []mesh.Member, refresh bool) error {
	if refresh {
		dir.sent = map[string]string{}
		dir.lastFull = time.Now()
	}
	var firstErr error
	seen := map[string]bool{}
	for _, m := range remote {
		seen[m.Name] = true
		raw, err := json.Marshal(dirRecord{Name: m.Name, Status: string(m.Status), Tags: m.Tags})
		if err != nil {
			continue
		}
		if dir.sent[m.Name] == string(raw) {
			continue
		}
		if err := site.Broadcast(eventGateway, raw); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("relay %s's announcement into the site: %w", m.Name, err)
			}
			continue
		}
		dir.sent[m.Name] = string(raw)
	}
	for name := range dir.sent {
		if !seen[name] {
			delete(dir.sent, name) // reaped from the WAN pool: the TTL ends it
		}
	}
	return firstErr
}

// newcomers reports whether the site has live members it did not have at
// the last relay.
func (dir *directory) newcomers(members []mesh.Member) bool {
	now := map[string]bool{}
	added := false
	for _, m := range members {
		if m.Status == mesh.StatusAlive {
			now[m.Name] = true
			added = added || !dir.known[m.Name]
		}
	}
	first := dir.known == nil
	dir.known = now
	return added && !first
}

func (dir *directory) refreshDue(now time.Time) bool {
	return now.Sub(dir.lastFull) >= directoryRefresh
}

// settleDue reports, once, that the full relay after a takeover is due.
func (dir *directory) settleDue(now time.Time) bool {
	if dir.settleAt.IsZero() || now.Before(dir.settleAt) {
		return false
	}
	dir.settleAt = time.Time{}
	return true
}

// paths tracks what a gateway learns about its WAN tunnels at run time:
// where public gateways see it from when it is behind NAT, which direct
// tunnels never came up, and the devices' view of every peer, which the
// WAN pool's whoami queries are answered from.
type paths struct {
	mu sync.Mutex
	// endpoints is each peer's endpoint and last handshake as the device
	// last showed them; written by the loop, read by the query handler.
	endpoints map[wgtypes.Key]peerSeen
	// configured is when the loop first configured each direct NAT-to-NAT
	// WAN peer (the loop's).
	configured map[string]time.Time
	noDirect   []string
	// decideAt is when the loop must look again at a direct tunnel still
	// waiting for its first handshake (the loop's; zero when none waits):
	// passes follow events, and none may come when the deadline passes.
	decideAt time.Time
	// lastAsk and observed belong to whoever holds mu: the loop starts a
	// whoami query, a goroutine stores its answer.
	lastAsk   time.Time
	observed  netip.AddrPort
	symmetric bool
	// answers is how many public gateways answered the last query, and
	// firstAsk when the first query went out.
	answers  int
	firstAsk time.Time
}

// askDue reports whether a whoami query is due, and notes that one is
// starting: soon while nothing is known, and while fewer than two public
// gateways answered during the first minute (a symmetric NAT only shows
// as two gateways seeing different ports, and a public gateway whose
// tunnel is not up yet has nothing to say); then every whoamiEvery.
func (p *paths) askDue(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.firstAsk.IsZero() {
		p.firstAsk = now
	}
	every := whoamiEvery
	if !p.observed.IsValid() || (p.answers < 2 && now.Sub(p.firstAsk) < time.Minute) {
		every = 3 * time.Second
	}
	if now.Sub(p.lastAsk) < every {
		return false
	}
	p.lastAsk = now
	return true
}

// setObserved stores a whoami answer. Whether the NAT is symmetric only
// changes on two answers or more: one gateway alone (the others' tunnels
// down for a moment) cannot show that its mapping differs from theirs.
func (p *paths) setObserved(ep netip.AddrPort, symmetric bool, answers int) (changed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.answers = answers
	if answers < 2 {
		symmetric = p.symmetric
	}
	changed = p.observed != ep || p.symmetric != symmetric
	p.observed, p.symmetric = ep, symmetric
	return changed
}

func (p *paths) observedEndpoint() (netip.AddrPort, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.observed, p.symmetric
}

type peerSeen struct {
	endpoint  netip.AddrPort
	handshake time.Time
	// tx is the bytes sent to the peer, and txAt when that last grew:
	// without keepalives an idle tunnel has no handshake to show, and
	// only a peer meshd is trying to send to needs one.
	tx   int64
	txAt time.Time
}

func newPaths() *paths {
	return &paths{endpoints: map[wgtypes.Key]peerSeen{}, configured: map[string]time.Time{}}
}

// observe stores the device's view of its peers.
func (p *paths) observe(dev *wgtypes.Device) {
	now := time.Now()
	p.mu.Lock()
	old := p.endpoints
	p.mu.Unlock()
	seen := make(map[wgtypes.Key]peerSeen, len(dev.Peers))
	for _, peer := range dev.Peers {
		ps := peerSeen{handshake: peer.LastHandshakeTime, tx: peer.TransmitBytes, txAt: now}
		if prev, ok := old[peer.PublicKey]; ok && prev.tx == peer.TransmitBytes {
			ps.txAt = prev.txAt
		}
		if peer.Endpoint != nil {
			ap := peer.Endpoint.AddrPort()
			ps.endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		seen[peer.PublicKey] = ps
	}
	p.mu.Lock()
	p.endpoints = seen
	p.mu.Unlock()
}

// answerWhoami tells a gateway behind NAT where its handshakes came from.
// It answers from the last device read, so the query handler never
// waits on the device.
func (p *paths) answerWhoami(name string, payload []byte) []byte {
	if name != queryWhoami {
		return nil
	}
	key, err := wgtypes.ParseKey(string(payload))
	if err != nil {
		return nil
	}
	p.mu.Lock()
	ps, ok := p.endpoints[key]
	p.mu.Unlock()
	if !ok || !ps.endpoint.IsValid() || time.Since(ps.handshake) > 3*time.Minute {
		return nil
	}
	return []byte(ps.endpoint.String())
}

// sentSince reports whether anything was sent to key since t (as far as
// the last device reads tell).
func (p *paths) sentSince(key wgtypes.Key, t time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps, ok := p.endpoints[key]
	return !ok || ps.txAt.After(t)
}

// handshakeAt is when the device last completed a handshake with key.
func (p *paths) handshakeAt(key wgtypes.Key) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.endpoints[key].handshake
}

// updateNoDirect adds the sites whose direct NAT-to-NAT tunnel had no
// handshake within directTimeout of being configured. A site stays
// relayed until the daemon restarts: retrying a path both NATs already
// refused would only break the working relay now and then.
func (p *paths) updateNoDirect(st *mesh.State, localNAT bool, now time.Time) []string {
	p.decideAt = time.Time{}
	live := map[string]bool{}
	for _, peer := range st.Peers {
		// Only where both ends sit behind NAT can a direct tunnel fail
		// for good; a public end always accepts the NATed one's
		// handshakes.
		// The clock starts once there is somewhere to aim: until the
		// public gateways told where the far side is seen from, no
		// handshake can be expected.
		if !localNAT || !peer.WAN || !peer.NAT || !peer.Endpoint.IsValid() || slices.Contains(p.noDirect, peer.Site) {
			continue
		}
		live[peer.Name] = true
		first, ok := p.configured[peer.Name]
		if !ok {
			first = now
			p.configured[peer.Name] = now
		}
		if !p.handshakeAt(peer.PublicKey).Before(first) {
			continue // the direct tunnel came up
		}
		if now.Sub(first) > directTimeout {
			p.noDirect = append(p.noDirect, peer.Site)
			slices.Sort(p.noDirect)
			continue
		}
		if due := first.Add(directTimeout + time.Millisecond); p.decideAt.IsZero() || due.Before(p.decideAt) {
			p.decideAt = due
		}
	}
	maps.DeleteFunc(p.configured, func(name string, _ time.Time) bool { return !live[name] })
	return p.noDirect
}

// askWhoami asks the public gateways where they see this gateway's
// tunnels come from, and keeps the answer most of them gave. Answers that
// disagree on the port mean a symmetric NAT: a new mapping for every
// destination, which no hole punching gets through.
func askWhoami(wan Cluster, key wgtypes.Key) (best netip.AddrPort, symmetric bool, answered int, err error) {
	answers, err := wan.Ask(queryWhoami, []byte(key.String()), map[string]string{"r": "^g$"}, 3*time.Second)
	if err != nil {
		return netip.AddrPort{}, false, 0, err
	}
	votes := map[netip.AddrPort]int{}
	for _, a := range answers {
		if ap, err := netip.ParseAddrPort(string(a.Payload)); err == nil {
			votes[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]++
			answered++
		}
	}
	for ap, n := range votes {
		if n > votes[best] || (n == votes[best] && ap.String() < best.String()) {
			best = ap
		}
	}
	return best, len(votes) > 1, answered, nil
}
