package main

import (
	"strings"
	"testing"
	"time"
)

func TestAllowRulesNeverMatchTheBenchmarkTraffic(t *testing.T) {
	r := allowRules(100)
	if n := strings.Count(r, "[[allow]]"); n != 100 {
		t.Fatalf("%d rules, want 100", n)
	}
	if strings.Contains(r, `"tcp/5201"`) || strings.Contains(r, `"10.42.`) {
		t.Fatal("a rule targets the benchmark's port or segment")
	}
	if !strings.Contains(r, "from = \"blue\"\nto = \"10.43.0.0/24\"\nports = [\"tcp/9000\"]\n") {
		t.Fatalf("first rule is not in the contract's shape:\n%.120s", r)
	}
}

func TestStatsOf(t *testing.T) {
	st := statsOf([]sample{{Gbps: 1}, {Gbps: 3}, {Gbps: 2}}, func(s sample) float64 { return s.Gbps })
	if st.mean != 2 || st.min != 1 || st.max != 3 || st.n != 3 {
		t.Fatalf("%+v", st)
	}
}

func TestPingSummaryKeepsTheFragNeededLine(t *testing.T) {
	out := "PING 10.42.2.10 (10.42.2.10) 1413(1441) bytes of data.\nFrom 10.42.1.1 icmp_seq=1 Frag needed and DF set (mtu = 1440)\n\n--- 10.42.2.10 ping statistics ---\n2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 210ms\n"
	got := pingSummary(out, nil)
	if !strings.Contains(got, "mtu = 1440") || !strings.Contains(got, "2 packets transmitted") {
		t.Fatalf("summary %q", got)
	}
}

func TestMedianAndCountOver(t *testing.T) {
	ds := []time.Duration{3 * time.Second, time.Second, 2 * time.Second}
	if m := median(ds); m != 2*time.Second {
		t.Fatalf("median %s", m)
	}
	if n := countOver(ds, 1500*time.Millisecond); n != 2 {
		t.Fatalf("countOver %d", n)
	}
}
