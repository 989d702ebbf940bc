package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/bench/internal/procstat"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/lab"
)

// meshd's defaults, which the lab's configs keep: segment 0 uses table 51800.
const convergeTable = 51800

var convergeSegments = []lab.SegmentSpec{{Name: "blue", CIDR: "10.42.0.0/16", SliceBits: 24}}

// Issue targets at 25 hosts.
const (
	targetJoin  = 2 * time.Second
	targetLeave = 1 * time.Second
	targetFail  = 10 * time.Second
)

type convergeResult struct {
	Hosts           int     `json:"hosts"`
	PingPairs       int     `json:"ping_pairs"`
	StartPing       float64 `json:"start_all_pairs_s"`
	StartPeers      float64 `json:"start_all_peers_s"`
	StartUp         float64 `json:"start_all_daemons_up_s"`
	OtherCPURun     float64 `json:"other_cpu_whole_run_pct"`
	StartPingMedian float64 `json:"start_pairs_median_s"`
	JoinPeer        float64 `json:"join_peer_and_route_s"`
	JoinPing        float64 `json:"join_reachable_s"`
	JoinPingMedian  float64 `json:"join_reachable_median_s"`
	JoinSelf        float64 `json:"join_newcomer_has_all_peers_s"`
	LeaveGone       float64 `json:"leave_gone_s"`
	LeaveExit       float64 `json:"leave_process_exit_s"`
	FailGone        float64 `json:"fail_gone_s"`
	RSSMeanMiB      float64 `json:"idle_rss_mean_mib"`
	RSSMaxMiB       float64 `json:"idle_rss_max_mib"`
	CPUMean         float64 `json:"idle_cpu_mean_pct"`
	CPUMax          float64 `json:"idle_cpu_max_pct"`
	IdleSeconds     float64 `json:"idle_window_s"`
	OtherCPU        float64 `json:"other_cpu_pct"`
	Err             string  `json:"error,omitempty"`
}

func cmdConverge(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("converge", flag.ContinueOnError)
	meshdBin := fs.String("meshd", "", "meshd binary")
	prefix := fs.String("prefix", "mbcv", "lab name prefix")
	idle := fs.Duration("idle", 10*time.Second, "window over which idle CPU% is measured")
	jsonOut := fs.String("json", "", "also write the results as JSON here")
	keepLogs := fs.String("keep-logs", "", "copy every meshd log here (as <hosts>-<host>.log) before the lab is removed")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if err := needRoot(); err != nil {
		return err
	}
	if *meshdBin == "" {
		return errors.New("-meshd is required")
	}
	keepLogsDir = *keepLogs
	var sizes []int
	for _, a := range fs.Args() {
		n, err := strconv.Atoi(a)
		if err != nil || n < 3 || n > 98 {
			return fmt.Errorf("host count %q: want 3..98 (one more host is added for the join test)", a)
		}
		sizes = append(sizes, n)
	}
	if len(sizes) == 0 {
		sizes = []int{5, 10, 25}
	}
	bin := mustAbs(*meshdBin)
	var results []convergeResult
	var errs []error
	for _, n := range sizes {
		if ctx.Err() != nil {
			break
		}
		r, err := convergeSize(ctx, bin, *prefix, n, *idle)
		if err != nil {
			r.Err = err.Error()
			errs = append(errs, fmt.Errorf("%d hosts: %w", n, err))
			fmt.Printf("  FAILED: %v\n", err)
		}
		results = append(results, r)
	}
	printConverge(os.Stdout, results)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	if ctx.Err() != nil {
		errs = append(errs, ctx.Err())
	}
	return errors.Join(errs...)
}

var keepLogsDir string

// convergeSize runs every phase on n hosts plus one newcomer.
func convergeSize(ctx context.Context, bin, prefix string, n int, idle time.Duration) (res convergeResult, err error) {
	res.Hosts = n
	fmt.Printf("\n== %d hosts (+1 newcomer) ==\n", n)
	l, err := lab.New(ctx, lab.Spec{Prefix: prefix, Hosts: n + 1, Mode: "userspace", Segments: convergeSegments})
	if err != nil {
		return res, err
	}
	defer func() {
		keepLogs(l, n)
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	c, err := newConvergeRun(l, bin, n)
	if err != nil {
		return res, err
	}
	defer c.close()
	allNS, _ := lab.ListNetns(l.Prefix())
	runLoad := procstat.StartOtherLoad(procstat.NetnsInodes(allNS), 500*time.Millisecond)
	defer func() {
		res.OtherCPURun = runLoad.Read()
		fmt.Printf("  other processes on this machine used %.0f%% CPU (100 = one core) during this size's run\n", res.OtherCPURun)
	}()
	phases := []struct {
		name string
		run  func(context.Context, *convergeResult) error
	}{
		{"start", c.start},
		{"idle", func(ctx context.Context, res *convergeResult) error { return c.idleFootprint(ctx, idle, res) }},
		{"join", c.join},
		{"leave", c.leave},
		{"failure", c.fail},
	}
	for _, p := range phases {
		if err := p.run(ctx, &res); err != nil {
			return res, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	return res, nil
}

// keepLogs copies every meshd log of an n-host lab to keepLogsDir, if set.
func keepLogs(l *lab.Lab, n int) {
	if keepLogsDir == "" {
		return
	}
	_ = os.MkdirAll(keepLogsDir, 0o755)
	for _, h := range l.Hosts() {
		if b, err := os.ReadFile(h.LogPath()); err == nil {
			_ = os.WriteFile(fmt.Sprintf("%s/%d-%s.log", keepLogsDir, n, h.Name()), b, 0o644)
		}
	}
}

// convergeRun is one size's lab and what its phases share. Phases run
// one after another on the caller's goroutine; the concurrent checks
// inside a phase only read.
type convergeRun struct {
	bin      string
	l        *lab.Lab
	hosts    []*lab.Host // the n started at once
	newcomer *lab.Host   // joins, then leaves
	devs     *wgDevices
	nl       map[*lab.Host]*netlink.Handle // each host's routes
	// keepalive is the persistent keepalive meshd gives every peer once
	// settled: the config's, defaults included.
	keepalive time.Duration
}

func newConvergeRun(l *lab.Lab, bin string, n int) (_ *convergeRun, err error) {
	c := &convergeRun{bin: bin, l: l, hosts: l.Hosts()[:n], newcomer: l.Host(n + 1), nl: map[*lab.Host]*netlink.Handle{}}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	for _, h := range l.Hosts() {
		nsh, err := netns.GetFromName(h.NS())
		if err != nil {
			return nil, err
		}
		hd, err := netlink.NewHandleAt(nsh)
		nsh.Close()
		if err != nil {
			return nil, err
		}
		c.nl[h] = hd
		if _, err := h.WriteConfig(""); err != nil {
			return nil, err
		}
	}
	cfg, err := config.Load(c.hosts[0].ConfigPath())
	if err != nil {
		return nil, err
	}
	c.keepalive = time.Duration(cfg.WireGuard.PersistentKeepalive) * time.Second
	if c.devs, err = newWGDevices(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *convergeRun) close() {
	for _, h := range c.nl {
		h.Close()
	}
	if c.devs != nil {
		c.devs.Close()
	}
}

// hasRoute reports whether h routes s's blue slice through the tunnel.
func (c *convergeRun) hasRoute(h, s *lab.Host) bool {
	return hasRoute(c.nl[h], s.Subnet("blue"))
}

// startPairs are the pod pairs the start phase pings: all of them up to
// 10 hosts; above that a fixed sample, every host pinging 3 others spread
// over the ring.
func startPairs(hosts []*lab.Host) (from []string, to []netip.Addr) {
	n := len(hosts)
	add := func(a, b *lab.Host) { from, to = append(from, a.PodNS("blue")), append(to, b.PodAddr("blue")) }
	for i, a := range hosts {
		if n <= 10 {
			for _, b := range hosts {
				if a != b {
					add(a, b)
				}
			}
			continue
		}
		for _, off := range []int{1, n / 3, 2 * n / 3} {
			add(a, hosts[(i+off)%n])
		}
	}
	return from, to
}

// start starts the n hosts at once and measures until every control
// socket answers, every device has exactly the other n-1 peers, and the
// sampled pod pairs answer.
func (c *convergeRun) start(ctx context.Context, res *convergeResult) error {
	hosts, n := c.hosts, len(c.hosts)
	// In-process pingers, one raw socket per pair, opened before the
	// clock starts: a ping(8) process per probe, dozens a second, loaded
	// the machine under test.
	pingers, err := openPingers(startPairs(hosts))
	if err != nil {
		return err
	}
	defer pingers.Close()
	t0 := time.Now()
	for _, h := range hosts {
		if err := h.Start(c.bin); err != nil {
			return err
		}
	}
	times, err := waitConcurrently(ctx, t0, 120*time.Second,
		condition{n, func(_ context.Context, i int) bool {
			_, err := control.NewClient(hosts[i].ControlSocket()).Status()
			return err == nil
		}},
		condition{n, func(_ context.Context, i int) bool {
			return c.devs.hasExactly(hosts[i], others(hosts, hosts[i]))
		}},
		pingers.answered())
	if err := errors.Join(err, checkRunning(hosts)); err != nil {
		return err
	}
	upT, peersT, pingT, each := times[0].last, times[1].last, times[2].last, times[2].each
	res.PingPairs = len(pingers)
	res.StartUp, res.StartPeers, res.StartPing = upT.Seconds(), peersT.Seconds(), pingT.Seconds()
	res.StartPingMedian = median(each).Seconds()
	fmt.Printf("  start: every meshd answers on its control socket after %.2fs; every host has all %d peers configured after %.2fs;\n"+
		"         %d sampled pod pairs answer after %.2fs (median pair %.2fs)\n",
		res.StartUp, n-1, res.StartPeers, res.PingPairs, res.StartPing, res.StartPingMedian)
	return nil
}

func others(hosts []*lab.Host, h *lab.Host) []*lab.Host {
	return slices.DeleteFunc(slices.Clone(hosts), func(o *lab.Host) bool { return o == h })
}

// waitSettled waits until every one of hosts has exactly the others as
// peers, each with the configured keepalive: meshd gives a new peer its
// keepalive only after wgdev.KeepaliveDelay, so this is the end of the
// start-up work a membership change causes (at once when keepalives are
// off, meshd's default).
func (c *convergeRun) waitSettled(ctx context.Context, hosts []*lab.Host) error {
	_, err := waitAll(ctx, time.Now(), 60*time.Second, len(hosts), func(_ context.Context, i int) bool {
		return c.devs.settled(hosts[i], others(hosts, hosts[i]), c.keepalive)
	})
	if err != nil {
		return fmt.Errorf("peers or their keepalive (%s) not configured everywhere: %w", c.keepalive, err)
	}
	return nil
}

// idleFootprint measures every meshd's RSS and CPU% over idle, once the
// converged mesh has settled and carries no traffic.
func (c *convergeRun) idleFootprint(ctx context.Context, idle time.Duration, res *convergeResult) error {
	if err := c.waitSettled(ctx, c.hosts); err != nil {
		return err
	}
	var pids []int
	for _, h := range c.hosts {
		pids = append(pids, h.Pid())
	}
	nss, _ := lab.ListNetns(c.l.Prefix())
	others := procstat.StartOtherLoad(procstat.NetnsInodes(nss), 500*time.Millisecond)
	m := procstat.NewMeter(pids...)
	select {
	case <-ctx.Done():
		others.Read()
		return ctx.Err()
	case <-time.After(idle):
	}
	cpuTime, elapsed, _ := m.Read()
	cpus := cpuPercents(cpuTime, elapsed)
	res.OtherCPU = others.Read()
	res.IdleSeconds = idle.Seconds()
	n := float64(len(c.hosts))
	for i, pid := range pids {
		rss, err := procstat.ProcRSS(pid)
		if err != nil {
			return fmt.Errorf("RSS of %s: %w", c.hosts[i].Name(), err)
		}
		mib := float64(rss) / 1024
		res.RSSMeanMiB += mib / n
		res.RSSMaxMiB = max(res.RSSMaxMiB, mib)
		res.CPUMean += cpus[i] / n
		res.CPUMax = max(res.CPUMax, cpus[i])
	}
	fmt.Printf("  idle meshd over %s: RSS mean %.1f MiB (max %.1f), CPU mean %.2f%% (max %.2f%%); other processes %.0f%%\n",
		idle, res.RSSMeanMiB, res.RSSMaxMiB, res.CPUMean, res.CPUMax, res.OtherCPU)
	return nil
}

// join starts the newcomer and measures until every host has it as a
// peer with a route, it has every host as a peer, and its pod answers
// every host's pod.
func (c *convergeRun) join(ctx context.Context, res *convergeResult) error {
	hosts, nc, n := c.hosts, c.newcomer, len(c.hosts)
	var from []string
	var to []netip.Addr
	for _, h := range hosts {
		from, to = append(from, h.PodNS("blue")), append(to, nc.PodAddr("blue"))
	}
	pingers, err := openPingers(from, to)
	if err != nil {
		return err
	}
	defer pingers.Close()
	t0 := time.Now()
	if err := nc.Start(c.bin); err != nil {
		return err
	}
	times, err := waitConcurrently(ctx, t0, 60*time.Second,
		condition{n, func(_ context.Context, i int) bool {
			return c.devs.peerState(hosts[i], nc) == "configured" && c.hasRoute(hosts[i], nc)
		}},
		condition{1, func(context.Context, int) bool { return c.devs.hasExactly(nc, hosts) }},
		pingers.answered())
	if err := errors.Join(err, checkRunning(append(slices.Clone(hosts), nc))); err != nil {
		return err
	}
	peerT, selfT, pingT, each := times[0].last, times[1].last, times[2].last, times[2].each
	res.JoinPeer, res.JoinPing, res.JoinSelf = peerT.Seconds(), pingT.Seconds(), selfT.Seconds()
	res.JoinPingMedian = median(each).Seconds()
	fmt.Printf("  join: every host has %s as a peer with a route after %.2fs; %s has all %d peers after %.2fs;\n"+
		"        its pod answers every pod after %.2fs (median host %.2fs, %d of %d hosts over %s)\n",
		nc.Name(), res.JoinPeer, nc.Name(), n, res.JoinSelf, res.JoinPing, res.JoinPingMedian, countOver(each, targetJoin), n, targetJoin)
	return nil
}

// leave stops the newcomer with SIGTERM, once the join has settled, and
// measures until it is gone from every host's peers and routes.
func (c *convergeRun) leave(ctx context.Context, res *convergeResult) error {
	hosts, nc := c.hosts, c.newcomer
	if err := c.waitSettled(ctx, append(slices.Clone(hosts), nc)); err != nil {
		return err
	}
	t0 := time.Now()
	var stopErr error
	var exitT time.Duration
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		stopErr = nc.Stop()
		exitT = time.Since(t0)
	}()
	goneT, goneErr := waitAll(ctx, t0, 60*time.Second, len(hosts), func(_ context.Context, i int) bool {
		return c.devs.peerState(hosts[i], nc) == "gone" && !c.hasRoute(hosts[i], nc)
	})
	<-stopped
	if err := errors.Join(goneErr, stopErr); err != nil {
		return err
	}
	res.LeaveGone, res.LeaveExit = goneT.Seconds(), exitT.Seconds()
	fmt.Printf("  leave (SIGTERM): %s gone from every host's peers and routes after %.2fs (its meshd exited after %.2fs)\n",
		nc.Name(), res.LeaveGone, res.LeaveExit)
	return nil
}

// fail kills the last original host with SIGKILL and measures until it
// is gone from every other host's peers and routes.
func (c *convergeRun) fail(ctx context.Context, res *convergeResult) error {
	n := len(c.hosts)
	victim, rest := c.hosts[n-1], c.hosts[:n-1]
	t0 := time.Now()
	if err := victim.Kill(); err != nil {
		return err
	}
	failT, err := waitAll(ctx, t0, 90*time.Second, len(rest), func(_ context.Context, i int) bool {
		return c.devs.peerState(rest[i], victim) == "gone" && !c.hasRoute(rest[i], victim)
	})
	if err != nil {
		return err
	}
	res.FailGone = failT.Seconds()
	fmt.Printf("  failure (SIGKILL): %s gone from every host's peers and routes after %.2fs\n", victim.Name(), res.FailGone)
	return checkRunning(rest)
}

func checkRunning(hosts []*lab.Host) error {
	for _, h := range hosts {
		if !h.Running() {
			return fmt.Errorf("meshd on %s exited: %v: %s", h.Name(), h.Wait(0), firstErrorLine(h.LogPath()))
		}
	}
	return nil
}

// wgDevices reads the hosts' WireGuard devices straight from their UAPI
// sockets in /var/run/wireguard, reachable from the root namespace (every
// converge host runs meshd in userspace mode). A peer check thus costs
// meshd one device read instead of a full status (device, nftables
// counters, JSON), which at 25 hosts polled every 50 ms took enough CPU
// to distort the times measured.
type wgDevices struct {
	c *wgctrl.Client

	mu   sync.Mutex
	keys map[*lab.Host]wgtypes.Key
}

func newWGDevices() (*wgDevices, error) {
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("wgctrl: %w", err)
	}
	return &wgDevices{c: c, keys: map[*lab.Host]wgtypes.Key{}}, nil
}

func (d *wgDevices) Close() error { return d.c.Close() }

// key returns h's WireGuard public key, derived from the private key meshd
// creates in its data_dir on first start; ok is false until it exists.
func (d *wgDevices) key(h *lab.Host) (k wgtypes.Key, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if k, ok := d.keys[h]; ok {
		return k, true
	}
	priv, err := crypto.LoadPrivateKey(filepath.Join(h.DataDir(), crypto.KeyFileName))
	if err != nil {
		return wgtypes.Key{}, false
	}
	k = priv.PublicKey()
	d.keys[h] = k
	return k, true
}

// peers returns the peers configured on h's device, by public key.
func (d *wgDevices) peers(h *lab.Host) (map[wgtypes.Key]wgtypes.Peer, error) {
	dev, err := d.c.Device(h.Interface())
	if err != nil {
		return nil, err
	}
	m := make(map[wgtypes.Key]wgtypes.Peer, len(dev.Peers))
	for _, p := range dev.Peers {
		m[p.PublicKey] = p
	}
	return m, nil
}

// hasExactly reports whether h's device has others, and no one else, as
// its peers.
func (d *wgDevices) hasExactly(h *lab.Host, others []*lab.Host) bool {
	return d.peersAre(h, others, func(wgtypes.Peer) bool { return true })
}

// settled is hasExactly with every peer's persistent keepalive at
// keepalive.
func (d *wgDevices) settled(h *lab.Host, others []*lab.Host, keepalive time.Duration) bool {
	return d.peersAre(h, others, func(p wgtypes.Peer) bool { return p.PersistentKeepaliveInterval == keepalive })
}

func (d *wgDevices) peersAre(h *lab.Host, others []*lab.Host, ok func(wgtypes.Peer) bool) bool {
	ps, err := d.peers(h)
	if err != nil || len(ps) != len(others) {
		return false
	}
	for _, o := range others {
		k, known := d.key(o)
		if p, has := ps[k]; !known || !has || !ok(p) {
			return false
		}
	}
	return true
}

// peerState is how host's device sees peer: "configured" (a peer with
// its key), "gone" (none), or "other" (device or key unreadable).
func (d *wgDevices) peerState(host, peer *lab.Host) string {
	k, ok := d.key(peer)
	if !ok {
		return "other"
	}
	ps, err := d.peers(host)
	if err != nil {
		return "other"
	}
	if _, ok := ps[k]; ok {
		return "configured"
	}
	return "gone"
}

func hasRoute(h *netlink.Handle, dst netip.Prefix) bool {
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: convergeTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return false
	}
	want := &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)}
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == want.String() && r.Type == 1 /* RTN_UNICAST */ {
			return true
		}
	}
	return false
}

// waitAll checks items 0..n-1 repeatedly (at most 16 checks at a time)
// until each has passed once, and returns when the last one first passed,
// measured from t0. Checks that pass stop being repeated.
func waitAll(ctx context.Context, t0 time.Time, timeout time.Duration, n int, check func(context.Context, int) bool) (time.Duration, error) {
	last, _, err := waitEach(ctx, t0, timeout, n, check)
	return last, err
}

// condition is what a phase waits for on n items: check(ctx, i) is
// true once item i is there.
type condition struct {
	n     int
	check func(context.Context, int) bool
}

// passed is when a condition's items first passed, measured from the
// phase's start: each item's, and the last.
type passed struct {
	last time.Duration
	each []time.Duration
}

// waitConcurrently waits for all conditions at once (see waitEach) and
// returns when each one's items passed, in the conditions' order.
func waitConcurrently(ctx context.Context, t0 time.Time, timeout time.Duration, conds ...condition) ([]passed, error) {
	out := make([]passed, len(conds))
	errs := make([]error, len(conds))
	var wg sync.WaitGroup
	for i, c := range conds {
		wg.Go(func() { out[i].last, out[i].each, errs[i] = waitEach(ctx, t0, timeout, c.n, c.check) })
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// waitEach is waitAll that also returns when each item first passed.
func waitEach(ctx context.Context, t0 time.Time, timeout time.Duration, n int, check func(context.Context, int) bool) (time.Duration, []time.Duration, error) {
	ctx, cancel := context.WithDeadline(ctx, t0.Add(timeout))
	defer cancel()
	sem := make(chan struct{}, 16)
	var mu sync.Mutex
	var last time.Duration
	each := make([]time.Duration, n)
	pending := n
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				sem <- struct{}{}
				ok := check(ctx, i)
				<-sem
				if ok {
					d := time.Since(t0)
					mu.Lock()
					last = max(last, d)
					each[i] = d
					pending--
					mu.Unlock()
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
	wg.Wait()
	if pending > 0 {
		return 0, each, fmt.Errorf("%d of %d checks still failing after %s", pending, n, timeout)
	}
	return last, each, nil
}

func printConverge(w io.Writer, rs []convergeResult) {
	fmt.Fprintf(w, "\nmeshd convergence — %s, kernel %s, %d CPUs; all meshd in userspace mode, serf LAN defaults\n",
		time.Now().UTC().Format(time.RFC3339), procstat.KernelRelease(), runtime.NumCPU())
	fmt.Fprintln(w, "seconds from the event until every host agrees; idle = converged mesh, no traffic; others = CPU used meanwhile by processes outside the benchmark")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| hosts | start: all meshd up | start: all peers configured everywhere | start: sampled pod pairs answer | join: peer + route everywhere | join: reachable from all | leave (SIGTERM): gone everywhere | failure (SIGKILL): gone everywhere | idle RSS MiB mean/max | idle CPU% mean/max | others' CPU% |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		if r.Err != "" && r.StartPeers == 0 {
			fmt.Fprintf(w, "| %d | FAILED: %s | | | | | | | | | |\n", r.Hosts, r.Err)
			continue
		}
		fmt.Fprintf(w, "| %d | %s | %s | %s (%d pairs) | %s | %s | %s | %s | %.1f / %.1f | %.2f / %.2f | %.0f |\n", r.Hosts,
			secs(r.StartUp, 0), secs(r.StartPeers, 0), secs(r.StartPing, 0), r.PingPairs, secs(r.JoinPeer, 0), secs(r.JoinPing, targetJoin),
			secs(r.LeaveGone, targetLeave), secs(r.FailGone, targetFail), r.RSSMeanMiB, r.RSSMaxMiB, r.CPUMean, r.CPUMax, r.OtherCPURun)
	}
	fmt.Fprintf(w, "| target (25 hosts) | | | | | <= %.0f s | <= %.0f s | <= %.0f s | | | |\n", targetJoin.Seconds(), targetLeave.Seconds(), targetFail.Seconds())
	for _, r := range rs {
		if r.Err != "" {
			fmt.Fprintf(w, "FAILED %d hosts: %s\n", r.Hosts, r.Err)
		}
	}
}

// secs formats a phase's time, marking one over its target.
func secs(s float64, target time.Duration) string {
	if s == 0 {
		return "-"
	}
	if target > 0 && s > target.Seconds() {
		return fmt.Sprintf("%.2f (over)", s)
	}
	return fmt.Sprintf("%.2f", s)
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func countOver(ds []time.Duration, limit time.Duration) int {
	n := 0
	for _, d := range ds {
		if d > limit {
			n++
		}
	}
	return n
}
