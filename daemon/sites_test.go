package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/internal/clustertest"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/probe"
)

// A cluster of two sites, in-process: site a with gateways a1 and a3 and
// a plain host a2, site b with gateway b1 and host b2. Each site gossips
// on its own network; the gateways also on the WAN.
type twoSites struct {
	key       string
	wan       *clustertest.Network
	nets      map[string]*clustertest.Network
	hosts     map[string]*testHost
	siteOf    map[string]string
	slice     map[string]int // third octet of each host's /24
	isGateway map[string]bool
	// ca, when set, gives every host a certificate for its site and role.
	ca *testCA
}

func newTwoSites(t *testing.T) *twoSites {
	ts := &twoSites{key: gossipKeyFile(t), wan: clustertest.NewNetwork(), nets: map[string]*clustertest.Network{},
		hosts: map[string]*testHost{}, siteOf: map[string]string{}, slice: map[string]int{}, isGateway: map[string]bool{}}
	for _, h := range []struct {
		name, site string
		slice      int
		gateway    bool
	}{{"a1", "a", 1, true}, {"a2", "a", 2, false}, {"a3", "a", 3, true}, {"b1", "b", 17, true}, {"b2", "b", 18, false}} {
		n := ts.nets[h.site]
		if n == nil {
			n = clustertest.NewNetwork()
			ts.nets[h.site] = n
		}
		th := newTestHost(t, n, h.name)
		if h.gateway {
			th.wanTr = ts.wan.NewTransport(h.name)
		}
		ts.hosts[h.name], ts.siteOf[h.name], ts.slice[h.name], ts.isGateway[h.name] = th, h.site, h.slice, h.gateway
	}
	return ts
}

func (ts *twoSites) config(name string) *config.Config {
	h := ts.hosts[name]
	site := ts.siteOf[name]
	var join, wanJoin []string
	for o, oh := range ts.hosts {
		if o != name && ts.siteOf[o] == site {
			join = append(join, fmt.Sprintf("%q", oh.tr.Addr()))
		}
		if o != name && ts.isGateway[o] && ts.siteOf[o] != site {
			wanJoin = append(wanJoin, fmt.Sprintf("%q", oh.wanTr.Addr()))
		}
	}
	block := map[string]string{"a": "10.42.0.0/20", "b": "10.42.16.0/20"}[site]
	text := siteConfigHead(h, ts.key, site, ts.isGateway[name], strings.Join(join, ", "), strings.Join(wanJoin, ", "))
	if ts.ca != nil {
		id, _ := ts.ca.issueIn(name, site, ts.isGateway[name], time.Hour, "strict")
		text += id
	}
	text += fmt.Sprintf(`
[wireguard]
interface = "mesh0"

[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
site_block = %q
subnet = "10.42.%d.0/24"
`, block, ts.slice[name])
	return h.config(text)
}

// siteConfigHead is a test host's config up to [wireguard]: its site
// pool joining join (a TOML list's items), its site and, for a gateway,
// the WAN pool at its WAN transport's address joining wanJoin.
func siteConfigHead(h *testHost, keyFile, site string, gateway bool, join, wanJoin string) string {
	text := fmt.Sprintf(`node_name = %q
data_dir = %q
control_socket = %q
cni_conf_dir = ""
docker_plugin_socket = ""

[cluster]
bind_addr = %q
join = [%s]
gossip_key_file = %q

[site]
name = %q
gateway = %v
`, h.name, h.dir+"/data", h.dir+"/meshd.sock", h.addr, join, keyFile, site, gateway)
	if gateway {
		text += fmt.Sprintf("\n[wan]\nadvertise_addr = %q\njoin = [%s]\n", netip.MustParseAddrPort(h.wanTr.Addr()).Addr(), wanJoin)
	}
	return text
}

// peersOf lists a host's WireGuard peers by name with their allowed IPs.
func (ts *twoSites) peersOf(name string) map[string][]string {
	out := map[string][]string{}
	d := ts.hosts[name].link("mesh0")
	if d == nil {
		return out
	}
	dev, _ := d.Client.Device("mesh0")
	for _, p := range dev.Peers {
		for o, oh := range ts.hosts {
			k, err := crypto.LoadPrivateKey(filepath.Join(oh.dir, "data", crypto.KeyFileName))
			if err == nil && k.PublicKey() == p.PublicKey {
				var ips []string
				for _, n := range p.AllowedIPs {
					ips = append(ips, n.String())
				}
				slices.Sort(ips)
				out[o] = ips
			}
		}
	}
	return out
}

func expectPeers(ts *twoSites, name string, want map[string][]string) error {
	got := ts.peersOf(name)
	if len(got) != len(want) {
		return fmt.Errorf("%s has peers %v, want %v", name, got, want)
	}
	for p, ips := range want {
		slices.Sort(ips)
		if !slices.Equal(got[p], ips) {
			return fmt.Errorf("%s: peer %s has %v, want %v", name, p, got[p], ips)
		}
	}
	return nil
}

// meshed is the state of a twoSites cluster with every host up.
func (ts *twoSites) meshed() error {
	pairA := mesh.Assign("a|b", []string{"a1", "a3"})
	other := map[string]string{"a1": "a3", "a3": "a1"}[pairA]
	return errors.Join(
		expectPeers(ts, "a2", map[string][]string{pairA: {fmt.Sprintf("10.42.%d.0/24", ts.slice[pairA]), "10.42.16.0/20"}, other: {fmt.Sprintf("10.42.%d.0/24", ts.slice[other])}}),
		expectPeers(ts, "b2", map[string][]string{"b1": {"10.42.0.0/20", "10.42.17.0/24"}}),
		expectPeers(ts, "b1", map[string][]string{"b2": {"10.42.18.0/24"}, pairA: {"10.42.0.0/20"}}),
		expectPeers(ts, pairA, map[string][]string{"a2": {"10.42.2.0/24"}, other: {fmt.Sprintf("10.42.%d.0/24", ts.slice[other])}, "b1": {"10.42.16.0/20"}}),
	)
}

// With a CA, certificates bind each host's site and role; a gateway signs
// its site-pool and WAN announcements from one counter, and the mesh must
// come up and stay up pass after pass, with nothing refused.
func TestTwoSitesWithACA(t *testing.T) {
	ts := newTwoSites(t)
	ts.ca = newTestCA(t)
	run := map[string]*running{}
	for _, n := range []string{"a1", "a2", "a3", "b1", "b2"} {
		run[n] = startDaemon(t, ts.hosts[n], ts.config(n), Options{})
	}
	eventually(t, 20*time.Second, "two sites meshed under a CA", ts.meshed)
	for range 10 { // resyncs, health checks and refreshes re-verify everything
		time.Sleep(300 * time.Millisecond)
		if err := ts.meshed(); err != nil {
			t.Fatal(err)
		}
	}
	for n, r := range run {
		if st := r.d.Status(); len(st.Rejected) != 0 {
			t.Errorf("%s refused %+v", n, st.Rejected)
		}
	}
}

func TestTwoSites(t *testing.T) {
	ts := newTwoSites(t)
	run := map[string]*running{}
	for _, n := range []string{"a1", "a2", "a3", "b1", "b2"} {
		run[n] = startDaemon(t, ts.hosts[n], ts.config(n), Options{})
	}
	pairA := mesh.Assign("a|b", []string{"a1", "a3"})
	other := map[string]string{"a1": "a3", "a3": "a1"}[pairA]
	took := eventually(t, 20*time.Second, "two sites meshed through their gateways", func() error {
		return errors.Join(
			// A plain host peers with its own site only; the gateway the
			// pair is assigned to carries site b's block.
			expectPeers(ts, "a2", map[string][]string{pairA: {fmt.Sprintf("10.42.%d.0/24", ts.slice[pairA]), "10.42.16.0/20"}, other: {fmt.Sprintf("10.42.%d.0/24", ts.slice[other])}}),
			// b2 learnt site a through b1's relayed announcements.
			expectPeers(ts, "b2", map[string][]string{"b1": {"10.42.0.0/20", "10.42.17.0/24"}}),
			// The gateways of the pair peer across the WAN with the other
			// site's block only.
			expectPeers(ts, "b1", map[string][]string{"b2": {"10.42.18.0/24"}, pairA: {"10.42.0.0/20"}}),
			expectPeers(ts, pairA, map[string][]string{"a2": {"10.42.2.0/24"}, other: {fmt.Sprintf("10.42.%d.0/24", ts.slice[other])}, "b1": {"10.42.16.0/20"}}),
		)
	})
	t.Logf("two sites meshed in %s", took.Round(time.Millisecond))
	if rs := strings.Join(ts.hosts["a2"].nl.Routes(), "\n"); !strings.Contains(rs, "10.42.16.0/20 tunnel") {
		t.Errorf("a2 has no route to site b's block:\n%s", rs)
	}
	if addrs := ts.hosts["a2"].link("mesh0").addrs; !slices.Contains(addrs, netip.MustParsePrefix("10.42.2.254/32")) {
		t.Errorf("a2's interface holds %v, want its mesh address 10.42.2.254/32", addrs)
	}
	st := run["a2"].d.Status()
	if len(st.Sites) != 1 || st.Sites[0].Name != "b" || st.Sites[0].Gateway != pairA || st.Sites[0].Remote != "b1" {
		t.Errorf("a2's status of other sites: %+v", st.Sites)
	}

	t.Run("gateway failover", func(t *testing.T) {
		// The assigned gateway of site a dies: the pair moves to the
		// other one, on both sides.
		ts.nets["a"].Cut(pairA)
		ts.wan.Cut(pairA)
		run[pairA].cancel()
		took := eventually(t, 20*time.Second, "site b served by the other gateway of site a", func() error {
			return errors.Join(
				expectPeers(ts, "a2", map[string][]string{other: {fmt.Sprintf("10.42.%d.0/24", ts.slice[other]), "10.42.16.0/20"}}),
				expectPeers(ts, "b1", map[string][]string{"b2": {"10.42.18.0/24"}, other: {"10.42.0.0/20"}}),
			)
		})
		t.Logf("failover in %s", took.Round(time.Millisecond))
	})
}

// The WAN pool carries sites, not hosts: a host joining or leaving a site
// makes no gateway announce anything there, and the WAN pool's members
// stay what they were.
func TestSiteChurnCausesNoWANUpdate(t *testing.T) {
	ts := newTwoSites(t)
	for _, n := range []string{"a1", "a2", "a3", "b1"} {
		startDaemon(t, ts.hosts[n], ts.config(n), Options{})
	}
	eventually(t, 20*time.Second, "a2 reaches site b", func() error {
		for _, ips := range ts.peersOf("a2") {
			if slices.Contains(ips, "10.42.16.0/20") {
				return nil
			}
		}
		return errors.New("no peer carries site b's block")
	})
	time.Sleep(time.Second) // let the gateways' start-up announcements settle
	before := map[string]int{}
	for _, g := range []string{"a1", "a3", "b1"} {
		before[g] = ts.hosts[g].wanAnnouncements()
	}
	// b2 joins site b, and site b's gateway relays the other sites to it.
	r := startDaemon(t, ts.hosts["b2"], ts.config("b2"), Options{})
	eventually(t, 20*time.Second, "b2 reaches site a through b1", func() error {
		return expectPeers(ts, "b2", map[string][]string{"b1": {"10.42.0.0/20", "10.42.17.0/24"}})
	})
	r.stop(t)
	eventually(t, 10*time.Second, "b1 drops b2", func() error {
		return expectPeers(ts, "b1", map[string][]string{mesh.Assign("a|b", []string{"a1", "a3"}): {"10.42.0.0/20"}})
	})
	for g, n := range before {
		if got := ts.hosts[g].wanAnnouncements(); got != n {
			t.Errorf("%s announced %d times in the WAN pool while a host joined and left site b", g, got-n)
		}
	}
}

// dataPlane plays the packets of a gateway probe over the fake devices of
// a twoSites cluster: each hop sends to the peer whose AllowedIPs hold the
// destination (longest prefix, as WireGuard does), and every host on the
// way but the last must forward.
type dataPlane struct {
	ts     *twoSites
	mu     sync.Mutex
	broken map[string]bool
	// silent hosts answer no echo, though they stay in gossip.
	silent map[string]bool
}

func (dp *dataPlane) meshAddr(name string) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 42, byte(dp.ts.slice[name]), 254})
}

func (dp *dataPlane) setBroken(name string, broken bool) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	dp.broken[name] = broken
}

func (dp *dataPlane) nextHop(from string, dst netip.Addr) string {
	d := dp.ts.hosts[from].link("mesh0")
	if d == nil {
		return ""
	}
	dev, err := d.Client.Device("mesh0")
	if err != nil {
		return ""
	}
	best, bestBits := wgtypes.Key{}, -1
	for _, p := range dev.Peers {
		for _, n := range p.AllowedIPs {
			ones, _ := n.Mask.Size()
			if n.Contains(dst.AsSlice()) && ones > bestBits {
				best, bestBits = p.PublicKey, ones
			}
		}
	}
	if bestBits < 0 {
		return ""
	}
	for name, h := range dp.ts.hosts {
		if k, err := crypto.LoadPrivateKey(filepath.Join(h.dir, "data", crypto.KeyFileName)); err == nil && k.PublicKey() == best {
			return name
		}
	}
	return ""
}

func (dp *dataPlane) deliver(from string, dst netip.Addr) error {
	cur := from
	for range 4 {
		next := dp.nextHop(cur, dst)
		switch {
		case next == "":
			return fmt.Errorf("%s has no route to %s", cur, dst)
		case dp.meshAddr(next) == dst:
			return nil
		}
		dp.mu.Lock()
		broken := dp.broken[next]
		dp.mu.Unlock()
		if broken {
			return fmt.Errorf("%s does not forward", next)
		}
		cur = next
	}
	return fmt.Errorf("%s: no path to %s within 4 hops", from, dst)
}

// echo is the probe of host from: the request and the reply must both
// arrive; a packet lost on the way is a missing reply.
func (dp *dataPlane) echo(from string) func(src, dst netip.Addr) error {
	return func(src, dst netip.Addr) error {
		err := dp.deliver(from, dst)
		dp.mu.Lock()
		for name := range dp.silent {
			if dp.meshAddr(name) == dst {
				err = errors.New(name + " answers nothing")
			}
		}
		dp.mu.Unlock()
		if err == nil {
			err = errors.New("nobody holds " + dst.String())
			for name := range dp.ts.hosts {
				if dp.meshAddr(name) == dst {
					err = dp.deliver(name, src)
				}
			}
		}
		if err != nil {
			return fmt.Errorf("%w: %v", probe.ErrNoReply, err)
		}
		return nil
	}
}

// A gateway that stays alive in gossip but stops forwarding (as after a
// firewall reload) is found by the probes of its site's plain host and
// drains: both ends move the pair to the other gateway. Once its ejection
// ends it carries the pair again, is probed again, and stays.
func TestGatewayThatStopsForwardingIsBypassed(t *testing.T) {
	ts := newTwoSites(t)
	dp := &dataPlane{ts: ts, broken: map[string]bool{}}
	run := map[string]*running{}
	for _, n := range []string{"a1", "a2", "a3", "b1", "b2"} {
		ts.hosts[n].echo = dp.echo(n)
		run[n] = startDaemon(t, ts.hosts[n], ts.config(n), Options{})
	}
	pairA := mesh.Assign("a|b", []string{"a1", "a3"})
	other := map[string]string{"a1": "a3", "a3": "a1"}[pairA]
	servedBy := func(gw string) func() error {
		return func() error {
			return errors.Join(
				expectPeers(ts, "a2", map[string][]string{gw: {fmt.Sprintf("10.42.%d.0/24", ts.slice[gw]), "10.42.16.0/20"},
					map[string]string{"a1": "a3", "a3": "a1"}[gw]: {fmt.Sprintf("10.42.%d.0/24", ts.slice[map[string]string{"a1": "a3", "a3": "a1"}[gw]])}}),
				expectPeers(ts, "b1", map[string][]string{"b2": {"10.42.18.0/24"}, gw: {"10.42.0.0/20"}}),
			)
		}
	}
	eventually(t, 20*time.Second, "site b served by "+pairA, servedBy(pairA))
	// Probes run and find it forwarding.
	eventually(t, 10*time.Second, "a2 probes both gateways", func() error {
		st := run["a2"].d.Status()
		if len(st.Probes) == 0 {
			return fmt.Errorf("a2 probes nothing")
		}
		for _, p := range st.Probes {
			if p.Failing > 0 || p.Reported {
				return fmt.Errorf("a2 sees %+v before anything broke", p)
			}
		}
		return nil
	})

	dp.setBroken(pairA, true)
	took := eventually(t, 15*time.Second, "site b moved to "+other, servedBy(other))
	t.Logf("a gateway that stopped forwarding was bypassed in %s", took.Round(time.Millisecond))
	st := run[pairA].d.Status()
	if !st.Node.Draining || !strings.Contains(st.Node.DrainReason, "probes by a2") || st.Ejections != 1 {
		t.Errorf("%s: draining %v (%q), %d ejections; want draining on a2's report, 1 ejection", pairA, st.Node.Draining, st.Node.DrainReason, st.Ejections)
	}
	if st := run["a2"].d.Status(); st.ProbeReports != 1 {
		t.Errorf("a2 made %d reports, want 1", st.ProbeReports)
	}

	// Fixed while ejected: it comes back after the ejection, and the
	// report is withdrawn once probes cross it again.
	dp.setBroken(pairA, false)
	eventually(t, ejectBase+15*time.Second, "site b back on "+pairA, servedBy(pairA))
	eventually(t, 15*time.Second, "a2 finds "+pairA+" forwarding again", func() error {
		for _, p := range run["a2"].d.Status().Probes {
			if p.Gateway == pairA && p.Failing == 0 && !p.Reported {
				return nil
			}
		}
		return fmt.Errorf("a2's probes: %+v", run["a2"].d.Status().Probes)
	})
	if st := run[pairA].d.Status(); st.Node.Draining || st.Ejections != 1 {
		t.Errorf("%s after the fix: draining %v, %d ejections", pairA, st.Node.Draining, st.Ejections)
	}
}

// A far gateway that answers nothing (dead, until the WAN pool says so)
// fails every probe through this site's gateway of the pair, exactly as
// a gateway that forwards nothing would. The probers report it, but the
// gateway, which cannot reach the far gateway either, does not drain:
// its site's other gateway would face the same dead far end.
func TestGatewayIsNotBlamedForASilentFarEnd(t *testing.T) {
	ts := newTwoSites(t)
	dp := &dataPlane{ts: ts, broken: map[string]bool{}, silent: map[string]bool{}}
	run := map[string]*running{}
	for _, n := range []string{"a1", "a2", "a3", "b1", "b2"} {
		ts.hosts[n].echo = dp.echo(n)
		run[n] = startDaemon(t, ts.hosts[n], ts.config(n), Options{})
	}
	pairA := mesh.Assign("a|b", []string{"a1", "a3"})
	eventually(t, 20*time.Second, "a2 probes "+pairA, func() error {
		for _, p := range run["a2"].d.Status().Probes {
			if p.Gateway == pairA && p.Targets > 0 && p.Failing == 0 {
				return nil
			}
		}
		return fmt.Errorf("a2's probes: %+v", run["a2"].d.Status().Probes)
	})
	time.Sleep(probeGrace)
	dp.mu.Lock()
	dp.silent["b1"] = true
	dp.mu.Unlock()
	eventually(t, 20*time.Second, "a2 reports "+pairA, func() error {
		if n := run["a2"].d.Status().ProbeReports; n == 0 {
			return errors.New("no report yet")
		}
		return nil
	})
	// Long enough for the reports to arrive and the gateway to check.
	for range 10 {
		if st := run[pairA].d.Status(); st.Node.Draining || st.Ejections != 0 {
			t.Fatalf("%s drained for a far end that answers nobody: %q, %d ejections", pairA, st.Node.DrainReason, st.Ejections)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// A gateway whose WAN uplink dies sees every other site fail. It must not
// tell its site so: it stops relaying the WAN pool, the other gateway
// takes over, and the site keeps reaching site b through that gateway.
func TestGatewayLosingItsWANUplinkDoesNotCutItsSite(t *testing.T) {
	ts := newTwoSites(t)
	run := map[string]*running{}
	for _, n := range []string{"a1", "a2", "a3", "b1", "b2"} {
		run[n] = startDaemon(t, ts.hosts[n], ts.config(n), Options{})
	}
	reaches := func(gw string) func() error {
		return func() error {
			st := run["a2"].d.Status()
			if len(st.Sites) != 1 || st.Sites[0].Unreachable != "" || st.Sites[0].Gateway != gw {
				return fmt.Errorf("a2's sites: %+v", st.Sites)
			}
			for _, ips := range ts.peersOf("a2") {
				if slices.Contains(ips, "10.42.16.0/20") {
					return expectPeers(ts, "b1", map[string][]string{"b2": {"10.42.18.0/24"}, gw: {"10.42.0.0/20"}})
				}
			}
			return errors.New("a2 routes site b nowhere")
		}
	}
	eventually(t, 20*time.Second, "site b reached", reaches(mesh.Assign("a|b", []string{"a1", "a3"})))
	ts.wan.Cut("a1") // a1's uplink: still in its site, gone from the WAN
	took := eventually(t, 30*time.Second, "site b reached through a3", reaches("a3"))
	t.Logf("site a moved off the gateway without an uplink in %s", took.Round(time.Millisecond))
	// And stays so: a1, seeing site b fail, must not have told a2.
	for range 10 {
		if err := reaches("a3")(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
