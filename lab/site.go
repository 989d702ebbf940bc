package lab

// A multi-site lab is a small internet: a "WAN" bridge in its own
// namespace carrying documentation addresses, and sites, each a private
// bridge in its own namespace with its hosts on it. Gateways of a site
// without NAT have a second leg on the WAN with a public address; the
// hosts of a NAT site reach the WAN only through their site's router.
//
//	WAN 203.0.113.0/24 (<prefix>-wan, br0)
//	 ├── w0 of every gateway of a NATNone site: 203.0.113.(10+i) for host hi
//	 └── wan of every NAT router: 203.0.113.(200+k) for site k
//	site k 172.16.k.0/24 (<prefix>-site-<name>, br0)
//	 ├── u0 of every host of the site: 172.16.k.i for host hi
//	 └── lan of the site's NAT router, if any: 172.16.k.254
//
// Site hosts keep only their private network (and, behind NAT, a default
// route through the router); WAN peers are all on 203.0.113.0/24, so
// gateways need no default route. A NAT router masquerades what leaves by
// its wan leg and drops what arrives there unless conntrack knows it.
//
// Names: routers live in <prefix>-nat-<name>; the WAN bridge's ports are
// named after the host ("h1") or "nat-<name>"; a site bridge's after the
// host or "nat". Everything carries the lab's prefix, so Close and
// CleanupStale remove it like the flat lab's namespaces.

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// NATMode is how a site reaches the WAN.
type NATMode int

const (
	// NATNone: gateways have a leg on the WAN with a public address; the
	// other hosts cannot reach the WAN at all.
	NATNone NATMode = iota
	// NATMasquerade: a router masquerades the site (nftables "masquerade"):
	// one public address, source ports preserved when free, so the mapping
	// is the same whatever the destination.
	NATMasquerade
	// NATSymmetric: like NATMasquerade with "masquerade random,fully-random":
	// every new destination gets a random source port.
	NATSymmetric
)

func (m NATMode) String() string {
	switch m {
	case NATNone:
		return "none"
	case NATMasquerade:
		return "masquerade"
	case NATSymmetric:
		return "symmetric"
	}
	return "NATMode(" + strconv.Itoa(int(m)) + ")"
}

// SiteSpec is one site of a multi-site lab.
type SiteSpec struct {
	// Name is the [site] name meshd is configured with: 1-10 lowercase
	// letters and digits, starting with a letter.
	Name string
	// Hosts is the number of hosts of the site (at least 1).
	Hosts int
	// Gateways is how many of them, the first ones, are gateways.
	Gateways int
	// NAT is how the site reaches the WAN.
	NAT NATMode
}

const (
	maxSites      = 50 // keeps 172.16.k.0/24 and 203.0.113.(200+k) unique
	maxSiteName   = 10 // "nat-<name>" must fit IFNAMSIZ
	wanGossipPort = 7947
	wanIf         = "w0"  // a gateway's leg on the WAN
	routerLANIf   = "lan" // a router's leg on its site's bridge
	routerWANIf   = "wan" // a router's leg on the WAN
	natTable      = "lab" // the routers' nftables table
)

// WANPrefix is the WAN's network; every public address lies in it.
var WANPrefix = netip.MustParsePrefix("203.0.113.0/24")

// BridgeName is the bridge in every switch namespace: the flat lab's
// SwitchNS, a multi-site lab's WANNS and each Site's NS.
const BridgeName = bridgeName

var siteNameRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// normalizeSites validates the sites and sets Hosts to their total.
func (s *Spec) normalizeSites() error {
	if len(s.Sites) > maxSites {
		return fmt.Errorf("lab: %d sites, want at most %d", len(s.Sites), maxSites)
	}
	if s.IPv6Underlay {
		return fmt.Errorf("lab: a multi-site lab has an IPv4 underlay only; drop IPv6Underlay")
	}
	total := 0
	seen := map[string]bool{}
	for _, site := range s.Sites {
		if !siteNameRE.MatchString(site.Name) || len(site.Name) > maxSiteName {
			return fmt.Errorf("lab: site name %q must be 1-%d lowercase letters and digits, starting with a letter", site.Name, maxSiteName)
		}
		if seen[site.Name] {
			return fmt.Errorf("lab: duplicate site %q", site.Name)
		}
		seen[site.Name] = true
		if site.Hosts < 1 {
			return fmt.Errorf("lab: site %q has %d hosts, want at least 1", site.Name, site.Hosts)
		}
		if site.Gateways < 0 || site.Gateways > site.Hosts {
			return fmt.Errorf("lab: site %q has %d gateways, want 0..%d (its hosts)", site.Name, site.Gateways, site.Hosts)
		}
		if site.NAT < NATNone || site.NAT > NATSymmetric {
			return fmt.Errorf("lab: site %q: unknown NAT mode %d", site.Name, site.NAT)
		}
		total += site.Hosts
	}
	if s.Hosts != 0 && s.Hosts != total {
		return fmt.Errorf("lab: Hosts is %d but the sites have %d hosts; leave Hosts 0", s.Hosts, total)
	}
	s.Hosts = total
	return nil
}

// siteBits is seg's effective SiteBits.
func (seg SegmentSpec) siteBits() int {
	if seg.SiteBits != 0 {
		return seg.SiteBits
	}
	return seg.SliceBits - 4
}

// SiteBlock is site's block of seg (site is 1-based): block site-1 of
// seg.CIDR, of length seg.SiteBits.
func SiteBlock(seg SegmentSpec, site int) (netip.Prefix, error) {
	cidr, err := parseSegmentCIDR(seg)
	if err != nil {
		return netip.Prefix{}, err
	}
	bits := seg.siteBits()
	if bits <= cidr.Bits() || bits >= seg.SliceBits {
		return netip.Prefix{}, fmt.Errorf("segment %q: site bits %d must be in (%d, %d); set SiteBits", seg.Name, bits, cidr.Bits(), seg.SliceBits)
	}
	if site < 1 || !fitsBits(site-1, bits-cidr.Bits()) {
		return netip.Prefix{}, fmt.Errorf("segment %q: site %d has no block in %s with /%d blocks", seg.Name, site, cidr, bits)
	}
	base := addShifted(cidr.Addr(), int64(site-1), cidr.Addr().BitLen()-bits)
	return netip.PrefixFrom(base, bits), nil
}

// SiteSlice is the slice of seg of the pos-th host (1-based) of site:
// slice pos of the site's block, so slice 0 stays unused as in a flat lab.
func SiteSlice(seg SegmentSpec, site, pos int) (Slice, error) {
	block, err := SiteBlock(seg, site)
	if err != nil {
		return Slice{}, err
	}
	return SegmentSlice(SegmentSpec{Name: seg.Name, CIDR: block.String(), SliceBits: seg.SliceBits}, pos)
}

// Site is one site of a multi-site lab.
type Site struct {
	lab    *Lab
	index  int // 1-based, in Spec.Sites order
	spec   SiteSpec
	hosts  []*Host
	router *Router // nil for NATNone
}

// Router is a site's NAT router: a namespace with a leg on the site's
// bridge and one on the WAN.
type Router struct {
	site *Site
}

// planSites assigns the planned hosts to their sites, in order.
func (l *Lab) planSites() {
	next := 0
	for i, spec := range l.spec.Sites {
		s := &Site{lab: l, index: i + 1, spec: spec}
		if spec.NAT != NATNone {
			s.router = &Router{site: s}
		}
		for pos := 1; pos <= spec.Hosts; pos++ {
			h := l.hosts[next]
			next++
			h.site, h.sitePos, h.gateway = s, pos, pos <= spec.Gateways
			s.hosts = append(s.hosts, h)
		}
		l.sites = append(l.sites, s)
	}
}

// Sites returns the sites in Spec order; nil for a flat lab.
func (l *Lab) Sites() []*Site { return l.sites }

// Site returns the site named name, or nil.
func (l *Lab) Site(name string) *Site {
	for _, s := range l.sites {
		if s.spec.Name == name {
			return s
		}
	}
	return nil
}

// Router returns the NAT router of the named site, or nil if the site has
// none (or does not exist).
func (l *Lab) Router(site string) *Router {
	if s := l.Site(site); s != nil {
		return s.router
	}
	return nil
}

// WANNS is the namespace of a multi-site lab's WAN bridge (BridgeName).
func (l *Lab) WANNS() string { return l.spec.Prefix + "-wan" }

// Name is the site's name.
func (s *Site) Name() string { return s.spec.Name }

// Index is the site's 1-based position in Spec.Sites.
func (s *Site) Index() int { return s.index }

// NAT is how the site reaches the WAN.
func (s *Site) NAT() NATMode { return s.spec.NAT }

// NS is the namespace of the site's private bridge (BridgeName).
func (s *Site) NS() string { return s.lab.spec.Prefix + "-site-" + s.spec.Name }

// Network is the site's private network, 172.16.<index>.0/24.
func (s *Site) Network() netip.Prefix {
	return netip.PrefixFrom(s.addr(0), 24)
}

func (s *Site) addr(last int) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 16, byte(s.index), byte(last)})
}

// Hosts returns the site's hosts in order.
func (s *Site) Hosts() []*Host { return s.hosts }

// Gateways returns the site's gateways in order.
func (s *Site) Gateways() []*Host { return s.hosts[:s.spec.Gateways] }

// Router is the site's NAT router, nil for NATNone.
func (s *Site) Router() *Router { return s.router }

// Block is the site's block of segment (invalid for an unknown segment).
func (s *Site) Block(segment string) netip.Prefix {
	for _, seg := range s.lab.spec.Segments {
		if seg.Name == segment {
			b, _ := SiteBlock(seg, s.index) // validated by normalize
			return b
		}
	}
	return netip.Prefix{}
}

// Site is the router's site.
func (r *Router) Site() *Site { return r.site }

// NAT is the router's NAT mode.
func (r *Router) NAT() NATMode { return r.site.spec.NAT }

// NS is the router's namespace.
func (r *Router) NS() string { return r.site.lab.spec.Prefix + "-nat-" + r.site.spec.Name }

// PublicAddr is the router's address on the WAN, 203.0.113.(200+site
// index): the source of everything the site sends to the WAN.
func (r *Router) PublicAddr() netip.Addr {
	return netip.AddrFrom4([4]byte{203, 0, 113, byte(200 + r.site.index)})
}

// PrivateAddr is the router's address on the site's network, the site
// hosts' default gateway: 172.16.<site index>.254.
func (r *Router) PrivateAddr() netip.Addr { return r.site.addr(254) }

// wanPort is the router's port on the WAN bridge.
func (r *Router) wanPort() string { return "nat-" + r.site.spec.Name }

// rulesPath is where the router's nftables ruleset is written.
func (r *Router) rulesPath() string {
	return filepath.Join(r.site.lab.dir, "nat-"+r.site.spec.Name+".nft")
}

// SetForwarding turns IP forwarding in the router on or off.
func (r *Router) SetForwarding(on bool) error { return setForwarding(r.NS(), on) }

// DroppedInbound is how many packets arriving from the WAN the router
// dropped because conntrack did not know them (unsolicited, or the
// mapping expired).
func (r *Router) DroppedInbound(ctx context.Context) (uint64, error) {
	out, err := Exec(ctx, r.NS(), "nft", "list", "chain", "ip", natTable, "forward")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		for i := 0; i+2 < len(f); i++ {
			if f[i] == "counter" && f[i+1] == "packets" && strings.Contains(line, "drop") {
				return strconv.ParseUint(f[i+2], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("lab: no drop counter in %s's forward chain:\n%s", r.NS(), out)
}

// natRules is the router's nftables ruleset: masquerade what leaves by the
// WAN leg, forward what comes in from it only if conntrack knows it.
func (r *Router) natRules() string {
	masq := "masquerade"
	if r.NAT() == NATSymmetric {
		masq = "masquerade random,fully-random"
	}
	return fmt.Sprintf(`table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname %[2]q %[3]s
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		iifname %[2]q counter drop
	}
}
`, natTable, routerWANIf, masq)
}

// Site is the host's site, nil in a flat lab.
func (h *Host) Site() *Site { return h.site }

// IsGateway reports whether the host is a gateway of its site.
func (h *Host) IsGateway() bool { return h.gateway }

// SiteAddr is the host's address on its site's network, 172.16.<site
// index>.<host index>; zero in a flat lab.
func (h *Host) SiteAddr() netip.Addr {
	if h.site == nil {
		return netip.Addr{}
	}
	return h.site.addr(h.index)
}

// PublicAddr is the host's address on the WAN, 203.0.113.(10+index), if
// it has one: only gateways of NATNone sites do. Zero otherwise.
func (h *Host) PublicAddr() netip.Addr {
	if !h.gateway || h.site.spec.NAT != NATNone {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + h.index)})
}

// SetForwarding turns IP forwarding in the host's namespace on or off.
func (h *Host) SetForwarding(on bool) error { return setForwarding(h.NS(), on) }

func setForwarding(ns string, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	return setSysctls(ns, false, "net/ipv4/ip_forward", v, "net/ipv6/conf/all/forwarding", v)
}

// clusterPeers are the hosts of the host's serf pool: every other host of
// a flat lab, the other hosts of its site in a multi-site lab.
func (h *Host) clusterPeers() []*Host {
	all := h.lab.hosts
	if h.site != nil {
		all = h.site.hosts
	}
	var peers []*Host
	for _, o := range all {
		if o != h {
			peers = append(peers, o)
		}
	}
	return peers
}

// wanSeeds are the other public gateways, of any site: gateways of a site
// whose only peers are behind NAT must still find each other, or the
// first to start would stay alone with whoever joined it.
func (h *Host) wanSeeds() []netip.Addr {
	var seeds []netip.Addr
	for _, s := range h.lab.sites {
		for _, g := range s.Gateways() {
			if a := g.PublicAddr(); a.IsValid() && g != h {
				seeds = append(seeds, a)
			}
		}
	}
	return seeds
}

// writeSiteConfig renders [site] and, on gateways, [wan]; nothing in a
// flat lab.
func (h *Host) writeSiteConfig(p printer) {
	if h.site == nil {
		return
	}
	p("")
	p("[site]")
	p("name = %s", tomlString(h.site.Name()))
	if !h.gateway {
		return
	}
	p("gateway = true")
	p("")
	p("[wan]")
	p("bind_addr = %s", tomlString("0.0.0.0"))
	p("bind_port = %d", wanGossipPort)
	if a := h.PublicAddr(); a.IsValid() {
		p("advertise_addr = %s", tomlString(a.String()))
	}
	p("join = [%s]", tomlSeeds(h.wanSeeds(), wanGossipPort))
}
