package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/clustertest"
	"github.com/meshd/meshd/mesh"
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
`, name, h.dir+"/data", h.dir+"/meshd.sock", h.addr, strings.Join(join, ", "), ts.key, site, ts.isGateway[name])
	if ts.isGateway[name] {
		text += fmt.Sprintf(`
[wan]
advertise_addr = %q
join = [%s]
`, netip.MustParseAddrPort(h.wanTr.Addr()).Addr(), strings.Join(wanJoin, ", "))
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
			if oh.publicKey() == p.PublicKey {
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
