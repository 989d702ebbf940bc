// Package routes programs meshd's per-segment routing tables and the rules
// that select them, through an injected netlink handle. Everything meshd
// installs carries Protocol, so Cleanup finds it from kernel state alone,
// even after a crash.
package routes

import (
	"fmt"
	"net/netip"
	"slices"
)

// Protocol marks routes and rules owned by meshd (rtm_protocol /
// FRA_PROTOCOL). 149 is unassigned in iproute2's rt_protos.
const Protocol = 149

// Kind is what a route in a segment table does with matching packets.
type Kind int

const (
	// Tunnel sends the packet out of the WireGuard interface.
	Tunnel Kind = iota
	// Throw ends the lookup in this table, so the next rule (eventually
	// the main table) decides; used for this host's own slices, whose
	// local delivery belongs to whatever attached the pods.
	Throw
	// Unreachable rejects the packet. Installed for each segment CIDR so
	// a destination without a live owner never falls through to the
	// underlay unencrypted.
	Unreachable
)

func (k Kind) String() string {
	switch k {
	case Tunnel:
		return "tunnel"
	case Throw:
		return "throw"
	case Unreachable:
		return "unreachable"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Route is one entry in a segment table.
type Route struct {
	Table int
	Dst   netip.Prefix
	Kind  Kind
	// Peer names the host behind a Tunnel route, for logs only; it is
	// not part of the route's identity in the kernel.
	Peer string
}

// Rule selects a segment table: by source (From valid) or destination
// (To valid); exactly one of them is set.
type Rule struct {
	Priority int
	Table    int
	From     netip.Prefix
	To       netip.Prefix
}

// Config is the complete desired routing state. It is plain data: the
// reconciler may hand the same Config to Set again and nothing changes.
type Config struct {
	// Link is the WireGuard interface that Tunnel routes leave through.
	Link   string
	Routes []Route
	Rules  []Rule
}

// Equal reports whether two configs would program the same kernel state.
// Both must be sorted (Sort) first.
func (c *Config) Equal(o *Config) bool {
	if c == nil || o == nil {
		return c == o
	}
	return c.Link == o.Link &&
		slices.EqualFunc(c.Routes, o.Routes, func(a, b Route) bool { return a.key() == b.key() && a.Kind == b.Kind }) &&
		slices.Equal(c.Rules, o.Rules)
}

type routeKey struct {
	table int
	dst   netip.Prefix
}

func (r Route) key() routeKey { return routeKey{r.Table, r.Dst} }

// Sort orders routes and rules so configs compare and print stably.
func (c *Config) Sort() {
	slices.SortFunc(c.Routes, compareRoutes)
	slices.SortFunc(c.Rules, compareRules)
}

// compareRoutes orders routes by key, table then destination: 0 means
// the same kernel slot, whatever the kind.
func compareRoutes(a, b Route) int {
	if a.Table != b.Table {
		return a.Table - b.Table
	}
	return a.Dst.Compare(b.Dst)
}

// compareRules orders rules by every field, so 0 means equal rules.
func compareRules(a, b Rule) int {
	if a.Priority != b.Priority {
		return a.Priority - b.Priority
	}
	if a.Table != b.Table {
		return a.Table - b.Table
	}
	if c := a.From.Compare(b.From); c != 0 {
		return c
	}
	return a.To.Compare(b.To)
}
