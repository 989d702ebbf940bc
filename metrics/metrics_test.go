package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshd/meshd/control"
)

func fakeStatus() control.Status {
	return control.Status{
		Node: control.Node{Name: "h1", Mode: "userspace", Interface: "mesh0"},
		Peers: []control.Peer{
			{Name: "h2", State: "alive", Configured: true, HandshakeAgeSeconds: 3.5, RxBytes: 1000, TxBytes: 2000},
			{Name: "h3", State: "alive", Configured: true, HandshakeAgeSeconds: -1, RxBytes: 0, TxBytes: 148},
			{Name: "h4", State: "failed", HandshakeAgeSeconds: -1},
			{Name: "h5", State: "left", HandshakeAgeSeconds: -1},
		},
		Rejected: []control.Rejection{{Member: "evil", Reason: "slice overlaps"}},
		Policy: []control.PolicyCounter{
			{Label: "allow[0]", Action: "accept", Reason: "allow rule 0", Packets: 5, Bytes: 500},
			{Label: "default-deny", Action: "drop", Reason: "no rule allows it", Packets: 2, Bytes: 120},
			// A repeated label set must be summed, not break the scrape.
			{Label: "default-deny", Action: "drop", Reason: "no rule allows it", Packets: 1, Bytes: 60},
		},
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// scrape fetches /metrics through the same handler Serve uses and parses
// it the way Prometheus would.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(handler(m.Registry(), quietLog()))
	defer srv.Close()
	return get(t, srv.URL+"/metrics")
}

func get(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse exposition: %v", err)
	}
	return fams
}

// series renders a family as "label=value,...: value" lines, sorted, so
// tests compare whole families at once.
func series(t *testing.T, fams map[string]*dto.MetricFamily, name string) []string {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		return nil
	}
	var out []string
	for _, m := range f.GetMetric() {
		var labels []string
		for _, l := range m.GetLabel() {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		var v float64
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			v = m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			v = m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			v = float64(m.GetHistogram().GetSampleCount())
		default:
			t.Fatalf("%s: unexpected type %s", name, f.GetType())
		}
		out = append(out, strings.Join(labels, ",")+": "+model.SampleValue(v).String())
	}
	sort.Strings(out)
	return out
}

func TestStatusMetrics(t *testing.T) {
	fams := scrape(t, New(fakeStatus))
	for _, tc := range []struct {
		name string
		typ  dto.MetricType
		want []string
	}{
		{"meshd_info", dto.MetricType_GAUGE, []string{"interface=mesh0,mode=userspace,node=h1: 1"}},
		{"meshd_serf_members", dto.MetricType_GAUGE, []string{": 5"}},
		{"meshd_peers", dto.MetricType_GAUGE, []string{"state=alive: 2", "state=failed: 1", "state=leaving: 0", "state=left: 1"}},
		{"meshd_rejected_announcements", dto.MetricType_GAUGE, []string{": 1"}},
		// Only configured peers with a completed handshake have an age.
		{"meshd_peer_handshake_age_seconds", dto.MetricType_GAUGE, []string{"peer=h2: 3.5"}},
		{"meshd_peer_receive_bytes_total", dto.MetricType_COUNTER, []string{"peer=h2: 1000", "peer=h3: 0"}},
		{"meshd_peer_transmit_bytes_total", dto.MetricType_COUNTER, []string{"peer=h2: 2000", "peer=h3: 148"}},
		{"meshd_policy_packets_total", dto.MetricType_COUNTER, []string{
			"action=accept,reason=allow rule 0,rule=allow[0]: 5",
			"action=drop,reason=no rule allows it,rule=default-deny: 3",
		}},
		{"meshd_policy_bytes_total", dto.MetricType_COUNTER, []string{
			"action=accept,reason=allow rule 0,rule=allow[0]: 500",
			"action=drop,reason=no rule allows it,rule=default-deny: 180",
		}},
		{"meshd_reconciles_total", dto.MetricType_COUNTER, []string{"result=error: 0", "result=ok: 0"}},
		{"meshd_reconcile_duration_seconds", dto.MetricType_HISTOGRAM, []string{": 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, ok := fams[tc.name]
			if !ok {
				t.Fatalf("%s missing from the scrape", tc.name)
			}
			if f.GetType() != tc.typ {
				t.Errorf("type %s, want %s", f.GetType(), tc.typ)
			}
			if f.GetHelp() == "" {
				t.Error("no HELP text")
			}
			if got := series(t, fams, tc.name); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "process_open_fds"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("%s missing: runtime and process collectors must be registered", name)
		}
	}
}

// TestScrapeReadsLiveStatus guards the design: no copy of the state is
// kept, each scrape asks again.
func TestScrapeReadsLiveStatus(t *testing.T) {
	var mu sync.Mutex
	st := fakeStatus()
	m := New(func() control.Status {
		mu.Lock()
		defer mu.Unlock()
		return st
	})
	if got := series(t, scrape(t, m), "meshd_peer_receive_bytes_total"); got[0] != "peer=h2: 1000" {
		t.Fatalf("first scrape: %v", got)
	}
	mu.Lock()
	st.Peers[0].RxBytes = 4096
	st.Peers = st.Peers[:1]
	st.Policy = nil
	mu.Unlock()
	fams := scrape(t, m)
	if got := series(t, fams, "meshd_peer_receive_bytes_total"); strings.Join(got, ";") != "peer=h2: 4096" {
		t.Errorf("second scrape: %v", got)
	}
	if got := series(t, fams, "meshd_serf_members"); got[0] != ": 2" {
		t.Errorf("members after peers left the status: %v", got)
	}
	if _, ok := fams["meshd_policy_packets_total"]; ok {
		t.Error("policy counters still exported after they vanished from the status")
	}
}

func TestObserveReconcile(t *testing.T) {
	m := New(fakeStatus)
	m.ObserveReconcile(3*time.Millisecond, nil)
	m.ObserveReconcile(20*time.Millisecond, nil)
	m.ObserveReconcile(2*time.Second, errors.New("netlink: busy"))
	fams := scrape(t, m)
	if got := series(t, fams, "meshd_reconciles_total"); strings.Join(got, ";") != "result=error: 1;result=ok: 2" {
		t.Errorf("reconciles_total: %v", got)
	}
	h := fams["meshd_reconcile_duration_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 3 || h.GetSampleSum() < 2.02 || h.GetSampleSum() > 2.03 {
		t.Errorf("histogram count %d sum %g, want 3 and 2.023", h.GetSampleCount(), h.GetSampleSum())
	}
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == 0.004 && b.GetCumulativeCount() != 1 {
			t.Errorf("bucket le=0.004 holds %d, want 1", b.GetCumulativeCount())
		}
	}

	var disabled *Metrics
	disabled.ObserveReconcile(time.Second, nil) // must not panic
}

// TestStatusPanicFailsScrapeOnly: a panic inside the status provider must
// become a failed scrape, never a crashed daemon.
func TestStatusPanicFailsScrapeOnly(t *testing.T) {
	m := New(func() control.Status { panic("daemon not started") })
	srv := httptest.NewServer(handler(m.Registry(), quietLog()))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "daemon not started") {
		t.Errorf("got %s\n%s", resp.Status, body)
	}
}

func TestServe(t *testing.T) {
	addr := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := Serve(ctx, addr, New(fakeStatus).Registry(), quietLog()); err != nil {
		t.Fatal(err)
	}
	if _, ok := get(t, "http://"+addr+"/metrics")["meshd_info"]; !ok {
		t.Error("meshd_info missing")
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /: %s, want 404", resp.Status)
	}

	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		if err == nil {
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatal("still listening 5s after ctx was cancelled")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServePortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	began := time.Now()
	err = Serve(context.Background(), ln.Addr().String(), New(fakeStatus).Registry(), quietLog())
	if err == nil {
		t.Fatal("Serve on a taken port succeeded")
	}
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "[metrics] listen") {
		t.Errorf("error should wrap EADDRINUSE and name the setting: %v", err)
	}
	if time.Since(began) > time.Second {
		t.Errorf("took %s; a bind error must be immediate", time.Since(began))
	}
}

// freePort picks a loopback port; Serve's contract has no port 0.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// The certificate's remaining validity and the unsigned members accepted
// in transitional mode are exported only when the cluster has a CA.
func TestIdentityMetrics(t *testing.T) {
	if fams := scrape(t, New(fakeStatus)); fams["meshd_certificate_expiry_seconds"] != nil || fams["meshd_unsigned_announcements"] != nil {
		t.Error("identity metrics exported without a CA")
	}
	fams := scrape(t, New(func() control.Status {
		st := fakeStatus()
		st.Identity = &control.Identity{Mode: "transitional", Certificate: "h1", ExpirySeconds: 86000, Unsigned: []string{"h2", "h3"}}
		return st
	}))
	for name, want := range map[string]string{"meshd_certificate_expiry_seconds": ": 86000", "meshd_unsigned_announcements": ": 2"} {
		if got := series(t, fams, name); strings.Join(got, ";") != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
		if fams[name].GetType() != dto.MetricType_GAUGE || fams[name].GetHelp() == "" {
			t.Errorf("%s: type %s, help %q", name, fams[name].GetType(), fams[name].GetHelp())
		}
	}
}
