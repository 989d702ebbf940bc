package routes

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
)

// Manager makes the kernel's meshd-owned routes and rules equal a Config.
// It remembers nothing that matters: every Set starts from a dump, so a
// fresh Manager after a crash converges the same way.
type Manager struct {
	nl  Netlink
	log *slog.Logger
	ops atomic.Int64

	mu sync.Mutex
	// peers remembers who was behind each route of the last Set, only so
	// that removals can be logged with the peer's name.
	peers map[routeKey]string
}

// New returns a Manager writing through nl. A nil log discards.
func New(nl Netlink, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{nl: nl, log: log}
}

// Ops is the number of netlink writes (route replace/delete, rule
// add/delete) attempted so far, failed ones included. Dumps and link
// lookups are reads and not counted.
func (m *Manager) Ops() int { return int(m.ops.Load()) }

// Set makes the meshd-owned routes and rules equal cfg; Set(nil) removes
// them all. Entries already right cost no write. A missing link for
// Tunnel routes, an invalid config or a failed dump changes nothing;
// individual write failures do not stop the others and are returned
// joined.
func (m *Manager) Set(cfg *Config) error {
	want, err := normalize(cfg)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()

	linkIndex, err := m.linkIndex(want)
	if err != nil {
		return err
	}
	haveRoutes, err := listRoutes(m.nl)
	if err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	haveRules, err := listRules(m.nl)
	if err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	p := diff(want, haveRoutes, haveRules, linkIndex)
	err = m.apply(p, want.Link, linkIndex)
	m.rememberPeers(want)
	return err
}

// Cleanup removes every route and rule carrying Protocol, found from the
// kernel alone: at startup it clears what a crashed meshd left, at
// shutdown what this one installed.
func Cleanup(nl Netlink) error {
	return New(nl, slog.Default()).Set(nil)
}

// linkIndex resolves the tunnel interface before anything is written:
// segment rules pointing at a table whose tunnel routes could not be
// installed would turn every remote slice unreachable.
func (m *Manager) linkIndex(want *Config) (int, error) {
	if !slices.ContainsFunc(want.Routes, func(r Route) bool { return r.Kind == Tunnel }) {
		return 0, nil
	}
	if want.Link == "" {
		return 0, errors.New("routes: config has tunnel routes but no link; nothing changed")
	}
	l, err := m.nl.LinkByName(want.Link)
	if err != nil {
		return 0, fmt.Errorf("routes: link %q for tunnel routes: %w; nothing changed", want.Link, err)
	}
	return l.Attrs().Index, nil
}

func (m *Manager) rememberPeers(want *Config) {
	m.peers = make(map[routeKey]string, len(want.Routes))
	for _, r := range want.Routes {
		m.rememberPeer(r)
	}
}

// rememberPeer records who is behind r, forgetting whoever was behind its
// slot before when r has no peer.
func (m *Manager) rememberPeer(r Route) {
	if r.Peer != "" {
		m.peers[r.Key()] = r.Peer
	} else {
		delete(m.peers, r.Key())
	}
}

// routeWrite is a route to replace, with what occupied its slot (if
// anything) for the log.
type routeWrite struct {
	want Route
	old  *netlink.Route
}

type plan struct {
	writeRoutes []routeWrite
	addRules    []Rule
	delRules    []netlink.Rule
	delRoutes   []netlink.Route
}

func (p plan) empty() bool {
	return len(p.writeRoutes)+len(p.addRules)+len(p.delRules)+len(p.delRoutes) == 0
}

// diff computes the writes that turn the kernel's meshd-owned state into
// want. want must come from normalize.
func diff(want *Config, haveRoutes []netlink.Route, haveRules []netlink.Rule, linkIndex int) plan {
	var p plan
	p.writeRoutes, p.delRoutes = diffRoutes(want.Routes, haveRoutes, linkIndex)
	p.addRules, p.delRules = diffRules(want.Rules, haveRules)
	return p
}

func diffRoutes(want []Route, have []netlink.Route, linkIndex int) ([]routeWrite, []netlink.Route) {
	byKey := make(map[routeKey][]*netlink.Route)
	for i := range have {
		k := kernelRouteKey(&have[i])
		byKey[k] = append(byKey[k], &have[i])
	}
	var writes []routeWrite
	var dels []netlink.Route
	for _, w := range want {
		group := byKey[w.Key()]
		delete(byKey, w.Key())
		var slot *netlink.Route
		for _, k := range group {
			if slot == nil && inSlot(k) {
				slot = k
				continue
			}
			// Same destination under another metric or TOS: a
			// leftover that would shadow or back up the real route.
			dels = append(dels, *k)
		}
		if slot == nil || !matches(slot, w, linkIndex) {
			writes = append(writes, routeWrite{want: w, old: slot})
		}
	}
	for _, group := range byKey {
		for _, k := range group {
			dels = append(dels, *k)
		}
	}
	slices.SortFunc(dels, compareKernelRoutes)
	return writes, dels
}

func compareKernelRoutes(a, b netlink.Route) int {
	ka, kb := kernelRouteKey(&a), kernelRouteKey(&b)
	return cmp.Or(
		cmp.Compare(ka.Table, kb.Table),
		ka.Dst.Compare(kb.Dst),
		cmp.Compare(a.Priority, b.Priority),
		cmp.Compare(a.Tos, b.Tos),
	)
}

func diffRules(want []Rule, have []netlink.Rule) ([]Rule, []netlink.Rule) {
	pending := make(map[Rule]bool, len(want))
	for _, r := range want {
		pending[r] = true
	}
	var dels []netlink.Rule
	for _, k := range have {
		r, plain := plainRule(&k)
		if plain && pending[r] {
			delete(pending, r) // a duplicate of it is deleted below
			continue
		}
		dels = append(dels, k)
	}
	var adds []Rule
	for _, r := range want {
		if pending[r] {
			adds = append(adds, r)
		}
	}
	slices.SortStableFunc(dels, func(a, b netlink.Rule) int {
		ra, _ := plainRule(&a)
		rb, _ := plainRule(&b)
		return cmp.Or(
			cmp.Compare(ra.Priority, rb.Priority),
			cmp.Compare(ra.Table, rb.Table),
			ra.From.Compare(rb.From),
			ra.To.Compare(rb.To),
		)
	})
	return adds, dels
}

// apply writes p. Everything new goes in before anything old comes out,
// so a changed entry never has a moment where neither version routes the
// traffic. Rules go out before routes so no rule is left selecting a
// table while it is being emptied.
func (m *Manager) apply(p plan, linkName string, linkIndex int) error {
	if p.empty() {
		return nil
	}
	var errs []error
	for _, w := range p.writeRoutes {
		errs = append(errs, m.writeRoute(w, linkName, linkIndex))
	}
	for _, r := range p.addRules {
		errs = append(errs, m.addRule(r))
	}
	for i := range p.delRules {
		errs = append(errs, m.delRule(&p.delRules[i]))
	}
	for i := range p.delRoutes {
		errs = append(errs, m.delRoute(&p.delRoutes[i]))
	}
	return errors.Join(errs...)
}

func (m *Manager) write(op func() error) error {
	m.ops.Add(1)
	return op()
}

func (m *Manager) writeRoute(w routeWrite, linkName string, linkIndex int) error {
	name := w.want.String()
	if w.want.Kind == Tunnel {
		name += " dev " + linkName
	}
	if w.want.Peer != "" {
		name += " (peer " + w.want.Peer + ")"
	}
	if err := m.write(func() error { return m.nl.RouteReplace(routeToNetlink(w.want, linkIndex)) }); err != nil {
		return fmt.Errorf("route %s: replace: %w", name, err)
	}
	attrs := []any{"table", w.want.Table, "dst", w.want.Dst, "kind", w.want.Kind}
	if w.want.Kind == Tunnel {
		attrs = append(attrs, "dev", linkName)
	}
	if w.want.Peer != "" {
		attrs = append(attrs, "peer", w.want.Peer)
	}
	if w.old == nil {
		m.log.Info("route added", attrs...)
	} else {
		m.log.Info("route replaced", append(attrs, "was", kernelKind(w.old))...)
	}
	return nil
}

func (m *Manager) delRoute(k *netlink.Route) error {
	key := kernelRouteKey(k)
	peer := m.peers[key]
	name := describeKernelRoute(k)
	if peer != "" {
		name += " (peer " + peer + ")"
	}
	if err := m.write(func() error { return m.nl.RouteDel(deleteRequest(k)) }); err != nil {
		return fmt.Errorf("route %s: delete: %w", name, err)
	}
	attrs := []any{"table", key.Table, "dst", key.Dst, "kind", kernelKind(k)}
	if peer != "" {
		attrs = append(attrs, "peer", peer)
	}
	m.log.Info("route removed", attrs...)
	return nil
}

func (m *Manager) addRule(r Rule) error {
	if err := m.write(func() error { return m.nl.RuleAdd(ruleToNetlink(r)) }); err != nil {
		return fmt.Errorf("rule %s: add: %w", r, err)
	}
	m.log.Info("rule added", "rule", r.String())
	return nil
}

func (m *Manager) delRule(k *netlink.Rule) error {
	// The dumped rule goes back verbatim: the kernel deletes the first
	// rule matching the given selectors, and a partial description could
	// hit a sibling that is meant to stay.
	if err := m.write(func() error { return m.nl.RuleDel(k) }); err != nil {
		return fmt.Errorf("rule %s: delete: %w", describeKernelRule(k), err)
	}
	m.log.Info("rule removed", "rule", describeKernelRule(k))
	return nil
}
