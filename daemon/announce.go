package daemon

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/mesh"
)

// announcer is this host's identity as the cluster sees it: its node
// description for Compute (segments, claimed slices, public key) and the
// signed announcement built from it. The loop changes it (claims, key
// rotation); status reads it, hence the mutex.
type announcer struct {
	id config.Identity
	// endpoint is the announced WireGuard endpoint.
	endpoint netip.AddrPort
	// cluster is set once joined; before, tags are only built.
	cluster Cluster

	mu  sync.Mutex
	key wgtypes.Key
	me  mesh.Local
	// counter orders this host's signed announcements: the wall clock in
	// milliseconds, forced to increase, so it keeps growing across
	// restarts without any saved state.
	counter uint64
	// stale is set when an announcement failed to go out; the loop
	// retries it, so peers never stay on an old key.
	stale bool
}

func newAnnouncer(cfg *config.Config, key wgtypes.Key, endpoint netip.AddrPort) *announcer {
	return &announcer{id: cfg.Identity, me: localNode(cfg, key.PublicKey()), key: key, endpoint: endpoint}
}

// local returns this host's description; the loop replaces its slices
// rather than mutating them, so a copy is safe to use without the lock.
func (a *announcer) local() mesh.Local {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.me
}

func (a *announcer) privateKey() wgtypes.Key {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.key
}

// setSegments replaces the claimed slices.
func (a *announcer) setSegments(segs []mesh.LocalSegment) {
	a.mu.Lock()
	a.me.Segments = segs
	a.mu.Unlock()
}

func (a *announcer) segments() []mesh.LocalSegment {
	return slices.Clone(a.local().Segments)
}

// setKey installs a rotated key.
func (a *announcer) setKey(k wgtypes.Key) (old wgtypes.Key) {
	a.mu.Lock()
	defer a.mu.Unlock()
	old = a.key
	a.key, a.me.PublicKey = k, k.PublicKey()
	return old
}

// tags builds this host's announcement, signed when the cluster has a CA.
func (a *announcer) tags() (map[string]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ann := mesh.Announcement{PublicKey: a.me.PublicKey, Endpoint: a.endpoint}
	for _, seg := range a.me.Segments {
		if seg.Subnet.IsValid() {
			ann.Slices = append(ann.Slices, mesh.Slice{Segment: seg.Name, Prefix: seg.Subnet, ClaimedAt: seg.ClaimedAt})
		}
	}
	if !a.id.Enabled() {
		return ann.Tags()
	}
	a.counter = max(a.counter+1, uint64(time.Now().UnixMilli()))
	ann.Cert, ann.Counter = a.id.Cert.Marshal(), a.counter
	key := a.id.Key
	return ann.SignedTags(a.me.Name, func(payload []byte) []byte { return identity.SignPayload(key, payload) })
}

// publish re-announces this host after its slices or key changed.
func (a *announcer) publish() error {
	tags, err := a.tags()
	if err != nil {
		return err
	}
	if err := a.cluster.SetTags(tags); err != nil {
		a.mu.Lock()
		a.stale = true
		a.mu.Unlock()
		return fmt.Errorf("announce: %w", err)
	}
	a.mu.Lock()
	a.stale = false
	a.mu.Unlock()
	return nil
}

func (a *announcer) dirty() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stale
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
