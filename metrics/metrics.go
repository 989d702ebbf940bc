// Package metrics exports meshd's state to Prometheus. Everything except
// the reconcile timings is read from the daemon's live status at scrape
// time, so the numbers can never drift from what `meshd status` shows.
package metrics

import (
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/meshd/meshd/control"
)

const namespace = "meshd"

// peerStates are always exported, at 0 when empty, so alerts such as
// meshd_peers{state="failed"} > 0 have a series to evaluate from the start.
var peerStates = []string{"alive", "failed", "left", "leaving"}

// Metrics is meshd's registry plus the instruments the daemon drives
// itself (reconcile timings cannot be derived from a status snapshot).
type Metrics struct {
	reg              *prometheus.Registry
	reconcileSeconds prometheus.Histogram
	reconciles       *prometheus.CounterVec
}

// New builds a registry holding the status collector, the reconcile
// instruments and the Go runtime and process collectors.
func New(status func() control.Status) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		reconcileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "reconcile_duration_seconds",
			Help:      "Time one reconcile pass took to sync WireGuard peers and routes.",
			// 1 ms to 16 s: a pass is milliseconds normally, seconds when
			// netlink or the device is struggling.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "reconciles_total",
			Help:      "Reconcile passes by result.",
		}, []string{"result"}),
	}
	// Both results exist from the start so rate() and increase() work
	// before the first failure.
	m.reconciles.WithLabelValues("ok")
	m.reconciles.WithLabelValues("error")
	m.reg.MustRegister(
		NewCollector(status),
		m.reconcileSeconds,
		m.reconciles,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Registry is what Serve exposes.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveReconcile records one reconcile pass. A nil *Metrics ignores the
// call, so the reconciler need not care whether metrics are enabled.
func (m *Metrics) ObserveReconcile(d time.Duration, err error) {
	if m == nil {
		return
	}
	m.reconcileSeconds.Observe(d.Seconds())
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.reconciles.WithLabelValues(result).Inc()
}

// collector turns one status snapshot into metrics per scrape.
type collector struct {
	status func() control.Status

	info, members, peers, rejected *prometheus.Desc
	handshakeAge, rxBytes, txBytes *prometheus.Desc
	policyPackets, policyBytes     *prometheus.Desc
	repairs, missing               *prometheus.Desc
	sites, failovers, relayed      *prometheus.Desc
	ejections, probeReports        *prometheus.Desc
	certExpiry, unsigned           *prometheus.Desc
}

// repairKinds are always exported, at 0 until meshd first repairs one, so
// an alert on increase() has a series from the start.
var repairKinds = []string{"routes", "nftables", "interface", "interface-config", "uapi-socket", "peers"}

// NewCollector exports the status returned by status, called once per
// scrape. status must be safe to call from any goroutine.
func NewCollector(status func() control.Status) prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	rule := []string{"rule", "action", "reason"}
	return &collector{
		status:        status,
		info:          d("info", "Always 1; labels describe this node.", "node", "mode", "interface"),
		members:       d("serf_members", "Serf members known to this node in any state, itself included."),
		peers:         d("peers", "Remote serf members by state.", "state"),
		rejected:      d("rejected_announcements", "Members whose announcement this node refused."),
		handshakeAge:  d("peer_handshake_age_seconds", "Seconds since the last WireGuard handshake with a configured peer.", "peer"),
		rxBytes:       d("peer_receive_bytes_total", "Bytes received from a configured WireGuard peer.", "peer"),
		txBytes:       d("peer_transmit_bytes_total", "Bytes sent to a configured WireGuard peer.", "peer"),
		policyPackets: d("policy_packets_total", "Packets matched by an allow-list rule (or clamped by the mss-clamp rule) since the last reload.", rule...),
		policyBytes:   d("policy_bytes_total", "Bytes matched by an allow-list rule (or clamped by the mss-clamp rule) since the last reload.", rule...),
		repairs:       d("repairs_total", "Times meshd put back state someone else removed or changed, by what it restored.", "what"),
		missing:       d("missing", "1 while meshd finds state of its own missing and has not restored it yet, by what.", "what"),
		sites:         d("sites", "Other sites by whether this host has a path to them.", "state"),
		failovers:     d("gateway_failovers_total", "Times another site's traffic moved to another gateway, at either end."),
		relayed:       d("relayed_bytes_total", "Bytes this host forwarded from the tunnel back into it (a gateway's or a transit site's relaying)."),
		ejections:     d("gateway_ejections_total", "Times this gateway drained because its site's probes found it forwarding nothing."),
		probeReports:  d("gateway_reports_total", "Times this host's probes reported a gateway of its site as forwarding nothing."),
		certExpiry:    d("certificate_expiry_seconds", "Seconds until this host's certificate expires, negative once it has (every other host then refuses it); only with a cluster CA."),
		unsigned:      d("unsigned_announcements", "Members whose announcement carried no certificate and was accepted (identity.mode transitional): hosts still to be converted to the CA; only with a cluster CA."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.members, c.peers, c.rejected,
		c.handshakeAge, c.rxBytes, c.txBytes, c.policyPackets, c.policyBytes, c.repairs, c.missing, c.sites, c.failovers, c.relayed,
		c.ejections, c.probeReports, c.certExpiry, c.unsigned} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.snapshot()
	if err != nil {
		// The scrape fails visibly instead of reporting zeros.
		ch <- prometheus.NewInvalidMetric(c.info, err)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.info, 1, st.Node.Name, st.Node.Mode, st.Node.Interface)
	gauge(c.members, float64(len(st.Peers)+1))
	gauge(c.rejected, float64(len(st.Rejected)))
	c.collectPeers(ch, st.Peers)
	c.collectPolicy(ch, st.Policy)
	c.collectRepairs(ch, st)
	c.collectSites(ch, st)
	if id := st.Identity; id != nil {
		gauge(c.certExpiry, id.ExpirySeconds)
		gauge(c.unsigned, float64(len(id.Unsigned)))
	}
}

func (c *collector) collectSites(ch chan<- prometheus.Metric, st control.Status) {
	reach := map[string]int{"reachable": 0, "unreachable": 0}
	for _, s := range st.Sites {
		if s.Unreachable != "" {
			reach["unreachable"]++
		} else {
			reach["reachable"]++
		}
	}
	for state, n := range reach {
		ch <- prometheus.MustNewConstMetric(c.sites, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(c.failovers, prometheus.CounterValue, float64(st.Failovers))
	var relayed uint64
	for _, pc := range st.Policy {
		if pc.Label == "transit" {
			relayed += pc.Bytes
		}
	}
	ch <- prometheus.MustNewConstMetric(c.relayed, prometheus.CounterValue, float64(relayed))
	ch <- prometheus.MustNewConstMetric(c.ejections, prometheus.CounterValue, float64(st.Ejections))
	ch <- prometheus.MustNewConstMetric(c.probeReports, prometheus.CounterValue, float64(st.ProbeReports))
}

func (c *collector) collectRepairs(ch chan<- prometheus.Metric, st control.Status) {
	counts := map[string]int{}
	for _, k := range repairKinds {
		counts[k] = 0
	}
	for k, n := range st.Repairs {
		counts[k] = n
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.repairs, prometheus.CounterValue, float64(n), k)
	}
	for _, m := range st.Missing {
		what, _, _ := strings.Cut(m, ":")
		ch <- prometheus.MustNewConstMetric(c.missing, prometheus.GaugeValue, 1, what)
	}
}

// snapshot calls status with a recover: registries run collectors on
// their own goroutines, where a panic (say, a scrape racing daemon
// startup) would otherwise take the whole daemon and its tunnels down.
func (c *collector) snapshot() (st control.Status, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("read meshd status: panic: %v", r)
		}
	}()
	return c.status(), nil
}

func (c *collector) collectPeers(ch chan<- prometheus.Metric, peers []control.Peer) {
	byState := map[string]int{}
	for _, s := range peerStates {
		byState[s] = 0
	}
	for _, p := range peers {
		byState[p.State]++
		if !p.Configured {
			continue
		}
		if p.HandshakeAgeSeconds >= 0 {
			ch <- prometheus.MustNewConstMetric(c.handshakeAge, prometheus.GaugeValue, p.HandshakeAgeSeconds, p.Name)
		}
		ch <- prometheus.MustNewConstMetric(c.rxBytes, prometheus.CounterValue, float64(p.RxBytes), p.Name)
		ch <- prometheus.MustNewConstMetric(c.txBytes, prometheus.CounterValue, float64(p.TxBytes), p.Name)
	}
	for s, n := range byState {
		ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(n), s)
	}
}

// collectPolicy sums counters sharing a label set: a duplicate series
// would make the registry reject the entire scrape.
func (c *collector) collectPolicy(ch chan<- prometheus.Metric, counters []control.PolicyCounter) {
	type key struct{ rule, action, reason string }
	sums := map[key]control.PolicyCounter{}
	for _, pc := range counters {
		k := key{pc.Label, pc.Action, pc.Reason}
		s := sums[k]
		s.Packets += pc.Packets
		s.Bytes += pc.Bytes
		sums[k] = s
	}
	for k, s := range sums {
		ch <- prometheus.MustNewConstMetric(c.policyPackets, prometheus.CounterValue, float64(s.Packets), k.rule, k.action, k.reason)
		ch <- prometheus.MustNewConstMetric(c.policyBytes, prometheus.CounterValue, float64(s.Bytes), k.rule, k.action, k.reason)
	}
}
