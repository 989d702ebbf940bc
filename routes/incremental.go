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
	err = m.apply(diffFrom(had, want, linkIndex), want.Link, linkIndex)
	m.updatePeers(had, want)
	return err
}

// diffFrom is diff(want, kernel) for a kernel holding exactly had, as Set
// left it. Both configs are normalized, so sorted by the same keys: one
// walk over the two finds what differs, in the order diff reports it,
// without building the kernel's form of every entry or indexing it: only
// entries that are deleted or replaced need it, for the write and the log.
func diffFrom(had, want *Config, linkIndex int) plan {
	var p plan
	hr, wr := had.Routes, want.Routes
	for i, j := 0, 0; i < len(hr) || j < len(wr); {
		switch c := walkOrder(hr, i, wr, j, compareRoutes); {
		case c < 0:
			p.delRoutes = append(p.delRoutes, installed(hr[i], linkIndex))
			i++
		case c > 0:
			p.writeRoutes = append(p.writeRoutes, routeWrite{want: wr[j]})
			j++
		default:
			// Installed with the same link, the kernel's route matches
			// exactly when the kind does.
			if hr[i].Kind != wr[j].Kind {
				old := installed(hr[i], linkIndex)
				p.writeRoutes = append(p.writeRoutes, routeWrite{want: wr[j], old: &old})
			}
			i++
			j++
		}
	}
	hu, wu := had.Rules, want.Rules
	for i, j := 0, 0; i < len(hu) || j < len(wu); {
		switch c := walkOrder(hu, i, wu, j, compareRules); {
		case c < 0:
			p.delRules = append(p.delRules, *ruleToNetlink(hu[i]))
			i++
		case c > 0:
			p.addRules = append(p.addRules, wu[j])
			j++
		default:
			i++
			j++
		}
	}
	return p
}

// walkOrder compares the next entries of a merge walk over sorted lists a
// and b, at positions i and j: negative when only a's entry is due,
// positive when only b's, 0 when they are the same.
func walkOrder[T any](a []T, i int, b []T, j int, compare func(T, T) int) int {
	switch {
	case i == len(a):
		return 1
	case j == len(b):
		return -1
	}
	return compare(a[i], b[j])
}

// installed is r as a dump reports it after Set wrote it.
func installed(r Route, linkIndex int) netlink.Route {
	nr := routeToNetlink(r, linkIndex)
	nr.Priority = defaultMetric(nr.Family)
	return *nr
}

// updatePeers brings the route owners remembered for logging from had to
// want. The map normally describes had, installed by the last Set or
// SetFrom, and then only the routes that differ are touched rather than
// all of them rebuilt; otherwise it is rebuilt from want.
func (m *Manager) updatePeers(had, want *Config) {
	if !m.peersDescribe(had) {
		m.rememberPeers(want)
		return
	}
	hr, wr := had.Routes, want.Routes
	for i, j := 0, 0; i < len(hr) || j < len(wr); {
		switch c := walkOrder(hr, i, wr, j, compareRoutes); {
		case c < 0:
			delete(m.peers, hr[i].Key())
			i++
		case c > 0:
			m.rememberPeer(wr[j])
			j++
		default:
			if hr[i].Peer != wr[j].Peer {
				m.rememberPeer(wr[j])
			}
			i++
			j++
		}
	}
}

// peersDescribe reports whether m.peers is exactly what rememberPeers(had)
// would make it.
func (m *Manager) peersDescribe(had *Config) bool {
	if m.peers == nil {
		return false
	}
	n := 0
	for _, r := range had.Routes {
		if r.Peer == "" {
			continue
		}
		if m.peers[r.Key()] != r.Peer {
			return false
		}
		n++
	}
	return n == len(m.peers)
}
