package mesh

import (
	"cmp"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/segment"
)

// Status is a member's serf state as meshd reports it.
type Status string

const (
	StatusAlive   Status = "alive"
	StatusLeaving Status = "leaving"
	StatusLeft    Status = "left"
	StatusFailed  Status = "failed"
)

// Member is one serf member as Compute sees it.
type Member struct {
	Name   string
	Addr   netip.Addr // gossip address, for status output
	Status Status
	Tags   map[string]string
}

// LocalSegment is one segment as this host is configured for it.
type LocalSegment struct {
	Name   string
	CIDR   netip.Prefix
	Subnet netip.Prefix
	// ClaimedAt is non-zero when Subnet was claimed rather than
	// configured; such a claim yields to an earlier one.
	ClaimedAt uint64
	// Block is this host's site's block of the segment, which every
	// slice of the site lies in and other sites route as one prefix;
	// invalid on a single-site cluster (the whole CIDR is the block).
	Block netip.Prefix
}

func (s LocalSegment) slice() Slice {
	return Slice{Segment: s.Name, Prefix: s.Subnet, ClaimedAt: s.ClaimedAt}
}

// Local is everything about this host that Compute needs.
type Local struct {
	Name         string
	PublicKey    wgtypes.Key
	Link         string
	Segments     []LocalSegment
	TableBase    int
	RulePriority int
	Keepalive    time.Duration
	// CA, when set, makes every announcement carry a certificate from it
	// and a signature; Now is when certificates are checked for expiry.
	CA  ed25519.PublicKey
	Now time.Time
	// AcceptUnsigned is the transitional mode of a cluster turning its
	// CA on: announcements without a certificate are accepted (see
	// State.Unsigned), signed ones are verified as always.
	AcceptUnsigned bool

	// Several sites: this host's site ("" is DefaultSite) and role. A
	// draining gateway stops being chosen; a gateway behind NAT keeps its
	// WAN tunnels open with keepalives.
	Site      string
	Gateway   bool
	Draining  bool
	NAT       bool
	Symmetric bool
	// NoDirect lists the remote sites whose direct WAN tunnel from this
	// gateway never completed a handshake: they are reached through a
	// transit site instead.
	NoDirect []string
}

// SiteName is this host's site, DefaultSite when it names none.
func (l *Local) SiteName() string {
	if l.Site == "" {
		return DefaultSite
	}
	return l.Site
}

// Peer is a remote host accepted into the overlay.
type Peer struct {
	Name      string
	PublicKey wgtypes.Key
	// Endpoint is invalid for a gateway behind NAT: WireGuard learns it
	// from the gateway's handshakes.
	Endpoint netip.AddrPort
	Slices   []Slice
	// AllowedIPs are the accepted slices, plus the blocks of the remote
	// sites this peer carries traffic for.
	AllowedIPs []netip.Prefix
	Keepalive  time.Duration
	// Site is the peer's site; WAN is set for a gateway of another site
	// (a WAN peer), and Sites names the remote sites whose blocks this
	// peer carries.
	Site  string
	WAN   bool
	Sites []string
	// NAT is set for a WAN peer behind NAT.
	NAT bool
}

// Rejection records a member whose announcement was refused, and why.
type Rejection struct {
	Member string
	Reason string
}

// State is the desired overlay: who is a peer, which routes exist, and
// which announcements were refused.
type State struct {
	Peers    []Peer // sorted by name
	Routes   RouteConfig
	Rejected []Rejection // sorted by member
	// Lost names this host's claimed segments whose slice an earlier claim
	// of another host now holds: the host must claim another.
	Lost []string
	// decoded caches each member's decoded announcement with the tags it
	// came from: a membership event changes one member, and re-parsing a
	// thousand unchanged announcements would dominate the pass. Entries
	// are shared with the next state and never modified.
	decoded map[string]*decodedTags
	// Counters is the highest verified announcement counter seen per
	// member. It outlives acceptance: a replayed old announcement stays
	// refused after its author leaves or fails, not just for one pass.
	Counters map[string]uint64
	// Sites is how this host reaches every other site, sorted by name;
	// empty on a single-site cluster.
	Sites []SiteState
	// decodedRemote is decoded's counterpart for the gateways of other
	// sites.
	decodedRemote map[string]*decodedTags
	// RemoteCounters is Counters for the WAN announcements: a gateway
	// signs its site-pool and WAN announcements from one counter, so each
	// pool's sequence only grows within that pool.
	RemoteCounters map[string]uint64
	// Gateways are this site's gateways that carry traffic now (not
	// draining), this host included when it is one; sorted.
	Gateways []string
	// Probers are the hosts of this site that probe its gateways (see
	// Probe); Probes what this host probes, if it is one of them.
	Probers []string
	Probes  []Probe
}

// Probe asks this host to check that Gateway, a gateway of its site,
// forwards. Echo requests to Via, the gateway's own mesh address, show
// the tunnel to it works; echo requests to Targets, the mesh addresses of
// the remote gateways at the far end of its WAN tunnels, cross it both
// ways, since both ends of a pair of sites route through the same two
// gateways. A gateway that answers the first but none of the second
// does not forward. Only a site with another gateway to move to is
// probed, and only by probersPerSite of its hosts that are not gateways
// (they have no gossip tunnels, so their routes to a remote gateway's
// mesh address are the site's).
type Probe struct {
	Gateway string
	Via     netip.Addr
	Targets []netip.Addr
}

// MeshAddr is the host's own address inside the overlay on a cluster of
// several sites: the last address of its first slice (IPv4 first), which
// CNI and Docker never hand out. Invalid before the host holds a slice.
func (l Local) MeshAddr() netip.Addr {
	var best netip.Prefix
	for _, s := range l.Segments {
		if !s.Subnet.IsValid() || s.Subnet.Addr().BitLen()-s.Subnet.Bits() < 2 {
			continue
		}
		if !best.IsValid() || (s.Subnet.Addr().Is4() && !best.Addr().Is4()) {
			best = s.Subnet
		}
	}
	if !best.IsValid() {
		return netip.Addr{}
	}
	last := segment.LastAddr(best)
	if best.Addr().Is4() {
		return last.Prev() // the last one is the broadcast address
	}
	return last
}

// Slices returns the accepted peers' slices of segment: what a new claim
// must stay clear of. Rejected announcements do not count, so a member
// that announces junk cannot block every claim.
func (s *State) Slices(segment string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s.Peers {
		for _, sl := range p.Slices {
			if sl.Segment == segment {
				out = append(out, sl.Prefix)
			}
		}
	}
	return out
}

// PeerByName returns the accepted peer with that name.
// Peers are sorted by name, so status, which asks once per member, stays
// O(n log n) at a thousand peers.
func (s *State) PeerByName(name string) (Peer, bool) {
	i, found := slices.BinarySearchFunc(s.Peers, name, func(p Peer, name string) int { return strings.Compare(p.Name, name) })
	if !found {
		return Peer{}, false
	}
	return s.Peers[i], true
}

// Compute derives the desired state from the live membership. prev is the
// state the host reached last time (nil at start): members it accepted
// keep their slices and keys against newcomers, so a host that joins later
// can never take over a live host's subnet or key. Among members equally
// new, the lower name wins, which every host agrees on.
func Compute(local Local, members []Member, prev *State) State {
	var st State
	candidates := orderCandidates(local, members, prev, &st)
	if local.CA != nil {
		st.Counters = make(map[string]uint64, len(members))
		if prev != nil {
			maps.Copy(st.Counters, prev.Counters)
		}
	}
	for i := range candidates {
		if candidates[i].err == nil {
			candidates[i].err = verifyIdentity(local, candidates[i], st.Counters)
		}
	}
	st.Lost = lostClaims(local, candidates)
	a := newAdmission(local, candidates)
	for _, seg := range local.Segments {
		if seg.Subnet.IsValid() && !slices.Contains(st.Lost, seg.Name) {
			a.claimed.add(seg.Subnet, local.Name)
		}
	}
	st.Peers = make([]Peer, 0, len(candidates))
	for _, c := range candidates {
		peer, err := a.admit(c)
		if err != nil {
			st.Rejected = append(st.Rejected, Rejection{Member: c.member.Name, Reason: err.Error()})
			continue
		}
		if len(peer.Slices) == 0 {
			continue // shares no segment with us: nothing to route
		}
		a.keys[peer.PublicKey] = peer.Name
		for _, s := range peer.Slices {
			a.claimed.add(s.Prefix, peer.Name)
		}
		st.Peers = append(st.Peers, peer)
	}
	slices.SortFunc(st.Peers, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(st.Rejected, func(a, b Rejection) int { return strings.Compare(a.Member, b.Member) })
	st.Routes = routesFor(local, st.Peers, st.Lost, nil, nil)
	return st
}

type decodedTags struct {
	tags map[string]string
	ann  Announcement
	err  error
}

// candidate points into the members and the decoded cache rather than
// copying them: it is sorted, and an announcement is large.
type candidate struct {
	member *Member
	ann    *Announcement
	err    error
	// The sort keys, worked out once rather than at every comparison.
	wasPeer bool
	latest  uint64
}

// orderCandidates decodes every live remote member and orders them:
// previously accepted peers first, then newcomers, each group by name.
func orderCandidates(local Local, members []Member, prev, next *State) []candidate {
	var wasPeer map[string]bool
	var cache map[string]*decodedTags
	if prev != nil {
		wasPeer = make(map[string]bool, len(prev.Peers))
		for _, p := range prev.Peers {
			wasPeer[p.Name] = true
		}
		cache = prev.decoded
	}
	next.decoded = make(map[string]*decodedTags, len(members))
	out := make([]candidate, 0, len(members))
	for i := range members {
		m := &members[i]
		if m.Name == local.Name || m.Status != StatusAlive {
			continue
		}
		d := cache[m.Name]
		if d == nil || !sameTags(d.tags, m.Tags) {
			d = &decodedTags{tags: m.Tags}
			d.ann, d.err = DecodeTags(m.Tags)
		}
		next.decoded[m.Name] = d
		out = append(out, candidate{member: m, ann: &d.ann, err: d.err, wasPeer: wasPeer[m.Name], latest: latestClaim(&d.ann)})
	}
	slices.SortFunc(out, func(a, b candidate) int {
		if a.wasPeer != b.wasPeer {
			if a.wasPeer {
				return -1
			}
			return 1
		}
		if a.latest != b.latest {
			return cmp.Compare(a.latest, b.latest)
		}
		return strings.Compare(a.member.Name, b.member.Name)
	})
	return out
}

// sameTags reports whether two tag sets are equal. Serf hands out the same
// map until a member's tags change, and the cache keeps the map it
// decoded, so comparing the maps themselves first skips comparing the
// entries of nearly every member.
func sameTags(a, b map[string]string) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer() || maps.Equal(a, b)
}

func latestClaim(a *Announcement) uint64 {
	var latest uint64
	for _, s := range a.Slices {
		latest = max(latest, s.ClaimedAt)
	}
	return latest
}

// claimBefore orders two claims the way every host does: configured
// before claimed, earlier Lamport time first, then the lower name.
func claimBefore(a Slice, aOwner string, b Slice, bOwner string) bool {
	if a.ClaimedAt != b.ClaimedAt {
		return a.ClaimedAt < b.ClaimedAt
	}
	return aOwner < bOwner
}

// lostClaims finds this host's claimed slices that a valid announcement
// of another live host claimed first. Only a claim on a proper slice of
// the segment counts: announcing the whole segment must not evict every
// host at once.
func lostClaims(local Local, candidates []candidate) []string {
	var lost []string
	for _, seg := range local.Segments {
		if seg.ClaimedAt == 0 || !seg.Subnet.IsValid() {
			continue
		}
		mine := seg.slice()
		for _, c := range candidates {
			if c.err != nil {
				continue
			}
			if i := slices.IndexFunc(c.ann.Slices, func(s Slice) bool {
				return s.Segment == seg.Name && contains(seg.CIDR, s.Prefix) && s.Prefix.Bits() > seg.CIDR.Bits() &&
					s.Prefix.Overlaps(seg.Subnet) && claimBefore(s, c.member.Name, mine, local.Name)
			}); i >= 0 {
				lost = append(lost, seg.Name)
				break
			}
		}
	}
	return lost
}

// admission is what admit checks a member against: the keys and slices
// accepted so far. It also holds the arrays every accepted peer's Slices
// and AllowedIPs are cut from, two allocations per pass instead of two
// per peer.
type admission struct {
	local    Local
	keys     map[wgtypes.Key]string
	claimed  ownership
	slices   []Slice
	prefixes []netip.Prefix
}

func newAdmission(local Local, candidates []candidate) *admission {
	n := 0
	for _, c := range candidates {
		if c.err == nil {
			n += len(c.ann.Slices)
		}
	}
	a := &admission{
		local:    local,
		keys:     make(map[wgtypes.Key]string, len(candidates)+1),
		slices:   make([]Slice, 0, n),
		prefixes: make([]netip.Prefix, 0, n),
	}
	a.keys[local.PublicKey] = local.Name
	a.claimed.spans = make([]owned, 0, n+len(local.Segments))
	return a
}

// admit checks one member's claims against the local configuration and
// everything already accepted. One bad claim rejects the whole member: a
// host that announces someone else's subnet is misconfigured or hostile,
// and half-trusting it would still route some traffic to it.
func (a *admission) admit(c candidate) (Peer, error) {
	start := len(a.slices)
	peer, err := a.check(c)
	if err != nil {
		a.slices, a.prefixes = a.slices[:start], a.prefixes[:start]
		return Peer{}, err
	}
	if end := len(a.slices); end > start {
		// Capped, so that appending to one peer's slices cannot
		// overwrite the next peer's.
		peer.Slices = a.slices[start:end:end]
		peer.AllowedIPs = a.prefixes[start:end:end]
		slices.SortFunc(peer.AllowedIPs, netip.Prefix.Compare)
	}
	return peer, nil
}

// check appends the member's slices in segments this host takes part in
// to a.slices and a.prefixes, and returns the peer without them.
func (a *admission) check(c candidate) (Peer, error) {
	if c.err != nil {
		return Peer{}, c.err
	}
	m, ann := c.member, c.ann
	if owner, taken := a.keys[ann.PublicKey]; taken {
		return Peer{}, fmt.Errorf("public key %s is already used by %s", ann.PublicKey.String()[:8], owner)
	}
	// The site pool is one site's: a member of another site that got in
	// (a shared gossip key, a mistyped seed) must not become a peer.
	if site := ann.SiteName(); site != a.local.SiteName() {
		return Peer{}, fmt.Errorf("it belongs to site %q, and this is site %q's pool", site, a.local.SiteName())
	}
	if !ann.Endpoint.IsValid() {
		return Peer{}, errors.New("it announces no endpoint inside its own site")
	}
	start := len(a.slices)
	for _, s := range ann.Slices {
		seg, ok := findSegment(a.local.Segments, s.Segment)
		if !ok {
			continue // a segment this host does not take part in
		}
		if !contains(seg.CIDR, s.Prefix) {
			return Peer{}, fmt.Errorf("slice %s is outside segment %s (%s)", s, seg.Name, seg.CIDR)
		}
		if seg.Block.IsValid() && !contains(seg.Block, s.Prefix) {
			return Peer{}, fmt.Errorf("slice %s is outside the site's block %s of segment %s", s, seg.Block, seg.Name)
		}
		if o, taken := a.claimed.conflict(s.Prefix); taken {
			return Peer{}, fmt.Errorf("slice %s overlaps %s owned by %s", s, o.prefix, o.owner)
		}
		for _, mine := range a.slices[start:] {
			if mine.Prefix.Overlaps(s.Prefix) {
				return Peer{}, fmt.Errorf("slice %s overlaps its own slice %s", s, mine)
			}
		}
		a.slices = append(a.slices, s)
		a.prefixes = append(a.prefixes, s.Prefix)
	}
	if ann.MeshAddr.IsValid() && !slices.ContainsFunc(a.prefixes[start:], func(p netip.Prefix) bool { return p.Contains(ann.MeshAddr) }) {
		return Peer{}, fmt.Errorf("mesh address %s is outside its own slices", ann.MeshAddr)
	}
	return Peer{Name: m.Name, PublicKey: ann.PublicKey, Endpoint: ann.Endpoint, Keepalive: a.local.Keepalive, Site: ann.SiteName()}, nil
}

// contains reports whether inner lies entirely within outer.
func contains(outer, inner netip.Prefix) bool {
	return outer.Addr().Is4() == inner.Addr().Is4() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

func findSegment(segs []LocalSegment, name string) (LocalSegment, bool) {
	for _, s := range segs {
		if s.Name == name {
			return s, true
		}
	}
	return LocalSegment{}, false
}

// routesFor lays out one table per segment: tunnel routes to remote
// slices, a throw for the local slice (local delivery belongs to whatever
// attached the pods), and unreachable for the rest of the segment so an
// address without a live owner never falls through to the underlay.
// Rules select the table by source (pods of the segment) and by
// destination (anything on this host talking to the segment).
func routesFor(local Local, peers []Peer, lost []string, sites []SiteState, hosts []peerRoute) RouteConfig {
	// Counted first: a thousand routes appended one by one would regrow
	// the slice a dozen times.
	n := 0
	for _, seg := range local.Segments {
		n += 2
		for _, p := range peers {
			for _, s := range p.Slices {
				if s.Segment == seg.Name {
					n++
				}
			}
		}
		n += len(sites) + len(hosts)
	}
	cfg := RouteConfig{
		Link:   local.Link,
		Routes: make([]Route, 0, n),
		Rules:  make([]Rule, 0, 2*len(local.Segments)),
	}
	for i, seg := range local.Segments {
		table := local.TableBase + i
		cfg.Rules = append(cfg.Rules,
			Rule{Priority: local.RulePriority, Table: table, From: seg.CIDR},
			Rule{Priority: local.RulePriority + 1, Table: table, To: seg.CIDR})
		cfg.Routes = append(cfg.Routes, Route{Table: table, Dst: seg.CIDR, Kind: Unreachable})
		if seg.Subnet.IsValid() && !slices.Contains(lost, seg.Name) {
			cfg.Routes = append(cfg.Routes, Route{Table: table, Dst: seg.Subnet, Kind: Throw})
		}
		for _, p := range peers {
			for _, s := range p.Slices {
				if s.Segment == seg.Name {
					cfg.Routes = append(cfg.Routes, Route{Table: table, Dst: s.Prefix, Kind: Tunnel, Peer: p.Name})
				}
			}
		}
		// Another site is one route per segment, whichever of its hosts
		// the packet is for.
		for _, site := range sites {
			if site.Unreachable != "" {
				continue
			}
			for _, b := range site.Blocks {
				if b.Segment == seg.Name {
					cfg.Routes = append(cfg.Routes, Route{Table: table, Dst: b.Prefix, Kind: Tunnel, Peer: "site " + site.Name})
				}
			}
		}
		for _, h := range hosts {
			if h.slice.Segment == seg.Name {
				cfg.Routes = append(cfg.Routes, Route{Table: table, Dst: h.slice.Prefix, Kind: Tunnel, Peer: h.peer})
			}
		}
	}
	cfg.Sort()
	return cfg
}
