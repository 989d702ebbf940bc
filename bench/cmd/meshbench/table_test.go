package main

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/lab"
	"github.com/meshd/meshd/policy"
)

// TestWithoutFastPath: the "no fast path" modes measure the table meshd
// installed before the fast path, rule for rule: no notrack chains, and
// the policy chain in its old order.
func TestWithoutFastPath(t *testing.T) {
	rs, err := policy.Compile([]policy.Segment{
		{Name: "blue", CIDR: netip.MustParsePrefix("10.42.0.0/16")},
		{Name: "green", CIDR: netip.MustParsePrefix("10.43.0.0/16")},
	}, []policy.Rule{{From: "blue", To: "green", Ports: []string{"tcp/8080"}}})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := policy.Render(rs, "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	old := withoutFastPath(plan)
	for _, c := range old.Chains {
		if strings.HasPrefix(c.Name, "notrack") {
			t.Errorf("chain %s kept", c.Name)
		}
	}
	var labels []string
	for _, r := range old.Rules {
		if strings.HasPrefix(r.Chain.Name, "notrack") {
			t.Errorf("rule %s in chain %s kept", ruleLabel(r), r.Chain.Name)
		}
		if r.Chain.Name == policy.PolicyChain {
			labels = append(labels, ruleLabel(r))
		}
	}
	want := []string{"established", "invalid", "link-local", "allow[0]", "segment:blue", "segment:green", "default-deny"}
	if !slices.Equal(labels, want) {
		t.Errorf("policy chain %q, want the order before the fast path %q", labels, want)
	}
	if len(old.Rules) != len(plan.Rules)-2*3 {
		t.Errorf("%d rules, want all but the 6 notrack rules of %d", len(old.Rules), len(plan.Rules))
	}
}

// TestInstallTableInTheHostNamespace: the table lands in the lab host's
// namespace, never in the caller's, and removeTable takes it away again.
func TestInstallTableInTheHostNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ip", "nft")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Spec{Hosts: 1, Segments: benchSegments})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	h := l.Host(1)
	iface := l.Prefix() + "tbl"
	for _, kind := range []tableKind{meshdTable, trackedTable} {
		if err := installTable(l, h, iface, kind); err != nil {
			t.Fatal(err)
		}
		out, err := h.Exec(ctx, "nft", "list", "table", "inet", policy.TableName)
		if err != nil || !strings.Contains(out, `"`+iface+`"`) {
			t.Fatalf("no meshd table for %s in %s: %v\n%s", iface, h.NS(), err, out)
		}
		if got, want := strings.Contains(out, policy.NotrackPrerouting), kind == meshdTable; got != want {
			t.Errorf("table kind %d has the notrack chains: %v, want %v", kind, got, want)
		}
		// The guard must let the host's own pods be reached.
		if !strings.Contains(out, h.Subnet("blue").String()) {
			t.Errorf("table kind %d: the guard does not spare the host's slice %s:\n%s", kind, h.Subnet("blue"), out)
		}
		if out, _ := lab.Exec(ctx, "", "nft", "list", "ruleset"); strings.Contains(out, `"`+iface+`"`) {
			t.Fatalf("the caller's namespace got the table:\n%s", out)
		}
	}
	if err := removeTable(h); err != nil {
		t.Fatal(err)
	}
	if out, _ := h.Exec(ctx, "nft", "list", "tables"); strings.Contains(out, policy.TableName) {
		t.Errorf("table left in %s after removeTable:\n%s", h.NS(), out)
	}
}
