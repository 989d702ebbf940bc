package main

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	"github.com/meshd/meshd/lab"
	"github.com/meshd/meshd/policy"
)

// tableKind is which nftables table a mode runs with, so that the
// table's cost, and the same-segment fast path's share of it, can be told
// apart from the engine's.
type tableKind int

const (
	noTable tableKind = iota
	// meshdTable is the table meshd installs for the lab's segments with
	// no [[allow]] rules and the same-segment fast path on
	// ([policy] untracked_same_segment): segments, default deny,
	// conntrack, MSS clamp, the no-plaintext guard, notrack chains.
	meshdTable
	// trackedTable is meshd's default table: no notrack chains, the
	// segments' accepts after the conntrack rules, so conntrack sees
	// every packet.
	trackedTable
	// untrackedTable is meshd's default table without its two conntrack
	// rules (established, invalid): with no ct expression left, the
	// kernel tracks nothing in the namespace, so the pair with
	// trackedTable is what conntrack costs. Not a table meshd installs:
	// it would drop the replies of allowed cross-segment flows.
	untrackedTable
)

// installTable replaces meshd's table in h's namespace (meshd's own, if
// meshd runs there) with kind, filtering traffic through iface. It is
// rendered by the policy package and sent as one transaction, as meshd
// does.
func installTable(l *lab.Lab, h *lab.Host, iface string, kind tableKind) error {
	rs, err := policy.Compile(labSegments(l), nil)
	if err != nil {
		return err
	}
	// As the daemon does: the no-plaintext guard lets traffic to the
	// host's own slices leave through its pods' links.
	for _, s := range l.Spec().Segments {
		rs.Local = append(rs.Local, h.Subnet(s.Name))
	}
	rs.Untracked = kind == meshdTable
	plan, err := policy.Render(rs, iface)
	if err != nil {
		return err
	}
	if kind == untrackedTable {
		plan.Rules = slices.DeleteFunc(plan.Rules, usesConntrack)
	}
	return withNftables(h, func(conn *nftables.Conn) error {
		conn.AddTable(plan.Table)
		conn.DelTable(plan.Table) // adding first makes the delete safe when there is none
		conn.AddTable(plan.Table)
		for _, c := range plan.Chains {
			conn.AddChain(c)
		}
		for _, r := range plan.Rules {
			conn.AddRule(r)
		}
		if err := conn.Flush(); err != nil {
			return fmt.Errorf("meshd's table on %s: %w", h.NS(), err)
		}
		return nil
	})
}

func usesConntrack(r *nftables.Rule) bool {
	return slices.ContainsFunc(r.Exprs, func(e expr.Any) bool { _, ct := e.(*expr.Ct); return ct })
}

// removeTable deletes meshd's table from h's namespace.
func removeTable(h *lab.Host) error {
	return withNftables(h, func(conn *nftables.Conn) error { return policy.Cleanup(conn) })
}

// withNftables runs fn with an nftables connection in h's namespace. The
// connection's socket is opened at once, while the namespace's file is
// open: a transient connection would open one per Flush from a file
// descriptor number that by then may name another namespace (the
// caller's), and change the wrong table.
func withNftables(h *lab.Host, fn func(*nftables.Conn) error) error {
	nsh, err := netns.GetFromName(h.NS())
	if err != nil {
		return err
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(nsh)), nftables.AsLasting())
	nsh.Close()
	if err != nil {
		return fmt.Errorf("nftables in %s: %w", h.NS(), err)
	}
	defer conn.CloseLasting()
	return fn(conn)
}

func labSegments(l *lab.Lab) []policy.Segment {
	var segs []policy.Segment
	for _, s := range l.Spec().Segments {
		segs = append(segs, policy.Segment{Name: s.Name, CIDR: netip.MustParsePrefix(s.CIDR)})
	}
	return segs
}
