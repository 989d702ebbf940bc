// Package routestest provides a fake netlink handle for tests of code that
// drives routes.Manager, recording every write as a line of text so tests
// can assert the exact cost of a change.
//
// Op lines look like
//
//	route add table 51800 10.42.2.0/24 tunnel dev mesh0
//	route replace table 51800 10.42.1.0/24 throw
//	route del table 51800 fd42::/48 unreachable
//	rule add prio 100 from 10.42.0.0/16 lookup 51800
//	rule del prio 101 to fd42::/48 lookup 51801
//
// "add" versus "replace" reflects whether the fake already held a route in
// that slot. Fields that meshd always sets the same way are left out;
// " proto N" appears only for protocols other than routes.Protocol and
// " metric N" only for a non-default metric. A write that failed (FailOn)
// is recorded with " (failed)" appended.
package routestest

import (
	"cmp"

	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/meshd/meshd/routes"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Fake is an in-memory routes.Netlink. It mimics the kernel behaviour that
// matters to callers: routes outside main are dumped only under
// RT_FILTER_TABLE, IPv6 routes get metric 1024 when given none, replace
// overwrites the (table, dst, tos, metric) slot, deletes of absent entries
// fail, and duplicate rules are refused. It is safe for concurrent use.
type Fake struct {
	mu         sync.Mutex
	links      map[string]int
	nextIndex  int
	routes     []netlink.Route
	rules      []netlink.Rule
	ops        []string
	failures   []failure
	interrupts int
	watchers   []chan struct{}
}

type failure struct {
	substr string
	err    error
}

var _ routes.Netlink = (*Fake)(nil)

// NewFake returns an empty fake holding only the loopback link "lo".
func NewFake() *Fake {
	return &Fake{links: map[string]int{"lo": 1}, nextIndex: 2}
}

// AddLink creates a link and returns its index.
func (f *Fake) AddLink(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i, ok := f.links[name]; ok {
		return i
	}
	f.links[name] = f.nextIndex
	f.nextIndex++
	return f.links[name]
}

// DelLink removes a link and, like the kernel, silently drops the routes
// through it.
func (f *Fake) DelLink(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.links[name]
	if !ok {
		return
	}
	delete(f.links, name)
	f.routes = slices.DeleteFunc(f.routes, func(r netlink.Route) bool {
		return r.Type == unix.RTN_UNICAST && r.LinkIndex == i
	})
}

// FailOn makes every later write whose op line contains substr fail with
// err (still recorded, with " (failed)").
func (f *Fake) FailOn(substr string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, failure{substr, err})
}

// ClearFailures undoes FailOn.
func (f *Fake) ClearFailures() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = nil
}

// InterruptDumps makes the next n dumps (routes or rules) return
// netlink.ErrDumpInterrupted.
func (f *Fake) InterruptDumps(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.interrupts = n
}

// Ops returns the op lines recorded so far.
func (f *Fake) Ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
}

// TakeOps returns the op lines recorded so far and forgets them, so a test
// can seed state through the fake and then assert only what follows.
func (f *Fake) TakeOps() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ops := f.ops
	f.ops = nil
	return ops
}

// Routes returns the routes held, as FormatRoute lines in table, prefix
// and metric order.
func (f *Fake) Routes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs := slices.Clone(f.routes)
	SortRoutes(rs)
	out := make([]string, len(rs))
	for i := range rs {
		out[i] = FormatRoute(&rs[i], f.linkName)
	}
	return out
}

// Rules returns the rules held, as FormatRule lines in priority order.
func (f *Fake) Rules() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs := slices.Clone(f.rules)
	SortRules(rs)
	out := make([]string, len(rs))
	for i := range rs {
		out[i] = FormatRule(&rs[i])
	}
	return out
}

// LinkByName implements routes.Netlink.
func (f *Fake) LinkByName(name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.links[name]
	if !ok {
		return nil, fmt.Errorf("link %q not found", name)
	}
	return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name, Index: i}}, nil
}

const supportedRouteFilters = netlink.RT_FILTER_TABLE | netlink.RT_FILTER_PROTOCOL | netlink.RT_FILTER_OIF

// RouteListFiltered implements routes.Netlink for the table, protocol and
// output-interface filters; others are refused so a test cannot pass on a
// filter the fake ignored.
func (f *Fake) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if mask&^supportedRouteFilters != 0 {
		return nil, fmt.Errorf("routestest: unsupported route filter mask %#x", mask)
	}
	if f.interrupted() {
		return nil, netlink.ErrDumpInterrupted
	}
	if filter == nil {
		filter = &netlink.Route{}
		mask = 0
	}
	var out []netlink.Route
	for _, r := range f.routes {
		switch {
		case family != netlink.FAMILY_ALL && r.Family != family:
		case mask&netlink.RT_FILTER_TABLE == 0 && r.Table != unix.RT_TABLE_MAIN:
		case mask&netlink.RT_FILTER_TABLE != 0 && filter.Table != 0 && r.Table != filter.Table:
		case mask&netlink.RT_FILTER_PROTOCOL != 0 && r.Protocol != filter.Protocol:
		case mask&netlink.RT_FILTER_OIF != 0 && r.LinkIndex != filter.LinkIndex:
		default:
			out = append(out, copyRoute(r))
		}
	}
	return out, nil
}

// RouteReplace implements routes.Netlink.
func (f *Fake) RouteReplace(route *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := normalizeRoute(route)
	if err != nil {
		return err
	}
	if r.Priority == 0 && r.Family == netlink.FAMILY_V6 {
		r.Priority = 1024
	}
	if r.Type == 0 {
		r.Type = unix.RTN_UNICAST
	}
	i := slices.IndexFunc(f.routes, func(h netlink.Route) bool { return sameSlot(&h, &r) })
	verb := "add"
	if i >= 0 {
		verb = "replace"
	}
	if err := f.record("route " + verb + " " + FormatRoute(&r, f.linkName)); err != nil {
		return err
	}
	if i >= 0 {
		f.routes[i] = r
	} else {
		f.routes = append(f.routes, r)
	}
	return nil
}

// RouteDel implements routes.Netlink. As in the kernel, zero-valued
// metric, type, protocol and link match anything.
func (f *Fake) RouteDel(route *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := normalizeRoute(route)
	if err != nil {
		return err
	}
	if err := f.record("route del " + FormatRoute(&r, f.linkName)); err != nil {
		return err
	}
	i := slices.IndexFunc(f.routes, func(h netlink.Route) bool {
		return h.Family == r.Family && h.Table == r.Table && routeDst(&h) == routeDst(&r) && h.Tos == r.Tos &&
			(r.Priority == 0 || h.Priority == r.Priority) &&
			(r.Type == 0 || h.Type == r.Type) &&
			(r.Protocol == 0 || h.Protocol == r.Protocol) &&
			(r.LinkIndex == 0 || h.LinkIndex == r.LinkIndex)
	})
	if i < 0 {
		return fmt.Errorf("route del %s: %w", FormatRoute(&r, f.linkName), unix.ESRCH)
	}
	f.routes = slices.Delete(f.routes, i, i+1)
	f.notify()
	return nil
}

// RuleList implements routes.Netlink.
func (f *Fake) RuleList(family int) ([]netlink.Rule, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.interrupted() {
		return nil, netlink.ErrDumpInterrupted
	}
	var out []netlink.Rule
	for _, r := range f.rules {
		if family == netlink.FAMILY_ALL || r.Family == family {
			out = append(out, copyRule(r))
		}
	}
	return out, nil
}

// RuleAdd implements routes.Netlink.
func (f *Fake) RuleAdd(rule *netlink.Rule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := copyRule(*rule)
	r.Family = ruleFamily(&r)
	line := FormatRule(&r)
	if err := f.record("rule add " + line); err != nil {
		return err
	}
	if slices.ContainsFunc(f.rules, func(h netlink.Rule) bool { return h.Family == r.Family && FormatRule(&h) == line }) {
		return fmt.Errorf("rule add %s: %w", line, unix.EEXIST)
	}
	f.rules = append(f.rules, r)
	return nil
}

// RuleDel implements routes.Netlink: the first rule agreeing on every
// selector the request sets goes, as in the kernel.
func (f *Fake) RuleDel(rule *netlink.Rule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := copyRule(*rule)
	r.Family = ruleFamily(&r)
	if err := f.record("rule del " + FormatRule(&r)); err != nil {
		return err
	}
	i := slices.IndexFunc(f.rules, func(h netlink.Rule) bool {
		return h.Family == r.Family &&
			(r.Priority < 0 || h.Priority == r.Priority) &&
			(r.Table == 0 || h.Table == r.Table) &&
			(r.Src == nil || ipNetString(h.Src) == ipNetString(r.Src)) &&
			(r.Dst == nil || ipNetString(h.Dst) == ipNetString(r.Dst)) &&
			(r.Protocol == 0 || h.Protocol == r.Protocol) &&
			(r.IifName == "" || h.IifName == r.IifName) &&
			(r.Mark == 0 || h.Mark == r.Mark)
	})
	if i < 0 {
		return fmt.Errorf("rule del %s: %w", FormatRule(&r), unix.ENOENT)
	}
	f.rules = slices.Delete(f.rules, i, i+1)
	f.notify()
	return nil
}

// Watch returns a channel that is signalled (without blocking, so
// signals coalesce) after every route or rule deletion, meshd's own
// included, as the kernel's route notifications are.
func (f *Fake) Watch() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{}, 1)
	f.watchers = append(f.watchers, ch)
	return ch
}

// notify signals the watchers; callers hold f.mu.
func (f *Fake) notify() {
	for _, ch := range f.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// record logs a write and returns the injected failure for it, if any.
// Callers hold f.mu.
func (f *Fake) record(line string) error {
	for _, fl := range f.failures {
		if strings.Contains(line, fl.substr) {
			f.ops = append(f.ops, line+" (failed)")
			return fl.err
		}
	}
	f.ops = append(f.ops, line)
	return nil
}

func (f *Fake) interrupted() bool {
	if f.interrupts > 0 {
		f.interrupts--
		return true
	}
	return false
}

// linkName is called with f.mu held.
func (f *Fake) linkName(index int) string {
	for name, i := range f.links {
		if i == index {
			return name
		}
	}
	return fmt.Sprintf("#%d", index)
}

func normalizeRoute(route *netlink.Route) (netlink.Route, error) {
	r := copyRoute(*route)
	if r.Dst == nil {
		return r, fmt.Errorf("routestest: route without Dst: %w", unix.EINVAL)
	}
	fam := netlink.FAMILY_V6
	if r.Dst.IP.To4() != nil {
		fam = netlink.FAMILY_V4
	}
	if r.Family != 0 && r.Family != fam {
		return r, fmt.Errorf("routestest: family %d for %s: %w", r.Family, r.Dst, unix.EINVAL)
	}
	r.Family = fam
	if r.Table == 0 {
		r.Table = unix.RT_TABLE_MAIN
	}
	if !routeDst(&r).IsValid() || routeDst(&r) != routeDst(&r).Masked() {
		return r, fmt.Errorf("routestest: bad destination %s: %w", r.Dst, unix.EINVAL)
	}
	return r, nil
}

func sameSlot(a, b *netlink.Route) bool {
	return a.Family == b.Family && a.Table == b.Table && routeDst(a) == routeDst(b) &&
		a.Tos == b.Tos && a.Priority == b.Priority
}

func ruleFamily(r *netlink.Rule) int {
	for _, n := range []*net.IPNet{r.Src, r.Dst} {
		if n != nil {
			if n.IP.To4() != nil {
				return netlink.FAMILY_V4
			}
			return netlink.FAMILY_V6
		}
	}
	if r.Family != 0 {
		return r.Family
	}
	return netlink.FAMILY_V4
}

func copyRoute(r netlink.Route) netlink.Route {
	r.Dst = copyIPNet(r.Dst)
	r.Src = slices.Clone(r.Src)
	r.Gw = slices.Clone(r.Gw)
	r.MultiPath = slices.Clone(r.MultiPath)
	return r
}

func copyRule(r netlink.Rule) netlink.Rule {
	r.Src = copyIPNet(r.Src)
	r.Dst = copyIPNet(r.Dst)
	return r
}

func copyIPNet(n *net.IPNet) *net.IPNet {
	if n == nil {
		return nil
	}
	return &net.IPNet{IP: slices.Clone(n.IP), Mask: slices.Clone(n.Mask)}
}

// FormatRoute renders a route as the fake's op lines do (without the verb),
// so tests against a real kernel can compare with the same strings.
// linkName may be nil.
func FormatRoute(r *netlink.Route, linkName func(int) string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %d %s", r.Table, routeDst(r))
	switch r.Type {
	case unix.RTN_UNICAST:
		b.WriteString(" tunnel")
		if r.Gw != nil {
			fmt.Fprintf(&b, " via %s", r.Gw)
		}
		name := fmt.Sprintf("#%d", r.LinkIndex)
		if linkName != nil {
			name = linkName(r.LinkIndex)
		}
		b.WriteString(" dev " + name)
	case unix.RTN_THROW:
		b.WriteString(" throw")
	case unix.RTN_UNREACHABLE:
		b.WriteString(" unreachable")
	case unix.RTN_BLACKHOLE:
		b.WriteString(" blackhole")
	default:
		fmt.Fprintf(&b, " type %d", r.Type)
	}
	if r.Tos != 0 {
		fmt.Fprintf(&b, " tos %d", r.Tos)
	}
	if def := defaultMetric(r.Family); r.Priority != 0 && r.Priority != def {
		fmt.Fprintf(&b, " metric %d", r.Priority)
	}
	if int(r.Protocol) != routes.Protocol {
		fmt.Fprintf(&b, " proto %d", r.Protocol)
	}
	return b.String()
}

// FormatRule renders a rule as the fake's op lines do (without the verb).
func FormatRule(r *netlink.Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "prio %d", r.Priority)
	if r.Src != nil {
		b.WriteString(" from " + ipNetString(r.Src))
	}
	if r.Dst != nil {
		b.WriteString(" to " + ipNetString(r.Dst))
	}
	if r.IifName != "" {
		b.WriteString(" iif " + r.IifName)
	}
	if r.Mark != 0 {
		fmt.Fprintf(&b, " fwmark %#x", r.Mark)
	}
	fmt.Fprintf(&b, " lookup %d", r.Table)
	if int(r.Protocol) != routes.Protocol {
		fmt.Fprintf(&b, " proto %d", r.Protocol)
	}
	return b.String()
}

// SortRoutes orders routes by table, destination and metric.
func SortRoutes(rs []netlink.Route) {
	slices.SortFunc(rs, func(a, b netlink.Route) int {
		da, db := routeDst(&a), routeDst(&b)
		return cmp.Or(
			cmp.Compare(a.Table, b.Table),
			da.Addr().Compare(db.Addr()),
			cmp.Compare(da.Bits(), db.Bits()),
			cmp.Compare(a.Priority, b.Priority),
		)
	})
}

// SortRules orders rules by priority, then by their rendering.
func SortRules(rs []netlink.Rule) {
	slices.SortFunc(rs, func(a, b netlink.Rule) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), strings.Compare(FormatRule(&a), FormatRule(&b)))
	})
}

// routeDst is the route's destination; the kernel omits it for /0.
func routeDst(r *netlink.Route) netip.Prefix {
	if r.Dst == nil {
		if r.Family == netlink.FAMILY_V6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return ipNetPrefix(r.Dst)
}

func ipNetPrefix(n *net.IPNet) netip.Prefix {
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	if n.IP.To4() != nil {
		addr = addr.Unmap()
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr, ones)
}

func ipNetString(n *net.IPNet) string {
	if n == nil {
		return "all"
	}
	return ipNetPrefix(n).String()
}

func defaultMetric(family int) int {
	if family == netlink.FAMILY_V6 {
		return 1024
	}
	return 0
}
