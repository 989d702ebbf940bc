package mesh

import (
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// NATKeepalive keeps a NAT mapping open for the WAN tunnels of a gateway
// behind NAT: most NATs forget an idle UDP mapping after 30 s or more.
const NATKeepalive = 25 * time.Second

// SiteState is how this host reaches one other site.
type SiteState struct {
	Name string
	// Blocks are the site's blocks of the segments this host takes part
	// in: one route each, however many hosts the site has.
	Blocks []Slice
	// Gateway is the gateway of this host's site that carries the site's
	// traffic (this host itself when it is that gateway), and Remote the
	// gateway at the far end of its WAN tunnel.
	Gateway, Remote string
	// RemoteMesh is Remote's mesh address, when it announced one.
	RemoteMesh netip.Addr
	// Transit is the site the traffic is relayed through when no direct
	// path works between the two sites' gateways; "" when direct.
	Transit string
	// Unreachable says why no path exists ("" when there is one).
	Unreachable string
}

// ComputeTopology is Compute for a cluster of several sites. members is
// this host's site pool; remote holds the gateways of all sites, as the
// WAN pool shows them to a gateway and as its site's gateways relay them
// to every other host. Within the site the overlay is a full mesh, as on
// a single site. Another site's blocks go, one prefix each, to the
// gateway of this site that the pair of sites is assigned to; on that
// gateway, to its WAN peer, the gateway of the other site assigned to the
// same pair. Traffic between two sites thus always uses one tunnel in
// both directions, which WireGuard's source checks demand.
func ComputeTopology(local Local, members, remote []Member, prev *State) State {
	st := Compute(local, members, prev)
	if len(remote) == 0 {
		return st
	}
	t := newTopology(local, &st, prev)
	t.decode(remote, prev)
	t.keepWANGateways()
	t.admitSites()
	t.route()
	t.gossipTunnels()
	t.probes()
	st.Routes = routesFor(local, st.Peers, st.Lost, st.Sites, t.hostRoutes)
	return st
}

// gatewayAnn is one accepted gateway of a remote site.
type gatewayAnn struct {
	name string
	ann  *Announcement
}

type siteInfo struct {
	name     string
	blocks   []Slice // of segments this host takes part in
	gateways []gatewayAnn
}

type topology struct {
	local Local
	st    *State
	sites map[string]*siteInfo
	// order is the sites in admission order: those accepted last time
	// first (they keep their blocks against newcomers), then by name.
	order []*siteInfo
	// localGateways are the usable gateways of this site, by name, with
	// their role and the sites each declares it reaches only through a
	// transit site.
	localGateways map[string]localGateway
	wasSite       map[string]bool
	// hostRoutes are the mesh addresses of gateways reached by their
	// own gossip tunnel, routed one by one.
	hostRoutes []peerRoute
	// inWAN names this site's gateways that are alive in the WAN pool
	// (or in the directory its gateways relay).
	inWAN map[string]bool
	// prevBlocks are the blocks each site had last time.
	prevBlocks map[string][]Slice
	// remoteMesh is the mesh address of each remote gateway a pair of
	// sites is assigned to, by name.
	remoteMesh map[string]netip.Addr
}

type localGateway struct {
	role   Role
	relays []string
}

// peerRoute is a host route to one peer's address, outside the blocks.
type peerRoute struct {
	slice Slice
	peer  string
}

func newTopology(local Local, st *State, prev *State) *topology {
	t := &topology{local: local, st: st, sites: map[string]*siteInfo{}, localGateways: map[string]localGateway{}, wasSite: map[string]bool{},
		remoteMesh: map[string]netip.Addr{}, inWAN: map[string]bool{}, prevBlocks: map[string][]Slice{}}
	if prev != nil {
		for _, s := range prev.Sites {
			t.wasSite[s.Name] = true
			t.prevBlocks[s.Name] = s.Blocks
		}
	}
	if local.Gateway && !local.Draining {
		t.localGateways[local.Name] = localGateway{Role{Gateway: true, NAT: local.NAT, Symmetric: local.Symmetric}, slices.Clone(local.NoDirect)}
	}
	for _, p := range st.Peers {
		if ann := st.decoded[p.Name]; ann != nil && ann.err == nil && ann.ann.Role.Gateway && !ann.ann.Role.Draining {
			t.localGateways[p.Name] = localGateway{ann.ann.Role, ann.ann.Relays}
		}
	}
	return t
}

// decode checks every remote announcement on its own: a gateway, of a
// named site other than this one, with blocks inside the segments and a
// mesh address inside its blocks.
func (t *topology) decode(remote []Member, prev *State) {
	var cache map[string]*decodedTags
	if prev != nil {
		cache = prev.decodedRemote
	}
	if t.local.CA != nil {
		t.st.RemoteCounters = make(map[string]uint64, len(remote))
		if prev != nil {
			maps.Copy(t.st.RemoteCounters, prev.RemoteCounters)
		}
	}
	t.st.decodedRemote = make(map[string]*decodedTags, len(remote))
	mine := t.local.SiteName()
	keys := map[wgtypes.Key]string{t.local.PublicKey: t.local.Name}
	for i := range remote {
		m := &remote[i]
		if m.Name == t.local.Name || m.Status != StatusAlive {
			continue
		}
		d := cache[m.Name]
		if d == nil || !sameTags(d.tags, m.Tags) {
			d = &decodedTags{tags: m.Tags}
			d.ann, d.err = DecodeTags(m.Tags)
		}
		t.st.decodedRemote[m.Name] = d
		if d.err == nil && d.ann.SiteName() == mine {
			// This site's own gateways route through the site pool, which
			// verified them; here they only show which of them the WAN
			// pool sees alive.
			t.inWAN[m.Name] = true
			continue
		}
		err := d.err
		if err == nil {
			err = verifyIdentity(t.local, candidate{member: m, ann: &d.ann}, t.st.RemoteCounters)
		}
		if err == nil {
			err = t.checkGateway(&d.ann)
		}
		if err == nil {
			if _, ok := t.st.decoded[m.Name]; ok {
				err = fmt.Errorf("its name is taken by a member of site %s", mine)
			} else if other, ok := keys[d.ann.PublicKey]; ok {
				err = fmt.Errorf("public key %s is already used by %s", d.ann.PublicKey.String()[:8], other)
			} else if i := slices.IndexFunc(t.st.Peers, func(p Peer) bool { return p.PublicKey == d.ann.PublicKey }); i >= 0 {
				err = fmt.Errorf("public key %s is already used by %s", d.ann.PublicKey.String()[:8], t.st.Peers[i].Name)
			}
		}
		if err != nil {
			t.reject(m.Name, err)
			continue
		}
		keys[d.ann.PublicKey] = m.Name
		site := d.ann.SiteName()
		si := t.sites[site]
		if si == nil {
			si = &siteInfo{name: site}
			t.sites[site] = si
		}
		si.gateways = append(si.gateways, gatewayAnn{m.Name, &d.ann})
	}
}

func (t *topology) checkGateway(ann *Announcement) error {
	if !ann.Role.Gateway {
		return errors.New("it is in the WAN pool but does not announce itself as a gateway")
	}
	if ann.Site == "" {
		return errors.New("a gateway must name its site")
	}
	for _, b := range ann.Blocks {
		seg, ok := findSegment(t.local.Segments, b.Segment)
		if ok && !contains(seg.CIDR, b.Prefix) {
			return fmt.Errorf("block %s is outside segment %s (%s)", b, seg.Name, seg.CIDR)
		}
	}
	if ann.MeshAddr.IsValid() && !slices.ContainsFunc(ann.Blocks, func(b Slice) bool { return b.Prefix.Contains(ann.MeshAddr) }) {
		return fmt.Errorf("mesh address %s is outside its site's blocks", ann.MeshAddr)
	}
	return nil
}

func (t *topology) reject(member string, err error) {
	t.st.Rejected = append(t.st.Rejected, Rejection{Member: member, Reason: err.Error()})
}

// keepWANGateways leaves out of this site's usable gateways those the WAN
// pool does not see alive: the other sites decide from the WAN pool which
// of this site's gateways carry their pairs, and both ends must pick the
// same one. A gateway whose WAN uplink died is alive here and dead there.
// This host, if a gateway, cannot see itself that way; it counts itself
// out when its WAN pool shows no other site alive, which is what a dead
// uplink looks like from inside once failure detection ran.
func (t *topology) keepWANGateways() {
	for name := range t.localGateways {
		if name == t.local.Name {
			if len(t.sites) == 0 {
				delete(t.localGateways, name)
			}
			continue
		}
		if !t.inWAN[name] {
			delete(t.localGateways, name)
		}
	}
}

// admitSites settles each remote site's blocks: all its gateways must
// announce the same ones, and no site may hold a block that overlaps this
// site's or another accepted site's. A site accepted before keeps its
// blocks against a newcomer; among new ones the lower name wins.
func (t *topology) admitSites() {
	for _, si := range t.sites {
		slices.SortFunc(si.gateways, func(a, b gatewayAnn) int { return strings.Compare(a.name, b.name) })
		t.order = append(t.order, si)
	}
	slices.SortFunc(t.order, func(a, b *siteInfo) int {
		if wa, wb := t.wasSite[a.name], t.wasSite[b.name]; wa != wb {
			if wa {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	var owned ownership
	for _, seg := range t.local.Segments {
		if seg.Block.IsValid() {
			owned.add(seg.Block, "site "+t.local.SiteName())
		}
	}
	accepted := t.order[:0]
	for _, si := range t.order {
		if err := t.settleBlocks(si, &owned); err != nil {
			for _, g := range si.gateways {
				t.reject(g.name, err)
			}
			continue
		}
		accepted = append(accepted, si)
	}
	t.order = accepted
	slices.SortFunc(t.order, func(a, b *siteInfo) int { return strings.Compare(a.name, b.name) })
	slices.SortFunc(t.st.Rejected, func(a, b Rejection) int { return strings.Compare(a.Member, b.Member) })
}

func (t *topology) settleBlocks(si *siteInfo, owned *ownership) error {
	// The site's blocks as accepted last time, or else those of its first
	// gateway by name, speak for the site; gateways that disagree are
	// refused on their own, so a newcomer with a mistyped site_block
	// cannot take the site over.
	ref := si.gateways[0].ann.Blocks
	if prev, ok := t.prevBlocks[si.name]; ok {
		if i := slices.IndexFunc(si.gateways, func(g gatewayAnn) bool { return sameBlocks(g.ann.Blocks, prev) }); i >= 0 {
			ref = si.gateways[i].ann.Blocks
		}
	}
	var first string
	for _, g := range si.gateways {
		if slices.Equal(g.ann.Blocks, ref) {
			first = g.name
			break
		}
	}
	kept := si.gateways[:0]
	for _, g := range si.gateways {
		if !slices.Equal(g.ann.Blocks, ref) {
			t.reject(g.name, fmt.Errorf("its blocks %v differ from those of %s, another gateway of site %s", g.ann.Blocks, first, si.name))
			continue
		}
		kept = append(kept, g)
	}
	si.gateways = kept
	for _, b := range ref {
		if _, ok := findSegment(t.local.Segments, b.Segment); !ok {
			continue
		}
		if o, taken := owned.conflict(b.Prefix); taken {
			return fmt.Errorf("site %s's block %s overlaps %s of %s", si.name, b, o.prefix, o.owner)
		}
		si.blocks = append(si.blocks, b)
	}
	for _, b := range si.blocks {
		owned.add(b.Prefix, "site "+si.name)
	}
	return nil
}

// sameBlocks reports whether a gateway's blocks include all of kept, the
// blocks a site had last time (of the segments this host takes part in).
func sameBlocks(all, kept []Slice) bool {
	return len(kept) > 0 && !slices.ContainsFunc(kept, func(k Slice) bool { return !slices.Contains(all, k) })
}

// usable are the gateways of a remote site that can carry traffic now.
func (si *siteInfo) usable() []gatewayAnn {
	var out []gatewayAnn
	for _, g := range si.gateways {
		if !g.ann.Role.Draining {
			out = append(out, g)
		}
	}
	return out
}

// route assigns every remote site a path and adds its blocks to the
// AllowedIPs of the peer on that path.
func (t *topology) route() {
	local := t.local.SiteName()
	localGW := sortedKeys(t.localGateways)
	for _, si := range t.order {
		ss := SiteState{Name: si.name, Blocks: si.blocks}
		hop, transit, why := t.path(si, localGW)
		ss.Transit = transit
		if why != "" {
			ss.Unreachable = why
			t.st.Sites = append(t.st.Sites, ss)
			continue
		}
		pair := pairKey(local, hop.name)
		ss.Gateway = Assign(pair, localGW)
		remote := hop.usable()
		remoteNames := make([]string, len(remote))
		for i, g := range remote {
			remoteNames[i] = g.name
		}
		ss.Remote = Assign(pair, remoteNames)
		if g := remote[slices.Index(remoteNames, ss.Remote)]; g.ann.MeshAddr.IsValid() {
			t.remoteMesh[ss.Remote] = g.ann.MeshAddr
			ss.RemoteMesh = g.ann.MeshAddr
		}
		if ss.Gateway == t.local.Name {
			g := remote[slices.Index(remoteNames, ss.Remote)]
			t.carry(t.wanPeer(hop, g), si)
		} else if i := t.peerIndex(ss.Gateway); i >= 0 {
			t.carry(i, si)
		} else {
			ss.Unreachable = "its gateway " + ss.Gateway + " is not a peer"
		}
		t.st.Sites = append(t.st.Sites, ss)
	}
	slices.SortFunc(t.st.Peers, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	for i := range t.st.Peers {
		slices.SortFunc(t.st.Peers[i].AllowedIPs, netip.Prefix.Compare)
	}
}

// gossipTunnels gives every gateway behind NAT a tunnel of its own to
// every public gateway, carrying just the two mesh addresses. The WAN pool
// reaches a NATed gateway at its mesh address, through a tunnel only the
// NATed side can open; were that gossip routed like the site's traffic,
// through whichever gateway the pair is assigned to, losing that gateway
// would cut the gossip that tells the others to move the pair: the
// NATed gateway would look dead exactly when it is needed.
func (t *topology) gossipTunnels() {
	if !t.local.Gateway {
		return
	}
	for _, si := range t.order {
		// Draining gateways too: the WAN pool must keep reaching them.
		for _, g := range si.gateways {
			if !g.ann.MeshAddr.IsValid() || g.ann.Role.NAT == t.local.NAT {
				continue
			}
			seg, ok := t.segmentOf(g.ann.MeshAddr)
			if !ok {
				continue
			}
			i := t.wanPeer(si, g)
			host := netip.PrefixFrom(g.ann.MeshAddr, g.ann.MeshAddr.BitLen())
			if !slices.Contains(t.st.Peers[i].AllowedIPs, host) {
				p := &t.st.Peers[i]
				p.AllowedIPs = append(slices.Clip(p.AllowedIPs), host)
				slices.SortFunc(p.AllowedIPs, netip.Prefix.Compare)
			}
			t.hostRoutes = append(t.hostRoutes, peerRoute{Slice{Segment: seg, Prefix: host}, g.name})
		}
	}
	slices.SortFunc(t.st.Peers, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
}

// probersPerSite is how many hosts of a site probe its gateways: more
// than one, so one host's own trouble cannot drain a gateway unseen by the
// other, and few, so a large site does not probe every gateway from every
// host.
const probersPerSite = 2

// probes fills in who probes the site's gateways, and what this host
// probes if it is one of them.
func (t *topology) probes() {
	t.st.Gateways = sortedKeys(t.localGateways)
	if len(t.st.Gateways) < 2 {
		return // nothing to move to
	}
	t.st.Probers = t.probers(t.local.SiteName())
	src := t.local.MeshAddr()
	if !slices.Contains(t.st.Probers, t.local.Name) || !src.IsValid() {
		return
	}
	for _, g := range t.st.Gateways {
		d := t.st.decoded[g]
		if d == nil || d.err != nil || !d.ann.MeshAddr.IsValid() {
			continue
		}
		pr := Probe{Gateway: g, Via: d.ann.MeshAddr}
		for _, ss := range t.st.Sites {
			// A relayed site's far gateway is routed through the transit
			// site's pair, not necessarily through g.
			if ss.Gateway != g || ss.Transit != "" || ss.Unreachable != "" {
				continue
			}
			// Only addresses this host routes into the tunnel from its
			// own mesh address: another family, or a segment this host
			// lacks, would fail whatever the gateway does.
			a, ok := t.remoteMesh[ss.Remote]
			if _, inSegment := t.segmentOf(a); ok && inSegment && a.Is4() == src.Is4() && !slices.Contains(pr.Targets, a) {
				pr.Targets = append(pr.Targets, a)
			}
		}
		if len(pr.Targets) > 0 {
			slices.SortFunc(pr.Targets, netip.Addr.Compare)
			t.st.Probes = append(t.st.Probes, pr)
		}
	}
}

// probers are the hosts of the site that probe its gateways: the
// probersPerSite hosts that are not gateways with the highest rendezvous
// hash, so every host of the site agrees on them.
func (t *topology) probers(site string) []string {
	var hosts []string
	if !t.local.Gateway {
		hosts = append(hosts, t.local.Name)
	}
	for _, p := range t.st.Peers {
		if d := t.st.decoded[p.Name]; !p.WAN && d != nil && d.err == nil && !d.ann.Role.Gateway {
			hosts = append(hosts, p.Name)
		}
	}
	var out []string
	for range probersPerSite {
		best := Assign("probe|"+site, hosts)
		if best == "" {
			break
		}
		out = append(out, best)
		hosts = slices.DeleteFunc(hosts, func(h string) bool { return h == best })
	}
	slices.Sort(out)
	return out
}

func (t *topology) segmentOf(a netip.Addr) (string, bool) {
	for _, seg := range t.local.Segments {
		if seg.CIDR.Contains(a) {
			return seg.Name, true
		}
	}
	return "", false
}

// path picks the site whose tunnel carries traffic to si: si itself, or
// the transit site when either end declared the direct tunnel dead.
func (t *topology) path(si *siteInfo, localGW []string) (hop *siteInfo, transit, unreachable string) {
	if len(localGW) == 0 {
		return nil, "", "this site has no usable gateway"
	}
	if len(si.usable()) == 0 {
		return nil, "", "it has no usable gateway"
	}
	if !t.relayed(si, localGW) {
		return si, "", ""
	}
	// The transit site: the lowest-named other site whose gateways
	// accept inbound tunnels, which both ends can reach directly. Both
	// ends must pick the same one, so the far end's pair with it is
	// judged from the WAN announcements, which both ends see alike.
	for _, cand := range t.order {
		if cand == si || len(cand.usable()) == 0 || t.relayed(cand, localGW) || relayedBetween(si, cand) {
			continue
		}
		if slices.ContainsFunc(cand.usable(), func(g gatewayAnn) bool { return !g.ann.Role.NAT }) {
			return cand, cand.name, ""
		}
	}
	return nil, "", "no direct path and no site to relay through"
}

// relayed reports whether either end of the pair (this site, si) found
// the direct tunnel dead; both ends then route through the same transit
// site, whichever noticed first.
func (t *topology) relayed(si *siteInfo, localGW []string) bool {
	local := t.local.SiteName()
	pair := pairKey(local, si.name)
	near := Assign(pair, localGW)
	if slices.Contains(t.localGateways[near].relays, si.name) {
		return true
	}
	remote := si.usable()
	names := make([]string, len(remote))
	for i, g := range remote {
		names[i] = g.name
	}
	far := Assign(pair, names)
	for _, g := range remote {
		if g.name != far {
			continue
		}
		// Two NATs, one of them symmetric: no hole can be punched, so
		// neither end waits to find out.
		nearRole := t.localGateways[near].role
		if nearRole.NAT && g.ann.Role.NAT && (nearRole.Symmetric || g.ann.Role.Symmetric) {
			return true
		}
		return slices.Contains(g.ann.Relays, local)
	}
	return false
}

// relayedBetween is relayed for a pair of two other sites, a and b, as
// their WAN announcements show it.
func relayedBetween(a, b *siteInfo) bool {
	pair := pairKey(a.name, b.name)
	near, far := assigned(pair, a.usable()), assigned(pair, b.usable())
	if near == nil || far == nil {
		return true
	}
	if near.Role.NAT && far.Role.NAT && (near.Role.Symmetric || far.Role.Symmetric) {
		return true
	}
	return slices.Contains(near.Relays, b.name) || slices.Contains(far.Relays, a.name)
}

// assigned returns the announcement of the gateway among gws that Assign
// picks for pair, nil when there is none.
func assigned(pair string, gws []gatewayAnn) *Announcement {
	names := make([]string, len(gws))
	for i, g := range gws {
		names[i] = g.name
	}
	if i := slices.Index(names, Assign(pair, names)); i >= 0 {
		return gws[i].ann
	}
	return nil
}

// wanPeer returns the index of the WAN peer for gateway g of site hop,
// adding it when it is new.
func (t *topology) wanPeer(hop *siteInfo, g gatewayAnn) int {
	if i := t.peerIndex(g.name); i >= 0 {
		return i
	}
	p := Peer{Name: g.name, PublicKey: g.ann.PublicKey, Endpoint: g.ann.Endpoint, Keepalive: t.local.Keepalive, Site: hop.name, WAN: true, NAT: g.ann.Role.NAT}
	if g.ann.Role.NAT && t.local.NAT && g.ann.Observed.IsValid() {
		// Both ends behind NAT: aim at the mapping the public gateways
		// saw; if both NATs map endpoint-independently, the two sides'
		// packets open a path (hole punching).
		p.Endpoint = g.ann.Observed
	}
	if t.local.NAT {
		p.Keepalive = max(p.Keepalive, NATKeepalive)
	}
	t.st.Peers = append(t.st.Peers, p)
	return len(t.st.Peers) - 1
}

func (t *topology) peerIndex(name string) int {
	return slices.IndexFunc(t.st.Peers, func(p Peer) bool { return p.Name == name })
}

// carry adds si's blocks to peer i's AllowedIPs.
func (t *topology) carry(i int, si *siteInfo) {
	p := &t.st.Peers[i]
	// The peer's AllowedIPs may be cut from the admission's shared array:
	// copy before growing.
	p.AllowedIPs = slices.Clip(p.AllowedIPs)
	for _, b := range si.blocks {
		p.AllowedIPs = append(p.AllowedIPs, b.Prefix)
	}
	p.Sites = append(p.Sites, si.name)
}

// Assign picks the gateway that serves a pair of sites among names: the
// highest hash of the pair and the name (rendezvous hashing). Every host
// that sees the same gateways picks the same one; pairs spread evenly;
// and when a gateway goes only its own pairs move.
func Assign(pair string, names []string) string {
	best, bestHash := "", uint64(0)
	for _, n := range names {
		h := fnv.New64a()
		h.Write([]byte(pair))
		h.Write([]byte{0})
		h.Write([]byte(n))
		if v := mix(h.Sum64()); best == "" || v > bestHash || (v == bestHash && n < best) {
			best, bestHash = n, v
		}
	}
	return best
}

// mix is splitmix64's finalizer. FNV-1a alone leaves names that differ
// only in their last bytes (gw1, gw2, gw3) with nearly equal high bits, so
// one of them won half the pairs.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// pairKey names a pair of sites the same way from both ends.
func pairKey(a, b string) string {
	if a > b {
		a, b = b, a
	}
	return a + "|" + b
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, cmp.Compare)
	return out
}
