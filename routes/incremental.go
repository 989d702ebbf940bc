package routes

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// SetFrom moves the kernel from prev to cfg, trusting that the kernel
// holds prev: nothing is dumped, so a one-peer change costs its own writes
// and no reads, however many routes exist. The reconciler uses it for
// membership events and falls back to Set, which reads the kernel, on
// resyncs, after route deletions by others and after any failure. A nil
// prev means "unknown" and does a full Set.
func (m *Manager) SetFrom(prev, cfg *Config) error {
	if prev == nil {
		return m.Set(cfg)
	}
	want, err := normalize(cfg)
	if err != nil {
		return err
	}
	had, err := normalize(prev)
	if err != nil {
		return m.Set(cfg)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	linkIndex, err := m.linkIndex(want)
	if err != nil {
		return err
	}
	if had.Link != want.Link {
		return fmt.Errorf("routes: link changed from %q to %q; a full Set is needed", had.Link, want.Link)
	}
	haveRoutes, haveRules := kernelView(had, linkIndex)
	err = m.apply(diff(want, haveRoutes, haveRules, linkIndex), want.Link, linkIndex)
	m.rememberPeers(want)
	return err
}

// kernelView is how the kernel reports cfg once installed: what a dump
// would return after Set(cfg).
func kernelView(cfg *Config, linkIndex int) ([]netlink.Route, []netlink.Rule) {
	routes := make([]netlink.Route, len(cfg.Routes))
	for i, r := range cfg.Routes {
		nr := r.toNetlink(linkIndex)
		nr.Priority = defaultMetric(nr.Family)
		routes[i] = *nr
	}
	rules := make([]netlink.Rule, len(cfg.Rules))
	for i, r := range cfg.Rules {
		rules[i] = *r.toNetlink()
	}
	return routes, rules
}
