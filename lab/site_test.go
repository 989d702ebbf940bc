package lab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/testenv"
)

// issueSites is issue 13's topology: site a with two public gateways,
// site b behind a port-preserving NAT, one edge host behind symmetric NAT.
var issueSites = []SiteSpec{
	{Name: "a", Hosts: 3, Gateways: 2, NAT: NATNone},
	{Name: "b", Hosts: 2, Gateways: 1, NAT: NATMasquerade},
	{Name: "edge", Hosts: 1, Gateways: 1, NAT: NATSymmetric},
}

func planIssue(t *testing.T, segments ...SegmentSpec) *Lab {
	t.Helper()
	l, err := plan(Spec{Prefix: "mdtest", Dir: "/srv/lab", Sites: issueSites, Segments: segments})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestSitePlan pins every name and address of the issue's topology: the
// e2e test and the issue's description both rely on them.
func TestSitePlan(t *testing.T) {
	l := planIssue(t, blue, red6)
	if got := len(l.Hosts()); got != 6 {
		t.Fatalf("%d hosts, want 6", got)
	}
	if l.Spec().Hosts != 6 {
		t.Errorf("Spec().Hosts = %d, want the sites' total 6", l.Spec().Hosts)
	}
	type row struct {
		site              string
		gateway           bool
		siteAddr, public  string
		blueSub, redSub   string
		iface, ns, podNS  string
		underlayIsPrivate bool
	}
	want := []row{
		{"a", true, "172.16.1.1", "203.0.113.11", "10.42.1.0/24", "fd42:0:0:1::/64", "mdtesth1", "mdtest-h1", "mdtest-h1-blue", true},
		{"a", true, "172.16.1.2", "203.0.113.12", "10.42.2.0/24", "fd42:0:0:2::/64", "mdtesth2", "mdtest-h2", "mdtest-h2-blue", true},
		{"a", false, "172.16.1.3", "invalid IP", "10.42.3.0/24", "fd42:0:0:3::/64", "mdtesth3", "mdtest-h3", "mdtest-h3-blue", true},
		{"b", true, "172.16.2.4", "invalid IP", "10.42.17.0/24", "fd42:0:0:11::/64", "mdtesth4", "mdtest-h4", "mdtest-h4-blue", true},
		{"b", false, "172.16.2.5", "invalid IP", "10.42.18.0/24", "fd42:0:0:12::/64", "mdtesth5", "mdtest-h5", "mdtest-h5-blue", true},
		{"edge", true, "172.16.3.6", "invalid IP", "10.42.33.0/24", "fd42:0:0:21::/64", "mdtesth6", "mdtest-h6", "mdtest-h6-blue", true},
	}
	for i, w := range want {
		h := l.Host(i + 1)
		got := row{h.Site().Name(), h.IsGateway(), h.SiteAddr().String(), h.PublicAddr().String(),
			h.Subnet("blue").String(), h.Subnet("red").String(), h.Interface(), h.NS(), h.PodNS("blue"),
			h.UnderlayAddr() == h.SiteAddr()}
		if got != w {
			t.Errorf("h%d:\n got %+v\nwant %+v", i+1, got, w)
		}
		if !h.Site().Block("blue").Contains(h.Subnet("blue").Addr()) || !h.Site().Block("red").Contains(h.Subnet("red").Addr()) {
			t.Errorf("h%d: slices %s %s outside the site's blocks %s %s", i+1, h.Subnet("blue"), h.Subnet("red"), h.Site().Block("blue"), h.Site().Block("red"))
		}
		if !h.Site().Network().Contains(h.SiteAddr()) {
			t.Errorf("h%d: %s outside %s", i+1, h.SiteAddr(), h.Site().Network())
		}
	}

	type siteRow struct {
		ns, network, blueBlock, nat string
		hosts, gateways             int
		router                      string // ns public private, or "-"
	}
	wantSites := map[string]siteRow{
		"a":    {"mdtest-site-a", "172.16.1.0/24", "10.42.0.0/20", "none", 3, 2, "-"},
		"b":    {"mdtest-site-b", "172.16.2.0/24", "10.42.16.0/20", "masquerade", 2, 1, "mdtest-nat-b 203.0.113.202 172.16.2.254"},
		"edge": {"mdtest-site-edge", "172.16.3.0/24", "10.42.32.0/20", "symmetric", 1, 1, "mdtest-nat-edge 203.0.113.203 172.16.3.254"},
	}
	for i, s := range l.Sites() {
		if s.Index() != i+1 || l.Site(s.Name()) != s {
			t.Errorf("site %s: index %d, lookup %p", s.Name(), s.Index(), l.Site(s.Name()))
		}
		router := "-"
		if r := s.Router(); r != nil {
			router = fmt.Sprintf("%s %s %s", r.NS(), r.PublicAddr(), r.PrivateAddr())
			if r != l.Router(s.Name()) || r.Site() != s || r.NAT() != s.NAT() {
				t.Errorf("site %s: router accessors disagree", s.Name())
			}
		} else if l.Router(s.Name()) != nil {
			t.Errorf("site %s: Lab.Router is not nil", s.Name())
		}
		got := siteRow{s.NS(), s.Network().String(), s.Block("blue").String(), s.NAT().String(), len(s.Hosts()), len(s.Gateways()), router}
		if got != wantSites[s.Name()] {
			t.Errorf("site %s:\n got %+v\nwant %+v", s.Name(), got, wantSites[s.Name()])
		}
	}
	if l.Site("nope") != nil || l.Router("nope") != nil || l.Router("a") != nil {
		t.Error("unknown site or site without NAT answered")
	}
	if l.WANNS() != "mdtest-wan" {
		t.Errorf("WANNS = %s", l.WANNS())
	}
	for _, h := range l.Hosts() {
		if pub := h.PublicAddr(); pub.IsValid() && !WANPrefix.Contains(pub) {
			t.Errorf("%s: public %s outside %s", h.Name(), pub, WANPrefix)
		}
	}
	if !WANPrefix.Contains(l.Router("b").PublicAddr()) {
		t.Error("router outside the WAN")
	}
}

// TestSitePlanFlat: a flat lab has no sites, and its hosts none of the
// multi-site addresses.
func TestSitePlanFlat(t *testing.T) {
	l, err := plan(Spec{Prefix: "mdtest", Hosts: 2})
	if err != nil {
		t.Fatal(err)
	}
	h := l.Host(1)
	if l.Sites() != nil || h.Site() != nil || h.IsGateway() || h.SiteAddr().IsValid() || h.PublicAddr().IsValid() {
		t.Errorf("flat host has site attributes: %v %v %v %v", h.Site(), h.IsGateway(), h.SiteAddr(), h.PublicAddr())
	}
	if h.UnderlayAddr() != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("underlay %s", h.UnderlayAddr())
	}
}

func TestSiteBlock(t *testing.T) {
	cases := []struct {
		seg        SegmentSpec
		site, pos  int
		block, sub string
		err        string
	}{
		{seg: blue, site: 1, pos: 1, block: "10.42.0.0/20", sub: "10.42.1.0/24"},
		{seg: blue, site: 2, pos: 1, block: "10.42.16.0/20", sub: "10.42.17.0/24"},
		{seg: blue, site: 16, pos: 15, block: "10.42.240.0/20", sub: "10.42.255.0/24"},
		{seg: SegmentSpec{Name: "s", CIDR: "10.42.0.0/16", SliceBits: 24, SiteBits: 18}, site: 2, pos: 3, block: "10.42.64.0/18", sub: "10.42.67.0/24"},
		{seg: red6, site: 3, pos: 2, block: "fd42:0:0:20::/60", sub: "fd42:0:0:22::/64"},
		{seg: blue, site: 17, pos: 1, err: "no block"},
		{seg: blue, site: 0, pos: 1, err: "no block"},
		{seg: blue, site: 1, pos: 16, err: "no slice in 10.42.0.0/20"},
		{seg: SegmentSpec{Name: "s", CIDR: "10.42.0.0/22", SliceBits: 24}, site: 1, pos: 1, err: "set SiteBits"},
		{seg: SegmentSpec{Name: "s", CIDR: "10.42.0.0/16", SliceBits: 24, SiteBits: 24}, site: 1, pos: 1, err: "site bits 24"},
		{seg: SegmentSpec{Name: "s", CIDR: "10.42.1.0/16", SliceBits: 24}, site: 1, pos: 1, err: "host bits"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/%d/%d/%d", c.seg.CIDR, c.seg.SiteBits, c.site, c.pos), func(t *testing.T) {
			s, err := SiteSlice(c.seg, c.site, c.pos)
			if !wantErr(t, err, c.err) {
				return
			}
			b, _ := SiteBlock(c.seg, c.site)
			if b.String() != c.block || s.Subnet.String() != c.sub {
				t.Errorf("block %s slice %s, want %s %s", b, s.Subnet, c.block, c.sub)
			}
		})
	}
}

// wantErr fails t unless err contains want (or, for an empty want, is
// nil); it reports whether the call succeeded as it should, so that the
// caller goes on to check the result.
func wantErr(t *testing.T, err error, want string) bool {
	t.Helper()
	switch {
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Fatalf("err = %v, want one containing %q", err, want)
	case want == "" && err != nil:
		t.Fatal(err)
	}
	return want == ""
}

func TestSiteSpecValidation(t *testing.T) {
	site := func(name string, hosts, gws int, nat NATMode) SiteSpec {
		return SiteSpec{Name: name, Hosts: hosts, Gateways: gws, NAT: nat}
	}
	ok := site("a", 2, 1, NATNone)
	many := make([]SiteSpec, maxSites+1)
	for i := range many {
		many[i] = site(fmt.Sprintf("s%d", i), 1, 1, NATNone)
	}
	cases := map[string]Spec{
		"bad name":           {Sites: []SiteSpec{site("A", 1, 0, NATNone)}},
		"name with dash":     {Sites: []SiteSpec{site("a-b", 1, 0, NATNone)}},
		"name starts digit":  {Sites: []SiteSpec{site("1a", 1, 0, NATNone)}},
		"name too long":      {Sites: []SiteSpec{site("abcdefghijk", 1, 0, NATNone)}},
		"duplicate site":     {Sites: []SiteSpec{ok, ok}},
		"no hosts":           {Sites: []SiteSpec{site("a", 0, 0, NATNone)}},
		"too many gateways":  {Sites: []SiteSpec{site("a", 2, 3, NATNone)}},
		"negative gateways":  {Sites: []SiteSpec{site("a", 2, -1, NATNone)}},
		"unknown nat":        {Sites: []SiteSpec{site("a", 2, 1, NATMode(7))}},
		"hosts disagree":     {Hosts: 3, Sites: []SiteSpec{ok}},
		"ipv6 underlay":      {IPv6Underlay: true, Sites: []SiteSpec{ok}},
		"too many sites":     {Sites: many},
		"too many hosts":     {Sites: []SiteSpec{site("a", 60, 0, NATNone), site("b", 40, 0, NATNone)}},
		"site block too big": {Sites: []SiteSpec{site("a", 16, 1, NATNone)}, Segments: []SegmentSpec{blue}},
		"no block for site":  {Sites: []SiteSpec{ok, site("b", 1, 1, NATNone), site("c", 1, 1, NATNone)}, Segments: []SegmentSpec{{Name: "s", CIDR: "10.42.0.0/20", SliceBits: 24, SiteBits: 21}}},
	}
	for name, spec := range cases {
		spec.Prefix = "md"
		if _, err := plan(spec); err == nil {
			t.Errorf("%s: plan succeeded", name)
		}
	}
	for name, spec := range map[string]Spec{
		"hosts equal total": {Prefix: "md", Hosts: 2, Sites: []SiteSpec{ok}},
		"gateway-less site": {Prefix: "md", Sites: []SiteSpec{ok, site("b", 1, 0, NATMasquerade)}},
		"15 hosts a site":   {Prefix: "md", Sites: []SiteSpec{site("a", 15, 1, NATNone)}, Segments: []SegmentSpec{blue}},
	} {
		if _, err := plan(spec); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestSiteConfig pins the three kinds of multi-site config: a public
// gateway, a gateway behind NAT (no advertise_addr) and a plain host (no
// gateway key, no [wan]).
func TestSiteConfig(t *testing.T) {
	l := planIssue(t, blue)
	header := func(h string) string {
		return strings.ReplaceAll(`node_name = "hN"
data_dir = "/srv/lab/hN/data"
control_socket = "/srv/lab/hN/meshd.sock"
cni_conf_dir = "/srv/lab/hN/cni"
cni_ipam_dir = "/srv/lab/hN/ipam"
docker_plugin_socket = "/srv/lab/hN/plugins/meshd.sock"
log_level = "debug"
`, "hN", h)
	}
	cases := map[int]string{
		1: header("h1") + `
[cluster]
bind_addr = "172.16.1.1"
bind_port = 7946
join = ["172.16.1.2:7946", "172.16.1.3:7946"]
gossip_key_file = "/srv/lab/gossip.key"

[site]
name = "a"
gateway = true

[wan]
bind_addr = "0.0.0.0"
bind_port = 7947
advertise_addr = "203.0.113.11"
join = ["203.0.113.12:7947"]

[wireguard]
interface = "mdtesth1"
listen_port = 51820
mode = "auto"

[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
site_block = "10.42.0.0/20"
subnet = "10.42.1.0/24"
`,
		3: header("h3") + `
[cluster]
bind_addr = "172.16.1.3"
bind_port = 7946
join = ["172.16.1.1:7946", "172.16.1.2:7946"]
gossip_key_file = "/srv/lab/gossip.key"

[site]
name = "a"

[wireguard]
interface = "mdtesth3"
listen_port = 51820
mode = "auto"

[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
site_block = "10.42.0.0/20"
subnet = "10.42.3.0/24"
`,
		4: header("h4") + `
[cluster]
bind_addr = "172.16.2.4"
bind_port = 7946
join = ["172.16.2.5:7946"]
gossip_key_file = "/srv/lab/gossip.key"

[site]
name = "b"
gateway = true

[wan]
bind_addr = "0.0.0.0"
bind_port = 7947
join = ["203.0.113.11:7947", "203.0.113.12:7947"]

[wireguard]
interface = "mdtesth4"
listen_port = 51820
mode = "auto"

[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
site_block = "10.42.16.0/20"
subnet = "10.42.17.0/24"
`,
	}
	for i, want := range cases {
		if got := l.Host(i).Config(""); got != want {
			t.Errorf("h%d config:\n%s\nwant:\n%s", i, got, want)
		}
	}
	// The edge host is its site's only member: nothing to join inside,
	// the public gateways of a to join on the WAN.
	edge := l.Host(6).Config("[[allow]]\nsegment = \"blue\"\n")
	for _, s := range []string{"join = []\ngossip_key_file", "[site]\nname = \"edge\"\ngateway = true\n", "join = [\"203.0.113.11:7947\", \"203.0.113.12:7947\"]\n\n[wireguard]"} {
		if !strings.Contains(edge, s) {
			t.Errorf("h6 config lacks %q:\n%s", s, edge)
		}
	}
	if !strings.HasSuffix(edge, "subnet = \"10.42.33.0/24\"\n\n[[allow]]\nsegment = \"blue\"\n") {
		t.Errorf("h6: extra must follow the segments:\n%s", edge)
	}
}

// TestFlatConfigGolden is the flat lab's rendering as it was before sites
// existed, byte for byte, including extra and an IPv6 segment: multi-site
// rendering must not change it.
func TestFlatConfigGolden(t *testing.T) {
	l, err := plan(Spec{Prefix: "mdflat", Hosts: 3, Dir: "/d", Mode: "userspace", Segments: []SegmentSpec{green, red6}})
	if err != nil {
		t.Fatal(err)
	}
	want := `node_name = "h2"
data_dir = "/d/h2/data"
control_socket = "/d/h2/meshd.sock"
cni_conf_dir = "/d/h2/cni"
cni_ipam_dir = "/d/h2/ipam"
docker_plugin_socket = "/d/h2/plugins/meshd.sock"
log_level = "debug"

[cluster]
bind_addr = "192.0.2.2"
bind_port = 7946
join = ["192.0.2.1:7946", "192.0.2.3:7946"]
gossip_key_file = "/d/gossip.key"

[wireguard]
interface = "mdflath2"
listen_port = 51820
mode = "userspace"

[[segments]]
name = "green"
cidr = "10.43.0.0/16"
subnet = "10.43.2.0/24"

[[segments]]
name = "red"
cidr = "fd42::/48"
subnet = "fd42:0:0:2::/64"

[[allow]]
segment = "green"
`
	if got := l.Host(2).Config("[[allow]]\nsegment = \"green\""); got != want {
		t.Errorf("flat h2 config:\n%s\nwant:\n%s", got, want)
	}
}

func TestNATRules(t *testing.T) {
	l := planIssue(t)
	for site, want := range map[string]string{"b": "oifname \"wan\" masquerade\n", "edge": "oifname \"wan\" masquerade random,fully-random\n"} {
		rules := l.Router(site).natRules()
		if !strings.Contains(rules, want) || !strings.Contains(rules, "iifname \"wan\" counter drop") {
			t.Errorf("site %s rules:\n%s", site, rules)
		}
	}
}

// TestScenarioRendererAgrees: test/scenario/lib.sh renders the VMs'
// configs (the Vagrantfile's layouts); from [cluster] on it must say what
// Host.Config says, flat or multi-site.
func TestScenarioRendererAgrees(t *testing.T) {
	testenv.RequireTools(t, "sh")
	flat, err := plan(Spec{Prefix: "mdtest", Hosts: 3, Dir: "/srv/lab", Segments: []SegmentSpec{blue}})
	if err != nil {
		t.Fatal(err)
	}
	sites := planIssue(t, blue)
	for _, h := range []*Host{flat.Host(2), sites.Host(1), sites.Host(3), sites.Host(4), sites.Host(6)} {
		var join []string
		for _, p := range h.clusterPeers() {
			join = append(join, netip.AddrPortFrom(p.UnderlayAddr(), gossipPort).String())
		}
		args := []string{h.Name(), h.DataDir(), h.ControlSocket(), h.UnderlayAddr().String(), strings.Join(join, " "),
			h.lab.GossipKeyFile(), h.Interface(), h.lab.spec.Mode, "blue", blue.CIDR, h.Subnet("blue").String()}
		cmd := exec.Command("sh", append([]string{"-c", `. ../test/scenario/lib.sh && meshd_config "$@"`, "sh"}, args...)...)
		cmd.Env = append(os.Environ(), "SC_SITE=", "SC_SITE_GATEWAY=0", "SC_WAN_ADVERTISE=", "SC_WAN_JOIN=", "SC_SITE_BLOCK=")
		if s := h.Site(); s != nil {
			var wan []string
			for _, a := range h.wanSeeds() {
				wan = append(wan, netip.AddrPortFrom(a, wanGossipPort).String())
			}
			gw := "0"
			if h.IsGateway() {
				gw = "1"
			}
			advertise := ""
			if a := h.PublicAddr(); a.IsValid() {
				advertise = a.String()
			}
			cmd.Env = append(cmd.Env, "SC_SITE="+s.Name(), "SC_SITE_GATEWAY="+gw, "SC_WAN_ADVERTISE="+advertise,
				"SC_WAN_JOIN="+strings.Join(wan, " "), "SC_SITE_BLOCK="+s.Block("blue").String())
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: lib.sh: %v\n%s", h.Name(), err, out)
		}
		fromCluster := func(s string) string { return s[strings.Index(s, "\n[cluster]"):] }
		if got, want := fromCluster(string(out)), fromCluster(h.Config("")); got != want {
			t.Errorf("%s: lib.sh renders\n%s\nlab renders\n%s", h.Name(), got, want)
		}
	}
}
