package main

import (
	"os"
	"path/filepath"
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

func TestFirstErrorLinePrefersMeshdsLastWord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.log")
	log := `time=1 level=INFO msg="policy removed"
time=2 level=DEBUG msg="join failed" err="1 error occurred: connection refused"
meshd: install allow-list: apply policy on h1 (table inet meshd): netlink receive: recvmsg: no buffer space available
`
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := firstErrorLine(path); !strings.HasPrefix(got, "meshd: install allow-list") {
		t.Errorf("firstErrorLine = %q, want meshd's own error", got)
	}
	debugOnly := "time=1 level=WARN msg=\"peer unreachable\" error=\"timeout\"\ntime=2 level=DEBUG msg=x err=\"1 error occurred\"\n"
	if err := os.WriteFile(path, []byte(debugOnly), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := firstErrorLine(path); !strings.Contains(got, "peer unreachable") {
		t.Errorf("firstErrorLine = %q, want the warning, not the debug line", got)
	}
}

// TestModesWithIPRulesGetTheirOwnLab: every mode that adds ip rules is
// measured in the second lab, so no other mode inherits the
// policy-routing lookup the first ip rule switches a namespace to for
// good.
func TestModesWithIPRulesGetTheirOwnLab(t *testing.T) {
	withRules := map[string]bool{"meshd": true, "meshdnotrack": true, "meshdbase": true, "meshd100": true, "wggorules": true, "wggofull": true}
	for _, m := range allModes {
		if addsIPRules(m) != withRules[m.key] {
			t.Errorf("mode %s: addsIPRules %v, want %v", m.key, addsIPRules(m), withRules[m.key])
		}
	}
}
