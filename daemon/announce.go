package daemon

import (
	"errors"
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
// description for Compute (segments, claimed slices, public key, site and
// role) and the signed announcements built from it, one for the site pool
// and, on a gateway, one for the WAN pool. The loop changes it (claims,
// key rotation, draining, NAT paths); status reads it, hence the mutex.
type announcer struct {
	// endpoint is the WireGuard endpoint announced to the site, and
	// wanEndpoint the one announced to other sites (invalid behind NAT).
	endpoint, wanEndpoint netip.AddrPort
	// multi is set on a cluster of several sites: the announcements then
	// carry the site, the role and the mesh address.
	multi bool
	// site and wan are set once joined; before, tags are only built.
	site, wan Cluster

	mu  sync.Mutex
	key wgtypes.Key
	me  mesh.Local
	// id signs the announcements; a reload may replace it (a renewed
	// certificate, the CA turned on or off).
	id config.Identity
	// observed is the endpoint public gateways see this NATed gateway's
	// tunnels come from.
	observed netip.AddrPort
	// counter orders this host's signed announcements: the wall clock in
	// milliseconds, forced to increase, so it keeps growing across
	// restarts without any saved state.
	counter uint64
	// stale is set when an announcement failed to go out; the loop
	// retries it, so peers never stay on an old key.
	stale bool
}

// reportSigner signs gateway reports with the host's certified key; nil
// without a CA.
func (a *announcer) reportSigner() func([]byte) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.id.Enabled() {
		return nil
	}
	key := a.id.Key
	return func(p []byte) []byte { return identity.SignPayload(key, p) }
}

func newAnnouncer(cfg *config.Config, key wgtypes.Key, endpoint netip.AddrPort) *announcer {
	a := &announcer{id: cfg.Identity, me: localNode(cfg, key.PublicKey()), key: key, endpoint: endpoint, multi: cfg.Site.Multi()}
	if cfg.Site.Gateway && cfg.WAN.AdvertiseAddr.IsValid() {
		a.wanEndpoint = netip.AddrPortFrom(cfg.WAN.AdvertiseAddr, uint16(cfg.WireGuard.ListenPort))
	}
	return a
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

// identity is the certificate and key announcements are signed with.
func (a *announcer) identity() config.Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id
}

// setIdentity signs with id from the next announcement on and verifies
// others against its CA and mode; the caller publishes.
func (a *announcer) setIdentity(id config.Identity) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.id = id
	a.me.CA, a.me.AcceptUnsigned = id.CA, id.Mode == config.TrustTransitional
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

// setPaths records whether this gateway drains, where public gateways see
// it from, and which sites it reaches only through a transit site; it
// reports whether anything changed (and must be announced).
func (a *announcer) setPaths(draining bool, observed netip.AddrPort, symmetric bool, noDirect []string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	symmetric = symmetric && a.me.NAT
	if a.me.Draining == draining && a.observed == observed && a.me.Symmetric == symmetric && slices.Equal(a.me.NoDirect, noDirect) {
		return false
	}
	a.me.Draining, a.observed, a.me.Symmetric, a.me.NoDirect = draining, observed, symmetric, slices.Clone(noDirect)
	return true
}

func (a *announcer) meshAddr() netip.Addr {
	if !a.multi {
		return netip.Addr{}
	}
	return a.local().MeshAddr()
}

// base is the announcement both pools share: key, site, role, mesh
// address, relays. Caller holds a.mu.
func (a *announcer) baseLocked() mesh.Announcement {
	ann := mesh.Announcement{PublicKey: a.me.PublicKey}
	if !a.multi {
		return ann
	}
	ann.Site = a.me.SiteName()
	ann.Role = mesh.Role{Gateway: a.me.Gateway, Draining: a.me.Draining, NAT: a.me.NAT, Symmetric: a.me.Symmetric}
	ann.MeshAddr = a.me.MeshAddr()
	if a.me.Gateway {
		ann.Relays = slices.Clone(a.me.NoDirect)
	}
	return ann
}

// tags builds this host's site-pool announcement, signed when the cluster
// has a CA.
func (a *announcer) tags() (map[string]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ann := a.baseLocked()
	ann.Endpoint = a.endpoint
	for _, seg := range a.me.Segments {
		if seg.Subnet.IsValid() {
			ann.Slices = append(ann.Slices, mesh.Slice{Segment: seg.Name, Prefix: seg.Subnet, ClaimedAt: seg.ClaimedAt})
		}
	}
	return a.signLocked(ann)
}

// wanTags builds the gateway's WAN-pool announcement: the site's blocks
// instead of the host's slices, and its public endpoint (none behind
// NAT, where the observed one stands in for direct paths).
func (a *announcer) wanTags() (map[string]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ann := a.baseLocked()
	ann.Endpoint = a.wanEndpoint
	ann.Observed = a.observed
	for _, seg := range a.me.Segments {
		if seg.Block.IsValid() {
			ann.Blocks = append(ann.Blocks, mesh.Slice{Segment: seg.Name, Prefix: seg.Block})
		}
	}
	return a.signLocked(ann)
}

func (a *announcer) signLocked(ann mesh.Announcement) (map[string]string, error) {
	if !a.id.Enabled() {
		return ann.Tags()
	}
	a.counter = max(a.counter+1, uint64(time.Now().UnixMilli()))
	ann.Cert, ann.Counter = a.id.Cert.Marshal(), a.counter
	key := a.id.Key
	return ann.SignedTags(a.me.Name, func(payload []byte) []byte { return identity.SignPayload(key, payload) })
}

// publish re-announces this host after its slices, key or role changed,
// in its site's pool and, on a gateway, in the WAN pool.
func (a *announcer) publish() error {
	err := a.publishTo(a.site, a.tags)
	if a.wan != nil {
		err = errors.Join(err, a.publishTo(a.wan, a.wanTags))
	}
	a.mu.Lock()
	a.stale = err != nil
	a.mu.Unlock()
	return err
}

func (a *announcer) publishTo(c Cluster, build func() (map[string]string, error)) error {
	if c == nil {
		return nil
	}
	tags, err := build()
	if err != nil {
		return err
	}
	if err := c.SetTags(tags); err != nil {
		return fmt.Errorf("announce: %w", err)
	}
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
		CA:        cfg.Identity.CA, AcceptUnsigned: cfg.Identity.Mode == config.TrustTransitional,
	}
	if cfg.Site.Multi() {
		l.Site, l.Gateway = cfg.Site.Name, cfg.Site.Gateway
		l.NAT = cfg.Site.Gateway && !cfg.WAN.AdvertiseAddr.IsValid()
	}
	for _, s := range cfg.Segments {
		l.Segments = append(l.Segments, mesh.LocalSegment{Name: s.Name, CIDR: s.CIDR, Subnet: s.Subnet, Block: s.SiteBlock})
	}
	return l
}
