package mesh

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// A generated cluster: sites s000..sNNN, each with its block 10.<i>.0.0/16
// of segment blue (10.0.0.0/8) and hosts whose slices are 10.<i>.<h>.0/24;
// the first gateways hosts of each site are its gateways, public or
// behind NAT.
type genCluster struct {
	sites, hosts, gateways int
	nat                    func(site int) bool
	// down marks gateways that failed, by name; offWAN those alive in
	// their site but missing from the WAN pool (a dead uplink).
	down, offWAN map[string]bool
}

var genCIDR = netip.MustParsePrefix("10.0.0.0/8")

func siteName(i int) string       { return fmt.Sprintf("s%03d", i) }
func hostName(site, h int) string { return fmt.Sprintf("%s-h%03d", siteName(site), h) }
func genBlock(site int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(site), 0, 0}), 16)
}
func genSlice(site, h int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(site), byte(h), 0}), 24)
}
func genMesh(site, h int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(site), byte(h), 254}) }

func genKey(site, h int) wgtypes.Key {
	var k wgtypes.Key
	k[0], k[1], k[2], k[31] = byte(site), byte(h), 0x5a, 1
	return k
}

func (g *genCluster) isGateway(h int) bool { return h < g.gateways }

func (g *genCluster) natted(site int) bool { return g.nat != nil && g.nat(site) }

func (g *genCluster) announcement(site, h int, wan bool) Announcement {
	a := Announcement{
		PublicKey: genKey(site, h),
		Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{172, 16, byte(site), byte(h + 1)}), 51820),
		Site:      siteName(site),
		MeshAddr:  genMesh(site, h),
		Role:      Role{Gateway: g.isGateway(h)},
	}
	if !wan {
		a.Slices = []Slice{{Segment: "blue", Prefix: genSlice(site, h)}}
		return a
	}
	a.Blocks = []Slice{{Segment: "blue", Prefix: genBlock(site)}}
	a.Endpoint = netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, byte(site), byte(h + 1)}), 51820)
	if g.nat != nil && g.nat(site) {
		a.Role.NAT, a.Endpoint = true, netip.AddrPort{}
	}
	return a
}

func (g *genCluster) member(t testing.TB, site, h int, wan bool) Member {
	t.Helper()
	tags, err := g.announcement(site, h, wan).Tags()
	if err != nil {
		t.Fatal(err)
	}
	st := StatusAlive
	if g.down[hostName(site, h)] {
		st = StatusFailed
	}
	return Member{Name: hostName(site, h), Status: st, Tags: tags}
}

// pools returns what host (site, h) sees: its site pool and the gateways
// of every site.
func (g *genCluster) pools(t testing.TB, site int) (sitePool, remote []Member) {
	for h := range g.hosts {
		sitePool = append(sitePool, g.member(t, site, h, false))
	}
	for s := range g.sites {
		for h := range g.gateways {
			if !g.offWAN[hostName(s, h)] {
				remote = append(remote, g.member(t, s, h, true))
			}
		}
	}
	return sitePool, remote
}

func (g *genCluster) local(site, h int) Local {
	return Local{
		Name: hostName(site, h), PublicKey: genKey(site, h), Link: "mesh0", TableBase: 100, RulePriority: 1000,
		Site: siteName(site), Gateway: g.isGateway(h), NAT: g.isGateway(h) && g.nat != nil && g.nat(site),
		Segments: []LocalSegment{{Name: "blue", CIDR: genCIDR, Subnet: genSlice(site, h), Block: genBlock(site)}},
	}
}

func (g *genCluster) compute(t testing.TB, site, h int) State {
	sitePool, remote := g.pools(t, site)
	return ComputeTopology(g.local(site, h), sitePool, remote, nil)
}

// expectedGateway is the assignment computed independently of Compute:
// the usable gateway of `of` with the highest rendezvous hash for the pair.
func (g *genCluster) expectedGateway(of, other int) string {
	var names []string
	for h := range g.gateways {
		if !g.down[hostName(of, h)] && !g.offWAN[hostName(of, h)] {
			names = append(names, hostName(of, h))
		}
	}
	return Assign(pairKey(siteName(of), siteName(other)), names)
}

// checkHost verifies one host's whole view against the topology rules.
func (g *genCluster) checkHost(t *testing.T, site, h int, st State) {
	t.Helper()
	me := hostName(site, h)
	if len(st.Rejected) > 0 {
		t.Fatalf("%s rejected %v", me, st.Rejected[:min(3, len(st.Rejected))])
	}
	carriers := map[netip.Prefix]string{}
	var wan []string
	for _, p := range st.Peers {
		if p.WAN {
			wan = append(wan, p.Name)
		} else if !strings.HasPrefix(p.Name, siteName(site)+"-") {
			t.Fatalf("%s peers with %s of another site as a site peer", me, p.Name)
		}
		for _, a := range p.AllowedIPs {
			if other, dup := carriers[a]; dup {
				t.Fatalf("%s: %s is on both %s and %s", me, a, other, p.Name)
			}
			carriers[a] = p.Name
		}
	}
	if !g.isGateway(h) && len(wan) > 0 {
		t.Fatalf("%s is not a gateway but peers with %v across the WAN", me, wan)
	}
	// Every other host of the site is a peer, with exactly its slice.
	for o := range g.hosts {
		if o == h || g.down[hostName(site, o)] {
			continue
		}
		if c := carriers[genSlice(site, o)]; c != hostName(site, o) {
			t.Fatalf("%s: slice of %s is on %q", me, hostName(site, o), c)
		}
	}
	routes := map[netip.Prefix]bool{}
	for _, r := range st.Routes.Routes {
		if r.Kind == Tunnel {
			routes[r.Dst] = true
		}
	}
	// Every other site's block is on the peer the assignment says, and
	// routed with one route.
	for s := range g.sites {
		if s == site {
			continue
		}
		local := g.expectedGateway(site, s)
		want := local
		if local == me {
			want = g.expectedGateway(s, site)
		}
		if c := carriers[genBlock(s)]; c != want {
			t.Fatalf("%s: block of %s is on %q, want %q", me, siteName(s), c, want)
		}
		if !routes[genBlock(s)] {
			t.Fatalf("%s: no route to %s's block", me, siteName(s))
		}
	}
	alive := 0
	for o := range g.hosts {
		if o != h && !g.down[hostName(site, o)] {
			alive++
		}
	}
	// A gateway has a gossip tunnel, with a host route, to every gateway
	// on the other side of NAT.
	gossip := 0
	if g.isGateway(h) {
		for s := range g.sites {
			if s != site && g.natted(s) != g.natted(site) {
				gossip += g.gateways
			}
		}
	}
	if want := 2 + alive + (g.sites - 1) + gossip; len(st.Routes.Routes) != want {
		t.Fatalf("%s has %d routes, want %d (unreachable, throw, site peers, one per other site)", me, len(st.Routes.Routes), want)
	}
}

// 100 sites of 100 hosts, two gateways each: what every kind of host
// peers with, its AllowedIPs and routes, for a sample of hosts in every
// site; and the pair tunnels match from both ends.
func TestTopology100Sites(t *testing.T) {
	g := &genCluster{sites: 100, hosts: 100, gateways: 2}
	for site := 0; site < g.sites; site += 7 {
		for _, h := range []int{0, 1, 50, 99} {
			g.checkHost(t, site, h, g.compute(t, site, h))
		}
	}
	// Both ends of every pair through site 3 use one tunnel.
	for s := range g.sites {
		if s == 3 {
			continue
		}
		a, b := g.expectedGateway(3, s), g.expectedGateway(s, 3)
		var ha, hb int
		fmt.Sscanf(a[len(a)-3:], "%d", &ha)
		fmt.Sscanf(b[len(b)-3:], "%d", &hb)
		sa, sb := g.compute(t, 3, ha), g.compute(t, s, hb)
		if p, ok := sa.PeerByName(b); !ok || !p.WAN {
			t.Fatalf("%s does not peer with %s for the pair (s003, %s)", a, b, siteName(s))
		}
		if p, ok := sb.PeerByName(a); !ok || !p.WAN {
			t.Fatalf("%s does not peer with %s for the pair (s003, %s)", b, a, siteName(s))
		}
	}
}

// The assignment spreads pairs over a site's gateways, and when one
// fails only its pairs move, to the others.
func TestGatewayAssignmentAndFailover(t *testing.T) {
	g := &genCluster{sites: 40, hosts: 5, gateways: 3, down: map[string]bool{}}
	before := map[int]string{}
	count := map[string]int{}
	for s := 1; s < g.sites; s++ {
		before[s] = g.expectedGateway(0, s)
		count[before[s]]++
	}
	for h := range g.gateways {
		if n := count[hostName(0, h)]; n < 5 {
			t.Errorf("gateway %s serves %d of 39 sites: the assignment does not spread", hostName(0, h), n)
		}
	}
	failed := hostName(0, 1)
	g.down[failed] = true
	st := g.compute(t, 0, 4)
	g.checkHost(t, 0, 4, st)
	for s := 1; s < g.sites; s++ {
		after := g.expectedGateway(0, s)
		if after == failed {
			t.Fatalf("site %s still assigned to the failed gateway", siteName(s))
		}
		if before[s] != failed && after != before[s] {
			t.Fatalf("site %s moved from %s to %s although its gateway did not fail", siteName(s), before[s], after)
		}
		ss := st.Sites[slices.IndexFunc(st.Sites, func(x SiteState) bool { return x.Name == siteName(s) })]
		if ss.Gateway != after {
			t.Fatalf("status says %s is served by %s, want %s", siteName(s), ss.Gateway, after)
		}
	}
	// The other side follows: site 5's gateway for the pair peers with the
	// new gateway of site 0.
	far := g.expectedGateway(5, 0)
	var h int
	fmt.Sscanf(far[len(far)-3:], "%d", &h)
	other := g.compute(t, 5, h)
	if _, ok := other.PeerByName(g.expectedGateway(0, 5)); !ok {
		t.Fatalf("%s does not peer with %s after the failover", far, g.expectedGateway(0, 5))
	}
	if _, ok := other.PeerByName(failed); ok && g.expectedGateway(0, 5) != failed {
		t.Fatalf("%s still peers with the failed %s", far, failed)
	}
}

// Gateways behind NAT have no endpoint: their WAN peers wait for their
// handshakes, and they keep the mappings open with keepalives.
func TestNATGateways(t *testing.T) {
	g := &genCluster{sites: 4, hosts: 3, gateways: 1, nat: func(s int) bool { return s == 2 || s == 3 }}
	public := g.compute(t, 0, 0)
	natted := g.compute(t, 2, 0)
	g.checkHost(t, 0, 0, public)
	g.checkHost(t, 2, 0, natted)
	p, _ := public.PeerByName(hostName(2, 0))
	if p.Endpoint.IsValid() || p.Keepalive != 0 {
		t.Fatalf("public side's peer for a NATed gateway: endpoint %v keepalive %v, want none and off", p.Endpoint, p.Keepalive)
	}
	q, _ := natted.PeerByName(hostName(0, 0))
	if !q.Endpoint.IsValid() || q.Keepalive != NATKeepalive {
		t.Fatalf("NATed side's peer for a public gateway: endpoint %v keepalive %v, want its endpoint and %v", q.Endpoint, q.Keepalive, NATKeepalive)
	}
	// Every public gateway keeps a gossip tunnel to every NATed one, not
	// only to those of the pairs it serves, carrying the mesh addresses.
	for _, nat := range []int{2, 3} {
		p, ok := public.PeerByName(hostName(nat, 0))
		if !ok || !slices.Contains(p.AllowedIPs, netip.PrefixFrom(genMesh(nat, 0), 32)) {
			t.Fatalf("no gossip tunnel from s000's gateway to %s: %+v", hostName(nat, 0), p)
		}
	}
	if p, _ := natted.PeerByName(hostName(1, 0)); !slices.Contains(p.AllowedIPs, netip.PrefixFrom(genMesh(1, 0), 32)) {
		t.Fatalf("the NATed gateway keeps no gossip tunnel to s001's public gateway: %+v", p)
	}
}

// When the direct tunnel between two NATed sites fails, both ends route
// the pair through the same transit site, and the transit site needs no
// change at all: its gateways already carry both sites' blocks.
func TestRelayThroughTransitSite(t *testing.T) {
	g := &genCluster{sites: 4, hosts: 2, gateways: 1, nat: func(s int) bool { return s >= 2 }}
	sitePool, remote := g.pools(t, 2)
	local := g.local(2, 0)
	local.NoDirect = []string{siteName(3)} // s002's gateway saw no handshake from s003
	st := ComputeTopology(local, sitePool, remote, nil)
	ss := st.Sites[slices.IndexFunc(st.Sites, func(x SiteState) bool { return x.Name == siteName(3) })]
	if ss.Transit != siteName(0) {
		t.Fatalf("transit for (s002, s003) is %q, want s000, the lowest public site", ss.Transit)
	}
	via, _ := st.PeerByName(hostName(0, 0))
	if !slices.Contains(via.AllowedIPs, genBlock(3)) || !slices.Contains(via.AllowedIPs, genBlock(0)) {
		t.Fatalf("s003's block is not relayed through s000's gateway: %v", via.AllowedIPs)
	}
	if _, ok := st.PeerByName(hostName(3, 0)); ok {
		t.Fatal("still peers directly with s003's gateway")
	}
	// s003 follows what s002's gateway declared, through its tags.
	tags, _ := func() (map[string]string, error) {
		a := g.announcement(2, 0, true)
		a.Relays = []string{siteName(3)}
		return a.Tags()
	}()
	sitePool, remote = g.pools(t, 3)
	for i := range remote {
		if remote[i].Name == hostName(2, 0) {
			remote[i].Tags = tags
		}
	}
	other := ComputeTopology(g.local(3, 0), sitePool, remote, nil)
	via, _ = other.PeerByName(hostName(0, 0))
	if !slices.Contains(via.AllowedIPs, genBlock(2)) {
		t.Fatalf("s003 does not relay s002 through s000: %v", via.AllowedIPs)
	}
	// A non-gateway host of s002 sends s003's traffic to its gateway, as
	// for any other site.
	sitePool, remote = g.pools(t, 2)
	plain := ComputeTopology(g.local(2, 1), sitePool, remote, nil)
	gw, _ := plain.PeerByName(hostName(2, 0))
	if !slices.Contains(gw.AllowedIPs, genBlock(3)) {
		t.Fatalf("s002's host does not send s003's traffic to its gateway: %v", gw.AllowedIPs)
	}
}

// Nothing a remote gateway announces may take another site's block or
// this site's own.
func TestForgedSiteBlocksAreRefused(t *testing.T) {
	g := &genCluster{sites: 3, hosts: 2, gateways: 1}
	sitePool, remote := g.pools(t, 0)
	forged := g.announcement(2, 0, true)
	forged.Blocks = []Slice{{Segment: "blue", Prefix: genBlock(0)}} // claims site 0's block
	forged.MeshAddr = genMesh(0, 77)
	tags, _ := forged.Tags()
	for i := range remote {
		if remote[i].Name == hostName(2, 0) {
			remote[i].Tags = tags
		}
	}
	st := ComputeTopology(g.local(0, 1), sitePool, remote, nil)
	if !slices.ContainsFunc(st.Rejected, func(r Rejection) bool {
		return r.Member == hostName(2, 0) && strings.Contains(r.Reason, "overlaps")
	}) {
		t.Fatalf("a gateway announcing this site's block was not refused: %v", st.Rejected)
	}
	for _, p := range st.Peers {
		if slices.Contains(p.AllowedIPs, genBlock(0)) {
			t.Fatalf("%s got this site's own block", p.Name)
		}
	}
	// A site-pool member claiming another site is no peer.
	alien := g.announcement(1, 1, false)
	tags, _ = alien.Tags()
	sitePool = append(sitePool, Member{Name: "alien", Status: StatusAlive, Tags: tags})
	st = ComputeTopology(g.local(0, 1), sitePool, remote, nil)
	if !slices.ContainsFunc(st.Rejected, func(r Rejection) bool { return r.Member == "alien" && strings.Contains(r.Reason, "site") }) {
		t.Fatalf("a member of another site in this site's pool was not refused: %v", st.Rejected)
	}
}

// One host's computation at 10,000 hosts in 100 sites: its site's 100
// members and the 200 gateways of all sites.
func BenchmarkComputeTopology10000(b *testing.B) {
	g := &genCluster{sites: 100, hosts: 100, gateways: 2}
	sitePool, remote := g.pools(b, 42)
	local := g.local(42, 50)
	b.ReportAllocs()
	for b.Loop() {
		ComputeTopology(local, sitePool, remote, nil)
	}
}

// The same with the previous state, as the reconciler runs it.
func BenchmarkComputeTopology10000Incremental(b *testing.B) {
	g := &genCluster{sites: 100, hosts: 100, gateways: 2}
	sitePool, remote := g.pools(b, 42)
	local := g.local(42, 50)
	prev := ComputeTopology(local, sitePool, remote, nil)
	b.ReportAllocs()
	for b.Loop() {
		ComputeTopology(local, sitePool, remote, &prev)
	}
}

// A symmetric NAT at either end of a NAT-to-NAT pair means no hole can be
// punched: both ends relay at once, without waiting for a handshake that
// never comes.
func TestSymmetricNATRelaysAtOnce(t *testing.T) {
	g := &genCluster{sites: 4, hosts: 1, gateways: 1, nat: func(s int) bool { return s >= 2 }}
	sitePool, remote := g.pools(t, 2)
	sym := g.announcement(3, 0, true)
	sym.Role.Symmetric = true
	tags, _ := sym.Tags()
	for i := range remote {
		if remote[i].Name == hostName(3, 0) {
			remote[i].Tags = tags
		}
	}
	st := ComputeTopology(g.local(2, 0), sitePool, remote, nil)
	ss := st.Sites[slices.IndexFunc(st.Sites, func(x SiteState) bool { return x.Name == siteName(3) })]
	if ss.Transit != siteName(0) {
		t.Fatalf("pair with a symmetric NAT: transit %q, want s000 at once", ss.Transit)
	}
	local := g.local(3, 0)
	local.Symmetric = true
	sitePool, remote = g.pools(t, 3)
	st = ComputeTopology(local, sitePool, remote, nil)
	ss = st.Sites[slices.IndexFunc(st.Sites, func(x SiteState) bool { return x.Name == siteName(2) })]
	if ss.Transit != siteName(0) {
		t.Fatalf("the symmetric side itself: transit %q, want s000", ss.Transit)
	}
}

// In a site with two gateways, two hosts that are not gateways (the same
// two, whichever host computes it) probe each gateway through the remote
// gateways at the far end of the pairs it serves; gateways probe nothing.
func TestProbePlan(t *testing.T) {
	g := &genCluster{sites: 4, hosts: 6, gateways: 2}
	probers := map[string]bool{}
	var agreed []string
	for h := range g.hosts {
		st := g.compute(t, 0, h)
		if h == 0 {
			agreed = st.Probers
		}
		if !slices.Equal(st.Probers, agreed) || len(agreed) != probersPerSite {
			t.Fatalf("%s sees probers %v, %s saw %v", hostName(0, h), st.Probers, hostName(0, 0), agreed)
		}
		if want := []string{hostName(0, 0), hostName(0, 1)}; !slices.Equal(st.Gateways, want) {
			t.Fatalf("%s: site gateways %v, want %v", hostName(0, h), st.Gateways, want)
		}
		if g.isGateway(h) {
			if len(st.Probes) > 0 {
				t.Errorf("gateway %s probes %v", hostName(0, h), st.Probes)
			}
			continue
		}
		if len(st.Probes) == 0 {
			continue
		}
		probers[hostName(0, h)] = true
		for _, p := range st.Probes {
			gw := slices.Index([]string{hostName(0, 0), hostName(0, 1)}, p.Gateway)
			if gw < 0 || p.Via != genMesh(0, gw) {
				t.Fatalf("probe %+v is not through a gateway of the site at its mesh address", p)
			}
			var want []netip.Addr
			for other := 1; other < g.sites; other++ {
				if g.expectedGateway(0, other) == p.Gateway {
					far := g.expectedGateway(other, 0)
					for fh := range g.gateways {
						if hostName(other, fh) == far {
							want = append(want, genMesh(other, fh))
						}
					}
				}
			}
			slices.SortFunc(want, netip.Addr.Compare)
			if !slices.Equal(p.Targets, want) {
				t.Errorf("%s probes %s through %v, want %v", hostName(0, h), p.Gateway, p.Targets, want)
			}
		}
	}
	if len(probers) != probersPerSite {
		t.Errorf("probers %v, want %d hosts", probers, probersPerSite)
	}
	for p := range probers {
		if !slices.Contains(agreed, p) {
			t.Errorf("%s probes but is not among the probers %v", p, agreed)
		}
	}

	// One gateway: nothing to move to, so nothing is probed.
	one := &genCluster{sites: 3, hosts: 4, gateways: 1}
	for h := range one.hosts {
		if st := one.compute(t, 0, h); len(st.Probes) > 0 {
			t.Errorf("site with one gateway: %s probes %v", hostName(0, h), st.Probes)
		}
	}
}

// reannounce re-encodes member m after f changed its announcement.
func reannounce(t *testing.T, m Member, f func(*Announcement)) Member {
	t.Helper()
	a, err := DecodeTags(m.Tags)
	if err != nil {
		t.Fatal(err)
	}
	f(&a)
	if m.Tags, err = a.Tags(); err != nil {
		t.Fatal(err)
	}
	return m
}

// A gateway alive in its site but missing from the WAN pool (its uplink
// died) carries no pair: the other sites, which see only the WAN pool,
// have moved its pairs, and both ends must agree.
func TestGatewayOffTheWANCarriesNoPair(t *testing.T) {
	g := &genCluster{sites: 12, hosts: 4, gateways: 2, offWAN: map[string]bool{}}
	g.offWAN[hostName(0, 1)] = true
	for h := range g.hosts {
		if h == 1 {
			continue // its own view is below
		}
		st := g.compute(t, 0, h)
		if slices.Contains(st.Gateways, hostName(0, 1)) {
			t.Fatalf("%s counts %s usable though the WAN pool lacks it", hostName(0, h), hostName(0, 1))
		}
		for _, ss := range st.Sites {
			if ss.Gateway != hostName(0, 0) {
				t.Fatalf("%s: site %s served by %s", hostName(0, h), ss.Name, ss.Gateway)
			}
		}
	}
	// Its own WAN pool shows every other site failed: it counts itself out.
	sitePool, remote := g.pools(t, 0)
	for i := range remote {
		if !strings.HasPrefix(remote[i].Name, siteName(0)) {
			remote[i].Status = StatusFailed
		}
	}
	if st := ComputeTopology(g.local(0, 1), sitePool, remote, nil); slices.Contains(st.Gateways, hostName(0, 1)) {
		t.Errorf("a gateway that sees no other site counts itself usable: %v", st.Gateways)
	}
	// The far end agrees: site 5's gateway for the pair peers with s000-h000.
	far := g.expectedGateway(5, 0)
	var h int
	fmt.Sscanf(far[len(far)-3:], "%d", &h)
	other := g.compute(t, 5, h)
	if p, ok := other.PeerByName(hostName(0, 0)); !ok || !slices.Contains(p.AllowedIPs, genBlock(0)) {
		t.Fatalf("%s does not carry s000 through s000-h000: %+v", far, p)
	}
}

// A NATed gateway that drains keeps its gossip tunnels: the WAN pool must
// keep reaching it, or it flaps in every site for as long as it drains.
func TestDrainingNATGatewayKeepsItsGossipTunnel(t *testing.T) {
	g := &genCluster{sites: 3, hosts: 2, gateways: 1, nat: func(s int) bool { return s == 2 }}
	sitePool, remote := g.pools(t, 0)
	for i := range remote {
		if remote[i].Name == hostName(2, 0) {
			remote[i] = reannounce(t, remote[i], func(a *Announcement) { a.Role.Draining = true })
		}
	}
	st := ComputeTopology(g.local(0, 0), sitePool, remote, nil)
	p, ok := st.PeerByName(hostName(2, 0))
	if !ok || !slices.Equal(p.AllowedIPs, []netip.Prefix{netip.PrefixFrom(genMesh(2, 0), 32)}) {
		t.Fatalf("gossip tunnel to the draining NATed gateway: %+v (present %v)", p, ok)
	}
}

// Names and keys identify one host: a remote gateway may not take the name
// of a member of this site, this host's key, or another gateway's key.
func TestRemoteGatewayIdentityCollisions(t *testing.T) {
	g := &genCluster{sites: 4, hosts: 3, gateways: 1}
	sitePool, remote := g.pools(t, 0)
	for i := range remote {
		switch remote[i].Name {
		case hostName(1, 0):
			remote[i].Name = hostName(0, 2) // the name of a host of site 0
		case hostName(2, 0):
			remote[i] = reannounce(t, remote[i], func(a *Announcement) { a.PublicKey = genKey(0, 0) }) // this host's key
		case hostName(3, 0):
			remote[i] = reannounce(t, remote[i], func(a *Announcement) { a.PublicKey = genKey(0, 1) }) // a site peer's key
		}
	}
	st := ComputeTopology(g.local(0, 0), sitePool, remote, nil)
	want := map[string]string{hostName(0, 2): "name is taken", hostName(2, 0): "already used", hostName(3, 0): "already used"}
	for _, r := range st.Rejected {
		if w := want[r.Member]; w != "" && strings.Contains(r.Reason, w) {
			delete(want, r.Member)
		}
	}
	if len(want) > 0 {
		t.Errorf("not refused: %v; rejected %+v", want, st.Rejected)
	}
	if len(st.Sites) != 0 {
		t.Errorf("sites reached through impostors: %+v", st.Sites)
	}
	p, _ := st.PeerByName(hostName(0, 2))
	if slices.Contains(p.AllowedIPs, genBlock(1)) {
		t.Errorf("site 1's block was put on the local host %s", hostName(0, 2))
	}
}

// A newcomer gateway with a mistyped site_block does not take its site
// over, even with the lowest name: the blocks accepted before stay.
func TestNewGatewayCannotChangeItsSitesBlocks(t *testing.T) {
	g := &genCluster{sites: 3, hosts: 3, gateways: 2}
	sitePool, remote := g.pools(t, 0)
	local := g.local(0, 0)
	st := ComputeTopology(local, sitePool, remote, nil)
	newcomer := reannounce(t, g.member(t, 1, 1, true), func(a *Announcement) {
		a.Blocks = []Slice{{Segment: "blue", Prefix: netip.MustParsePrefix("10.1.0.0/17")}}
		a.PublicKey[5] = 0x77
	})
	newcomer.Name = "s001-a-first"
	st = ComputeTopology(local, sitePool, append(remote, newcomer), &st)
	i := slices.IndexFunc(st.Sites, func(x SiteState) bool { return x.Name == siteName(1) })
	if i < 0 || st.Sites[i].Blocks[0].Prefix != genBlock(1) {
		t.Fatalf("site 1 after the newcomer: %+v", st.Sites)
	}
	if !slices.ContainsFunc(st.Rejected, func(r Rejection) bool { return r.Member == newcomer.Name && strings.Contains(r.Reason, "differ") }) {
		t.Errorf("the newcomer was not refused: %+v", st.Rejected)
	}
}

// Two NATed sites relay, and the lowest-named site with a public gateway
// is not usable by both: its gateway for the pair with the symmetric-NAT
// site is behind NAT too. Both ends must then pass it over for the same
// next site, or each end's traffic arrives through a tunnel the other end
// does not route back through.
func TestBothEndsPickTheSameTransitSite(t *testing.T) {
	var seed byte
	wan := func(name, site string, nat, symmetric bool, block string) Member {
		seed++
		a := Announcement{PublicKey: testKey(t, seed), Site: site, Role: Role{Gateway: true, NAT: nat, Symmetric: symmetric},
			MeshAddr: netip.MustParsePrefix(block).Addr().Next(), Blocks: []Slice{sl("blue", block)}}
		if !nat {
			a.Endpoint = netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, seed}), 51820)
		}
		tags, err := a.Tags()
		if err != nil {
			t.Fatal(err)
		}
		return Member{Name: name, Status: StatusAlive, Tags: tags}
	}
	// Site t1 has a public and a NATed gateway; find site names for which
	// the pair with the symmetric site lands on the NATed one and the pair
	// with the other NATed site on the public one.
	t1 := []string{"t1-pub", "t1-nat"}
	var siteA, siteB string
	for i := 0; i < 100 && siteA == ""; i++ {
		for j := 0; j < 100; j++ {
			a, b := fmt.Sprintf("u%02d", i), fmt.Sprintf("v%02d", j)
			if Assign(pairKey("t1", a), t1) == "t1-pub" && Assign(pairKey("t1", b), t1) == "t1-nat" {
				siteA, siteB = a, b
				break
			}
		}
	}
	if siteA == "" {
		t.Fatal("no site names give the pairs the test needs")
	}
	remote := []Member{
		wan("t1-pub", "t1", false, false, "10.42.16.0/20"),
		wan("t1-nat", "t1", true, false, "10.42.16.0/20"),
		wan("t2-pub", "t2", false, false, "10.42.32.0/20"),
		wan("a-gw", siteA, true, false, "10.42.48.0/20"),
		wan("b-gw", siteB, true, true, "10.42.64.0/20"),
	}
	view := func(name, site, block string, symmetric bool) SiteState {
		seg := LocalSegment{Name: "blue", CIDR: pfx("10.42.0.0/16"), Subnet: netip.PrefixFrom(netip.MustParsePrefix(block).Addr(), 24), Block: pfx(block)}
		local := Local{Name: name, PublicKey: testKey(t, 200), Link: "mesh0", TableBase: 100, RulePriority: 31000,
			Site: site, Gateway: true, NAT: true, Symmetric: symmetric, Segments: []LocalSegment{seg}}
		other := map[string]string{siteA: siteB, siteB: siteA}[site]
		st := ComputeTopology(local, nil, remote, nil)
		i := slices.IndexFunc(st.Sites, func(s SiteState) bool { return s.Name == other })
		if i < 0 {
			t.Fatalf("%s does not see site %s: %+v %+v", name, other, st.Sites, st.Rejected)
		}
		return st.Sites[i]
	}
	fromA, fromB := view("a-gw", siteA, "10.42.48.0/20", false), view("b-gw", siteB, "10.42.64.0/20", true)
	if fromA.Transit != "t2" || fromB.Transit != "t2" {
		t.Fatalf("transit from %s: %q, from %s: %q; want t2 at both ends", siteA, fromA.Transit, siteB, fromB.Transit)
	}
}

// Pairs spread evenly over a site's gateways, whatever their names.
func TestAssignSpreadsPairs(t *testing.T) {
	for _, names := range [][]string{{"gw1", "gw2", "gw3"}, {"a", "b", "c"}, {"eu-1-gw-a", "eu-1-gw-b", "eu-1-gw-c"}} {
		count := map[string]int{}
		const pairs = 3000
		for i := range pairs {
			count[Assign(pairKey("home", fmt.Sprintf("site-%d", i)), names)]++
		}
		for _, n := range names {
			if share := float64(count[n]) / pairs; share < 0.28 || share > 0.39 {
				t.Errorf("%v: %s serves %.0f%% of the pairs", names, n, share*100)
			}
		}
	}
}
