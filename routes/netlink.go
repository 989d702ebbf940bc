package routes

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink is the part of *netlink.Handle that routes uses. It is an
// interface so tests can substitute routestest.Fake and assert the exact
// writes a change costs.
type Netlink interface {
	LinkByName(name string) (netlink.Link, error)
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
	RuleList(family int) ([]netlink.Rule, error)
	RuleAdd(rule *netlink.Rule) error
	RuleDel(rule *netlink.Rule) error
}

var _ Netlink = (*netlink.Handle)(nil)

// dumpAttempts bounds retries of dumps the kernel interrupted because the
// table changed underneath; acting on such a dump could delete or re-add
// the wrong things, so after the last attempt Set gives up instead.
const dumpAttempts = 5

var families = []int{netlink.FAMILY_V4, netlink.FAMILY_V6}

func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpAttempts {
		var res []T
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return nil, err
}

// listRoutes returns every route meshd owns, in any table.
func listRoutes(nl Netlink) ([]netlink.Route, error) {
	// Without RT_FILTER_TABLE the library silently drops every table
	// but main; table 0 under that filter means "all tables".
	mask := netlink.RT_FILTER_TABLE | netlink.RT_FILTER_PROTOCOL
	var all []netlink.Route
	for _, fam := range families {
		filter := &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: Protocol}
		rs, err := retryDump(func() ([]netlink.Route, error) {
			return nl.RouteListFiltered(fam, filter, mask)
		})
		if err != nil {
			return nil, fmt.Errorf("list %s routes: %w", familyName(fam), err)
		}
		all = append(all, rs...)
	}
	return all, nil
}

// listRules returns every rule meshd owns. The library cannot filter rules
// by protocol, so it happens here.
func listRules(nl Netlink) ([]netlink.Rule, error) {
	var own []netlink.Rule
	for _, fam := range families {
		rs, err := retryDump(func() ([]netlink.Rule, error) { return nl.RuleList(fam) })
		if err != nil {
			return nil, fmt.Errorf("list %s rules: %w", familyName(fam), err)
		}
		for _, r := range rs {
			if r.Protocol == Protocol {
				own = append(own, r)
			}
		}
	}
	return own, nil
}

func familyName(fam int) string {
	if fam == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}

func familyOf(p netip.Prefix) int {
	if p.Addr().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func ipNet(p netip.Prefix) *net.IPNet {
	if !p.IsValid() {
		return nil
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// prefixOf converts a kernel destination; the kernel omits RTA_DST for a
// default route, so nil means the family's /0.
func prefixOf(n *net.IPNet, family int) netip.Prefix {
	if n == nil {
		if family == netlink.FAMILY_V6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	if family == netlink.FAMILY_V4 {
		addr = addr.Unmap()
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr, ones)
}

// defaultMetric is the metric the kernel gives a route added without one:
// IPv6 substitutes IP6_RT_PRIO_USER. A route meshd writes lands in that
// slot, so only a route there is the one RouteReplace would overwrite.
func defaultMetric(family int) int {
	if family == netlink.FAMILY_V6 {
		return 1024
	}
	return 0
}

// routeToNetlink is the kernel form of r. Tunnel routes use scope link because
// the peer's slice is reached directly over the point-to-point WireGuard
// interface, with no gateway.
func routeToNetlink(r Route, linkIndex int) *netlink.Route {
	nr := &netlink.Route{
		Family:   familyOf(r.Dst),
		Table:    r.Table,
		Dst:      ipNet(r.Dst),
		Protocol: Protocol,
	}
	switch r.Kind {
	case Tunnel:
		nr.Type = unix.RTN_UNICAST
		nr.LinkIndex = linkIndex
		nr.Scope = netlink.SCOPE_LINK
	case Throw:
		nr.Type = unix.RTN_THROW
	case Unreachable:
		nr.Type = unix.RTN_UNREACHABLE
	}
	return nr
}

// inSlot reports whether k occupies the (tos, metric) slot meshd's own
// writes use, i.e. whether RouteReplace of the same table/dst overwrites it.
func inSlot(k *netlink.Route) bool {
	return k.Tos == 0 && k.Priority == defaultMetric(k.Family)
}

// matches reports whether kernel route k is exactly what meshd would
// install for want, so that no write is needed.
func matches(k *netlink.Route, want Route, linkIndex int) bool {
	if !inSlot(k) || k.Gw != nil || k.Src != nil || len(k.MultiPath) > 0 ||
		k.Encap != nil || k.Via != nil || k.NewDst != nil {
		return false
	}
	switch want.Kind {
	case Tunnel:
		// IPv6 has no route scopes; the kernel reports universe.
		return k.Type == unix.RTN_UNICAST && k.LinkIndex == linkIndex &&
			(k.Family == netlink.FAMILY_V6 || k.Scope == netlink.SCOPE_LINK)
	case Throw:
		return k.Type == unix.RTN_THROW
	case Unreachable:
		return k.Type == unix.RTN_UNREACHABLE
	}
	return false
}

// kernelKind names what a kernel route does, for logs about routes that
// may not be in meshd's vocabulary (e.g. left by an older version).
func kernelKind(k *netlink.Route) string {
	switch k.Type {
	case unix.RTN_UNICAST:
		return Tunnel.String()
	case unix.RTN_THROW:
		return Throw.String()
	case unix.RTN_UNREACHABLE:
		return Unreachable.String()
	}
	return fmt.Sprintf("type %d", k.Type)
}

func kernelRouteKey(k *netlink.Route) routeKey {
	return routeKey{Table: k.Table, Dst: prefixOf(k.Dst, k.Family)}
}

func describeKernelRoute(k *netlink.Route) string {
	key := kernelRouteKey(k)
	s := fmt.Sprintf("table %d %s %s", key.Table, key.Dst, kernelKind(k))
	if k.Priority != defaultMetric(k.Family) {
		s += fmt.Sprintf(" metric %d", k.Priority)
	}
	return s
}

// deleteRequest carries every field the kernel matches a delete on, taken
// from the dump, so that a delete removes precisely that route and not a
// sibling with the same destination.
func deleteRequest(k *netlink.Route) *netlink.Route {
	key := kernelRouteKey(k)
	return &netlink.Route{
		Family:    k.Family,
		Table:     k.Table,
		Dst:       ipNet(key.Dst),
		Type:      k.Type,
		Scope:     k.Scope,
		Protocol:  k.Protocol,
		Priority:  k.Priority,
		Tos:       k.Tos,
		LinkIndex: k.LinkIndex,
	}
}

func ruleToNetlink(r Rule) *netlink.Rule {
	// NewRule, not a literal: zero values of Goto, Flow and the suppress
	// fields are meaningful selectors/actions to the library.
	nr := netlink.NewRule()
	nr.Priority = r.Priority
	nr.Table = r.Table
	nr.Src = ipNet(r.From)
	nr.Dst = ipNet(r.To)
	nr.Protocol = Protocol
	if r.From.IsValid() {
		nr.Family = familyOf(r.From)
	} else {
		nr.Family = familyOf(r.To)
	}
	return nr
}

// plainRule converts a kernel rule to meshd's form, failing when the rule
// has any selector or action meshd never sets: such a rule is not the one
// meshd wants even if priority, table and prefixes agree.
func plainRule(k *netlink.Rule) (Rule, bool) {
	plain := k.Mark == 0 && k.Mask == nil && k.Tos == 0 && k.TunID == 0 &&
		k.Goto < 0 && k.Flow <= 0 && k.IifName == "" && k.OifName == "" &&
		k.SuppressIfgroup < 0 && k.SuppressPrefixlen < 0 && !k.Invert &&
		k.Dport == nil && k.Sport == nil && k.IPProto == 0 && k.UIDRange == nil
	r := Rule{Priority: k.Priority, Table: k.Table}
	if k.Src != nil {
		r.From = prefixOf(k.Src, k.Family)
	}
	if k.Dst != nil {
		r.To = prefixOf(k.Dst, k.Family)
	}
	return r, plain
}

func describeKernelRule(k *netlink.Rule) string {
	r, plain := plainRule(k)
	if !plain {
		return r.String() + " (with other selectors)"
	}
	return r.String()
}
