package mesh

import (
	"cmp"
	"crypto/ed25519"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/routes"
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
}

// Peer is a remote host accepted into the overlay.
type Peer struct {
	Name       string
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort
	Slices     []Slice
	AllowedIPs []netip.Prefix // exactly the accepted slices
	Keepalive  time.Duration
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
	Routes   routes.Config
	Rejected []Rejection // sorted by member
	// Lost names this host's claimed segments whose slice an earlier claim
	// of another host now holds: the host must claim another.
	Lost []string
	// decoded caches each member's decoded announcement with the tags it
	// came from: a membership event changes one member, and re-parsing a
	// thousand unchanged announcements would dominate the pass.
	decoded map[string]decodedTags
	// Counters is the highest verified announcement counter seen per
	// member. It outlives acceptance: a replayed old announcement stays
	// refused after its author leaves or fails, not just for one pass.
	Counters map[string]uint64
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
func (s *State) PeerByName(name string) (Peer, bool) {
	i := slices.IndexFunc(s.Peers, func(p Peer) bool { return p.Name == name })
	if i < 0 {
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
	claimedKeys := map[wgtypes.Key]string{local.PublicKey: local.Name}
	claimed := &ownership{}
	for _, seg := range local.Segments {
		if seg.Subnet.IsValid() && !slices.Contains(st.Lost, seg.Name) {
			claimed.add(seg.Subnet, local.Name)
		}
	}
	for _, c := range candidates {
		peer, err := admit(local, c, claimedKeys, claimed)
		if err != nil {
			st.Rejected = append(st.Rejected, Rejection{Member: c.member.Name, Reason: err.Error()})
			continue
		}
		if len(peer.Slices) == 0 {
			continue // shares no segment with us: nothing to route
		}
		claimedKeys[peer.PublicKey] = peer.Name
		for _, s := range peer.Slices {
			claimed.add(s.Prefix, peer.Name)
		}
		st.Peers = append(st.Peers, peer)
	}
	slices.SortFunc(st.Peers, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(st.Rejected, func(a, b Rejection) int { return strings.Compare(a.Member, b.Member) })
	st.Routes = routesFor(local, st.Peers, st.Lost)
	return st
}

type decodedTags struct {
	tags map[string]string
	ann  Announcement
	err  error
}

type candidate struct {
	member Member
	ann    Announcement
	err    error
}

// orderCandidates decodes every live remote member and orders them:
// previously accepted peers first, then newcomers, each group by name.
func orderCandidates(local Local, members []Member, prev, next *State) []candidate {
	wasPeer := make(map[string]bool, len(members))
	var cache map[string]decodedTags
	if prev != nil {
		for _, p := range prev.Peers {
			wasPeer[p.Name] = true
		}
		cache = prev.decoded
	}
	next.decoded = make(map[string]decodedTags, len(members))
	var out []candidate
	for _, m := range members {
		if m.Name == local.Name || m.Status != StatusAlive {
			continue
		}
		d, hit := cache[m.Name]
		if !hit || !maps.Equal(d.tags, m.Tags) {
			d.tags = m.Tags
			d.ann, d.err = DecodeTags(m.Tags)
		}
		next.decoded[m.Name] = d
		out = append(out, candidate{member: m, ann: d.ann, err: d.err})
	}
	slices.SortFunc(out, func(a, b candidate) int {
		if wa, wb := wasPeer[a.member.Name], wasPeer[b.member.Name]; wa != wb {
			if wa {
				return -1
			}
			return 1
		}
		if ca, cb := latestClaim(a.ann), latestClaim(b.ann); ca != cb {
			return cmp.Compare(ca, cb)
		}
		return strings.Compare(a.member.Name, b.member.Name)
	})
	return out
}

func latestClaim(a Announcement) uint64 {
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

// admit checks one member's claims against the local configuration and
// everything already accepted. One bad claim rejects the whole member: a
// host that announces someone else's subnet is misconfigured or hostile,
// and half-trusting it would still route some traffic to it.
func admit(local Local, c candidate, keys map[wgtypes.Key]string, claimed *ownership) (Peer, error) {
	if c.err != nil {
		return Peer{}, c.err
	}
	m, ann := c.member, c.ann
	if owner, taken := keys[ann.PublicKey]; taken {
		return Peer{}, fmt.Errorf("public key %s is already used by %s", ann.PublicKey.String()[:8], owner)
	}
	peer := Peer{Name: m.Name, PublicKey: ann.PublicKey, Endpoint: ann.Endpoint, Keepalive: local.Keepalive}
	for _, s := range ann.Slices {
		seg, ok := findSegment(local.Segments, s.Segment)
		if !ok {
			continue // a segment this host does not take part in
		}
		if !contains(seg.CIDR, s.Prefix) {
			return Peer{}, fmt.Errorf("slice %s is outside segment %s (%s)", s, seg.Name, seg.CIDR)
		}
		if o, taken := claimed.conflict(s.Prefix); taken {
			return Peer{}, fmt.Errorf("slice %s overlaps %s owned by %s", s, o.prefix, o.owner)
		}
		for _, mine := range peer.Slices {
			if mine.Prefix.Overlaps(s.Prefix) {
				return Peer{}, fmt.Errorf("slice %s overlaps its own slice %s", s, mine)
			}
		}
		peer.Slices = append(peer.Slices, s)
		peer.AllowedIPs = append(peer.AllowedIPs, s.Prefix)
	}
	slices.SortFunc(peer.AllowedIPs, comparePrefix)
	return peer, nil
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
func routesFor(local Local, peers []Peer, lost []string) routes.Config {
	cfg := routes.Config{Link: local.Link}
	for i, seg := range local.Segments {
		table := local.TableBase + i
		cfg.Rules = append(cfg.Rules,
			routes.Rule{Priority: local.RulePriority, Table: table, From: seg.CIDR},
			routes.Rule{Priority: local.RulePriority + 1, Table: table, To: seg.CIDR})
		cfg.Routes = append(cfg.Routes, routes.Route{Table: table, Dst: seg.CIDR, Kind: routes.Unreachable})
		if seg.Subnet.IsValid() && !slices.Contains(lost, seg.Name) {
			cfg.Routes = append(cfg.Routes, routes.Route{Table: table, Dst: seg.Subnet, Kind: routes.Throw})
		}
		for _, p := range peers {
			for _, s := range p.Slices {
				if s.Segment == seg.Name {
					cfg.Routes = append(cfg.Routes, routes.Route{Table: table, Dst: s.Prefix, Kind: routes.Tunnel, Peer: p.Name})
				}
			}
		}
	}
	cfg.Sort()
	return cfg
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
