// Package routes programs meshd's per-segment routing tables and the rules
// that select them, through an injected netlink handle. Everything meshd
// installs carries Protocol, so Cleanup finds it from kernel state alone,
// even after a crash. The route types themselves belong to the pure core
// (package mesh), which computes them; this package only applies them.
package routes

import "github.com/meshd/meshd/mesh"

// Protocol marks routes and rules owned by meshd (rtm_protocol /
// FRA_PROTOCOL). 149 is unassigned in iproute2's rt_protos.
const Protocol = 149

// The core's routing types, under the names this package's API uses.
type (
	Kind   = mesh.RouteKind
	Route  = mesh.Route
	Rule   = mesh.Rule
	Config = mesh.RouteConfig

	routeKey = mesh.RouteKey
)

const (
	Tunnel      = mesh.Tunnel
	Throw       = mesh.Throw
	Unreachable = mesh.Unreachable
)

var (
	compareRoutes = mesh.CompareRoutes
	compareRules  = mesh.CompareRules
)
