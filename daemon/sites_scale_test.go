package daemon

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/meshd/meshd/internal/clustertest"
)

// TestSitesAtScale runs real daemons in this process (serf, the loop, the
// directory relay; only the kernel and the devices are fakes) on serf's
// own timers, as a deployment runs them: a WAN pool of one gateway for
// each of 100 sites, one of which has a site pool of 100 hosts. It
// measures how long until every gateway routes every other site, and
// every host of the big site does too; what gossip costs each member
// per second once settled; and how long a host joining the big site takes
// to reach every site, while the WAN pool hears nothing of it: the
// gateways announce nothing there, and the pool's membership stays as it
// was. The test run uses 20 sites; MESHD_SITES_SCALE=100 is the
// benchmark (about 8 minutes), whose steady state also spans one of the
// site's directory refreshes, so the figure includes them.
func TestSitesAtScale(t *testing.T) {
	n, window := 20, 10*time.Second
	if testing.Short() {
		n = 8
	}
	if v, err := strconv.Atoi(os.Getenv("MESHD_SITES_SCALE")); err == nil && v > 2 && v < 250 {
		n, window = v, directoryRefresh+10*time.Second
	}
	key := gossipKeyFile(t)
	wan, site0 := clustertest.NewNetwork(), clustertest.NewNetwork()

	// gateways[i] is site i's gateway; members are site 0's hosts, its
	// gateway first.
	var gateways, members []*testHost
	var daemons []*running
	for i := range n {
		net := clustertest.NewNetwork()
		if i == 0 {
			net = site0
		}
		g := newTestHost(t, net, fmt.Sprintf("g%03d", i))
		g.wanTr = wan.NewTransport(g.name)
		g.tune = transportOnly
		gateways = append(gateways, g)
	}
	members = append(members, gateways[0])
	newMember := func(j int) *testHost {
		h := newTestHost(t, site0, fmt.Sprintf("h%03d", j))
		h.tune = transportOnly
		return h
	}
	for j := 1; j < n; j++ {
		members = append(members, newMember(j))
	}

	// Seeds form a tree, so no member is everyone's join target.
	seed := func(hosts []*testHost, i int, tr func(*testHost) *clustertest.Transport) string {
		if i == 0 {
			return ""
		}
		return fmt.Sprintf("%q", tr(hosts[(i-1)/2]).Addr())
	}
	lanTr := func(h *testHost) *clustertest.Transport { return h.tr }
	wanTr := func(h *testHost) *clustertest.Transport { return h.wanTr }
	config := func(h *testHost, site, slice int, join, wanJoin string) string {
		text := siteConfigHead(h, key, fmt.Sprintf("s%03d", site), h.wanTr != nil, join, wanJoin)
		return text + fmt.Sprintf(`
[wireguard]
interface = "mesh0"

[[segments]]
name = "blue"
cidr = "10.0.0.0/8"
site_block = "10.%d.0.0/16"
subnet = "10.%d.%d.0/24"
`, site, site, slice)
	}
	var mu sync.Mutex
	start := func(wg *sync.WaitGroup, h *testHost, text string) {
		defer wg.Done()
		r := startDaemon(t, h, h.config(text), Options{})
		mu.Lock()
		daemons = append(daemons, r)
		mu.Unlock()
	}

	began := time.Now()
	var wg sync.WaitGroup
	for i, g := range gateways {
		wg.Add(1)
		// Site 0's hosts join their gateway, not the reverse.
		go start(&wg, g, config(g, i, 0, "", seed(gateways, i, wanTr)))
	}
	wg.Wait()
	for j := 1; j < n; j++ {
		wg.Add(1)
		go start(&wg, members[j], config(members[j], 0, j, seed(members, j, lanTr), ""))
	}
	wg.Wait()
	started := time.Since(began)

	// remoteSites counts the other sites whose block h routes to a peer.
	remoteSites := func(h *testHost, own int) int {
		seen := map[string]bool{}
		for _, ips := range allowedIPs(h) {
			for _, p := range ips {
				if p.Bits() == 16 && p != netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(own), 0, 0}), 16) {
					seen[p.String()] = true
				}
			}
		}
		return len(seen)
	}
	// sitePeers counts the site-0 slices h routes.
	sitePeers := func(h *testHost) int {
		count := 0
		for _, ips := range allowedIPs(h) {
			for _, p := range ips {
				if p.Bits() == 24 && p.Addr().As4()[1] == 0 {
					count++
				}
			}
		}
		return count
	}
	// Both pools are polled together, so each time is from the first
	// start. A pair is a (gateway, other site) or (site-0 host, other site
	// or site peer) that is still missing; serf's broadcasts reach most
	// members at once, and its push/pull repairs the last missed ones.
	wanGaps := func() int {
		gaps := 0
		for i, g := range gateways {
			gaps += n - 1 - remoteSites(g, i)
		}
		return gaps
	}
	siteGaps := func() int {
		gaps := 0
		for _, h := range members {
			gaps += n - 1 - remoteSites(h, 0) + len(members) - 1 - sitePeers(h)
		}
		return gaps
	}
	var wanMostly, wanAll, siteMostly, siteAll time.Duration
	wanPairs, sitePairs := n*(n-1), len(members)*(n-1+len(members)-1)
	for wanAll == 0 || siteAll == 0 {
		if time.Since(began) > 8*time.Minute {
			t.Fatalf("after %s: %d of %d gateway-site pairs and %d of %d site-0 pairs still missing", time.Since(began), wanGaps(), wanPairs, siteGaps(), sitePairs)
		}
		now := time.Since(began)
		if w := wanGaps(); w*100 <= wanPairs && wanMostly == 0 {
			wanMostly = now
		}
		if w := wanGaps(); w == 0 && wanAll == 0 {
			wanAll = now
		}
		if s := siteGaps(); s*100 <= sitePairs && siteMostly == 0 {
			siteMostly = now
		}
		if s := siteGaps(); s == 0 && siteAll == 0 {
			siteAll = now
		}
		time.Sleep(250 * time.Millisecond)
	}

	// Steady state: what gossip costs a member per second in each pool.
	sent := func(hosts []*testHost, tr func(*testHost) *clustertest.Transport) int64 {
		var total int64
		for _, h := range hosts {
			total += tr(h).Sent()
		}
		return total
	}
	wanBefore, siteBefore := sent(gateways, wanTr), sent(members, lanTr)
	time.Sleep(window)
	wanRate := float64(sent(gateways, wanTr)-wanBefore) / window.Seconds() / float64(len(gateways))
	siteRate := float64(sent(members, lanTr)-siteBefore) / window.Seconds() / float64(len(members))

	// One host joins site 0.
	announced := make([]int, n)
	for i, g := range gateways {
		announced[i] = g.wanAnnouncements()
	}
	wanMembers := len(gateways[1].wan().Members())
	late := newMember(n)
	wg.Add(1)
	start(&wg, late, config(late, 0, n, fmt.Sprintf("%q", members[n-1].tr.Addr()), ""))
	joined := eventually(t, 5*time.Minute, "the new host routes every site and every site host routes it", func() error {
		if got := remoteSites(late, 0); got != n-1 {
			return fmt.Errorf("%s routes %d of %d sites", late.name, got, n-1)
		}
		for _, h := range members {
			if sitePeers(h) != len(members) {
				return fmt.Errorf("%s does not route %s yet", h.name, late.name)
			}
		}
		return nil
	})
	for i, g := range gateways {
		if got := g.wanAnnouncements(); got != announced[i] {
			t.Errorf("%s announced %d times in the WAN pool while a host joined site 0", g.name, got-announced[i])
		}
	}
	for _, g := range gateways[1:] {
		if got := len(g.wan().Members()); got != wanMembers {
			t.Errorf("%s's WAN pool changed from %d to %d members while a host joined site 0", g.name, wanMembers, got)
		}
	}

	// Everyone stops at once, as a cluster-wide shutdown would: a leave
	// that overruns its share of the shutdown budget on a machine running
	// 200 daemons is counted, not failed (the daemon moves on, as designed).
	stopBegan := time.Now()
	slow := stopAll(daemons)
	t.Logf("MEASURE sites at scale, %d sites with one gateway each, site 0 of %d hosts, all started in %.1fs: "+
		"99%% of gateway-site pairs routed after %.1fs, all after %.1fs; 99%% of site-0 host-site and host-peer pairs after %.1fs, all after %.1fs; "+
		"steady state over %s: %.0f bytes/s sent per gateway in the WAN pool, %.0f bytes/s per member of site 0's pool; "+
		"a host joining site 0 routes all %d sites and is routed by its site after %.1fs, with 0 announcements and no membership change in the WAN pool; "+
		"all %d daemons stopped together in %.1fs (%d leaves overran their budget)",
		n, len(members), started.Seconds(), wanMostly.Seconds(), wanAll.Seconds(), siteMostly.Seconds(), siteAll.Seconds(),
		window, wanRate, siteRate, n-1, joined.Seconds(), len(daemons), time.Since(stopBegan).Seconds(), slow)
}

// stopAll stops daemons in parallel and counts those whose Close
// reported a step that did not finish in time; any other error is still
// reported by the test's cleanup.
func stopAll(daemons []*running) (slow int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, r := range daemons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.cancel()
			<-r.done
			r.done <- nil
			if err := r.d.Close(); err != nil && strings.Contains(err.Error(), "did not finish") {
				mu.Lock()
				slow++
				mu.Unlock()
				r.closeChecked = true
			}
		}()
	}
	wg.Wait()
	return slow
}

// transportOnly keeps serf's and meshd's own timers and only swaps the
// network, so what a scale test measures is what a deployment would see.
func transportOnly(tr memberlist.Transport) func(*serf.Config) {
	return func(c *serf.Config) { c.MemberlistConfig.Transport = tr }
}

// allowedIPs lists h's device peers' AllowedIPs.
func allowedIPs(h *testHost) [][]netip.Prefix {
	d := h.link("mesh0")
	if d == nil {
		return nil
	}
	dev, err := d.Client.Device("mesh0")
	if err != nil {
		return nil
	}
	var out [][]netip.Prefix
	for _, p := range dev.Peers {
		var ips []netip.Prefix
		for _, n := range p.AllowedIPs {
			if pfx, ok := netip.AddrFromSlice(n.IP); ok {
				ones, _ := n.Mask.Size()
				ips = append(ips, netip.PrefixFrom(pfx.Unmap(), ones))
			}
		}
		out = append(out, ips)
	}
	return out
}
