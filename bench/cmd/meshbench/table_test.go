package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/lab"
	"github.com/meshd/meshd/policy"
)

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
	for _, kind := range []tableKind{meshdTable, trackedTable, untrackedTable} {
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
		if got, want := strings.Contains(out, "ct state"), kind != untrackedTable; got != want {
			t.Errorf("table kind %d has conntrack rules: %v, want %v:\n%s", kind, got, want, out)
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
