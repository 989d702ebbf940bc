package mesh

import (
	"fmt"
	"net/netip"
	"slices"
)

// RouteKind is what a route in a segment table does with matching packets.
type RouteKind int

const (
	// Tunnel sends the packet out of the WireGuard interface.
	Tunnel RouteKind = iota
	// Throw ends the lookup in this table, so the next rule (eventually
	// the main table) decides; used for this host's own slices, whose
	// local delivery belongs to whatever attached the pods.
	Throw
	// Unreachable rejects the packet. Installed for each segment CIDR so
	// a destination without a live owner never falls through to the
	// underlay unencrypted.
	Unreachable
)

func (k RouteKind) String() string {
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
	Kind  RouteKind
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

// RouteConfig is the complete desired routing state. It is plain data:
// the reconciler may hand the same RouteConfig to the router again and
// nothing changes.
type RouteConfig struct {
	// Link is the WireGuard interface that Tunnel routes leave through.
	Link   string
	Routes []Route
	Rules  []Rule
}

// Equal reports whether two configs would program the same kernel state.
// Both must be sorted (Sort) first.
func (c *RouteConfig) Equal(o *RouteConfig) bool {
	if c == nil || o == nil {
		return c == o
	}
	return c.Link == o.Link &&
		slices.EqualFunc(c.Routes, o.Routes, func(a, b Route) bool { return a.Key() == b.Key() && a.Kind == b.Kind }) &&
		slices.Equal(c.Rules, o.Rules)
}

// RouteKey is a route's slot in the kernel: one route per table and
// destination, whatever its kind.
type RouteKey struct {
	Table int
	Dst   netip.Prefix
}

// Key is the kernel slot r occupies.
func (r Route) Key() RouteKey { return RouteKey{r.Table, r.Dst} }

// Sort orders routes and rules so configs compare and print stably.
func (c *RouteConfig) Sort() {
	slices.SortFunc(c.Routes, CompareRoutes)
	slices.SortFunc(c.Rules, CompareRules)
}

// CompareRoutes orders routes by key, table then destination: 0 means
// the same kernel slot, whatever the kind.
func CompareRoutes(a, b Route) int {
	if a.Table != b.Table {
		return a.Table - b.Table
	}
	return a.Dst.Compare(b.Dst)
}

// CompareRules orders rules by every field, so 0 means equal rules.
func CompareRules(a, b Rule) int {
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

// String names the route the way errors and logs refer to it; Peer is
// left out because it is not part of what the kernel holds.
func (r Route) String() string {
	return fmt.Sprintf("table %d %s %s", r.Table, r.Dst, r.Kind)
}

// String names the rule in ip-rule order, for errors and logs.
func (r Rule) String() string {
	s := fmt.Sprintf("prio %d", r.Priority)
	if r.From.IsValid() {
		s += " from " + r.From.String()
	}
	if r.To.IsValid() {
		s += " to " + r.To.String()
	}
	return s + fmt.Sprintf(" lookup %d", r.Table)
}
