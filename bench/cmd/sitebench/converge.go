package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/meshd/meshd/bench/internal/procstat"
	"github.com/meshd/meshd/lab"
)

type cvFlags struct {
	meshd           string
	hosts, gateways int
	reps            int
	joinEvery       time.Duration
	failEvery       time.Duration
	jsonOut, logs   string
	noHostProbes    bool
}

// joinResult is one new host started in site b.
type joinResult struct {
	Host string `json:"host"`
	// Up is when its control socket first answered; Median and All when
	// the median and the last of site a's probes had their first reply
	// (all seconds after the process started).
	Up     float64 `json:"meshd_up_s"`
	Median float64 `json:"reachable_median_s"`
	All    float64 `json:"reachable_from_all_s"`
	Probes int     `json:"probes"`
	// SiteAUnchanged: no device of site a changed its peers meanwhile
	// (site a routes site b as one block through its gateway).
	SiteAUnchanged bool    `json:"site_a_peers_unchanged"`
	Other          float64 `json:"other_cpu_pct"`
	Err            string  `json:"error,omitempty"`
}

// failResult is one SIGKILL of the gateway of site a serving the pair
// (a, b), and its restart.
type failResult struct {
	Victim, Remote string
	// Back is when the first reply to a request sent after the kill
	// arrived, Gap the silence around the kill; per stream, so median and
	// max over the streams (max: A<->B flows again everywhere).
	BackMedian float64 `json:"back_median_s"`
	BackMax    float64 `json:"back_max_s"`
	GapMedian  float64 `json:"gap_median_s"`
	GapMax     float64 `json:"gap_max_s"`
	Lost       int     `json:"lost_requests"`
	Streams    int     `json:"streams"`
	NewGateway string  `json:"new_gateway"`
	// Failback: the killed gateway restarted; the longest silence of any
	// stream from the restart until the pair settled (back on the
	// restarted gateway, or not, see MovedBack).
	MovedBack      bool    `json:"moved_back"`
	FailbackMedian float64 `json:"failback_silence_median_s"`
	FailbackMax    float64 `json:"failback_silence_max_s"`
	// SettleWait is how long the repetition waited for every gateway to
	// stop draining before it started; Drained lists the gateways that
	// drained from the kill to the end of the failback, with meshd's
	// reason.
	SettleWait float64  `json:"settle_wait_s"`
	Drained    []string `json:"drained"`
	Other      float64  `json:"other_cpu_pct"`
	Err        string   `json:"error,omitempty"`
}

type cvReport struct {
	Date       string  `json:"date"`
	Kernel     string  `json:"kernel"`
	CPUs       int     `json:"cpus"`
	CPUModel   string  `json:"cpu_model"`
	Go         string  `json:"go"`
	Sites      int     `json:"sites"`
	Hosts      int     `json:"hosts_per_site"`
	Gateways   int     `json:"gateways_per_site"`
	StartSites float64 `json:"start_all_route_all_sites_s"`
	// StartSitesMedian is the median host's time, StartSlowest the
	// slowest hosts with theirs.
	StartSitesMedian float64      `json:"start_route_all_sites_median_s"`
	StartSlowest     []string     `json:"start_slowest"`
	StartPods        float64      `json:"start_cross_site_pods_answer_s"`
	JoinEvery        float64      `json:"join_probe_interval_s"`
	FailEvery        float64      `json:"fail_probe_interval_s"`
	Joins            []joinResult `json:"joins"`
	Fails            []failResult `json:"failovers"`
}

func cmdConverge(ctx context.Context, args []string) error {
	var f cvFlags
	fs := flag.NewFlagSet("converge", flag.ContinueOnError)
	fs.StringVar(&f.meshd, "meshd", "", "meshd binary")
	fs.IntVar(&f.hosts, "n", 10, "hosts per site (3 sites)")
	fs.IntVar(&f.gateways, "g", 2, "gateways per site")
	fs.IntVar(&f.reps, "r", 3, "repetitions of each measurement (a new host each time)")
	fs.DurationVar(&f.joinEvery, "join-interval", 50*time.Millisecond, "echo interval of the new-host probes")
	fs.DurationVar(&f.failEvery, "fail-interval", 100*time.Millisecond, "echo interval of the failover probes")
	fs.BoolVar(&f.noHostProbes, "pods-only", false, "probe the new host from site a's pods only, not from the hosts too")
	fs.StringVar(&f.jsonOut, "json", "", "also write the results as JSON here")
	fs.StringVar(&f.logs, "keep-logs", "", "copy every meshd log here before the lab is removed")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if err := needRoot(); err != nil {
		return err
	}
	if f.meshd == "" || f.hosts < f.gateways+2 || f.gateways < 2 || f.reps < 1 {
		return fmt.Errorf("bad flags: -meshd %q -n %d -g %d -r %d (need -g >= 2 for a failover, -n >= g+2)", f.meshd, f.hosts, f.gateways, f.reps)
	}
	return runConverge(ctx, f)
}

// convergeLab is the 3-site lab: a, b, c of f.hosts hosts each, the first
// f.gateways of each its gateways, all public (no NAT); site b has f.reps
// more hosts, started one at a time as newcomers.
type convergeLab struct {
	l          *lab.Lab
	a, b, c    *lab.Site
	newcomers  []*lab.Host
	steadyHost []*lab.Host // everything but the newcomers
	bin        string
}

func runConverge(ctx context.Context, f cvFlags) error {
	l, closeLab, err := newLab(ctx, lab.Spec{Prefix: prefixConverge, Mode: "userspace", Segments: []lab.SegmentSpec{siteSegment}, Sites: []lab.SiteSpec{
		{Name: "a", Hosts: f.hosts, Gateways: f.gateways},
		{Name: "b", Hosts: f.hosts + f.reps, Gateways: f.gateways},
		{Name: "c", Hosts: f.hosts, Gateways: f.gateways},
	}})
	if err != nil {
		return err
	}
	defer closeLab()
	defer func() { _ = keepLogs(l, f.logs) }()
	cl := &convergeLab{l: l, a: l.Site("a"), b: l.Site("b"), c: l.Site("c"), bin: f.meshd}
	cl.newcomers = cl.b.Hosts()[f.hosts:]
	for _, h := range l.Hosts() {
		if !slices.Contains(cl.newcomers, h) {
			cl.steadyHost = append(cl.steadyHost, h)
		}
	}
	rep := &cvReport{
		Date: time.Now().UTC().Format(time.RFC3339), Kernel: procstat.KernelRelease(), CPUs: runtime.NumCPU(), CPUModel: procstat.CPUModel(), Go: runtime.Version(),
		Sites: 3, Hosts: f.hosts, Gateways: f.gateways, JoinEvery: f.joinEvery.Seconds(), FailEvery: f.failEvery.Seconds(),
	}
	if err := cl.start(ctx, rep); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%d meshd started: every host routes every site after %.2f s (median host %.2f s; slowest %s), sampled cross-site pods answer after %.2f s\n",
		len(cl.steadyHost), rep.StartSites, rep.StartSitesMedian, strings.Join(rep.StartSlowest, ", "), rep.StartPods)
	wg, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}
	defer wg.Close()
	var failed bool
	for i := 0; i < f.reps && ctx.Err() == nil; i++ {
		j := cl.join(ctx, f, wg, cl.newcomers[i])
		rep.Joins = append(rep.Joins, j)
		failed = failed || j.Err != ""
		fmt.Fprintf(os.Stderr, "join %d/%d: %s\n", i+1, f.reps, describeJoin(j))
		if ctx.Err() != nil {
			break
		}
		fr := cl.failover(ctx, f)
		rep.Fails = append(rep.Fails, fr)
		failed = failed || fr.Err != ""
		fmt.Fprintf(os.Stderr, "failover %d/%d: %s\n", i+1, f.reps, describeFail(fr))
	}
	printConverge(os.Stdout, rep)
	return finish(ctx, f.jsonOut, rep, failed, "some measurements failed (see above)")
}

// start starts every host but the newcomers at once and returns when
// every host routes every other site (and which hosts took longest), and
// when a sample of cross-site pod pairs answers (every pod to one pod of
// each other site).
func (cl *convergeLab) start(ctx context.Context, rep *cvReport) error {
	t0 := time.Now()
	if err := startMeshd(cl.bin, cl.steadyHost); err != nil {
		return err
	}
	// Up to the site directory's full refresh (2 min) and then some: a
	// host that missed a relayed announcement waits for it.
	times, err := siteTimes(ctx, cl.l, cl.steadyHost, t0, 240*time.Second)
	if err != nil {
		return fmt.Errorf("sites never converged: %w", err)
	}
	rep.StartSites = time.Since(t0).Seconds()
	rep.StartSitesMedian = median(slices.Collect(maps.Values(times)))
	rep.StartSlowest = slowest(times, 5)
	if err := waitAnswered(ctx, cl.crossSiteSample(), 120*time.Second); err != nil {
		return fmt.Errorf("cross-site pods: %w", err)
	}
	rep.StartPods = time.Since(t0).Seconds()
	return nil
}

// crossSiteSample: every running host's pod pings one pod of each other
// site, rotating over that site's hosts that are not gateways.
func (cl *convergeLab) crossSiteSample() []probe {
	var probes []probe
	for i, h := range cl.steadyHost {
		for _, s := range []*lab.Site{cl.a, cl.b, cl.c} {
			if s == h.Site() {
				continue
			}
			others := cl.plainHosts(s)
			probes = append(probes, probe{h.PodNS(segment), others[i%len(others)].PodAddr(segment)})
		}
	}
	return probes
}

// plainHosts are s's running hosts that are not gateways (newcomers
// excluded).
func (cl *convergeLab) plainHosts(s *lab.Site) []*lab.Host {
	var out []*lab.Host
	for _, h := range s.Hosts() {
		if !h.IsGateway() && !slices.Contains(cl.newcomers, h) {
			out = append(out, h)
		}
	}
	return out
}
