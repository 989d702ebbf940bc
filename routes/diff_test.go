package routes

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
)

// kernelView is how the kernel reports cfg once installed: what a dump
// would return after Set(cfg). diff against it is what SetFrom must plan.
func kernelView(cfg *Config, linkIndex int) ([]netlink.Route, []netlink.Rule) {
	routes := make([]netlink.Route, len(cfg.Routes))
	for i, r := range cfg.Routes {
		routes[i] = installed(r, linkIndex)
	}
	rules := make([]netlink.Rule, len(cfg.Rules))
	for i, r := range cfg.Rules {
		rules[i] = *ruleToNetlink(r)
	}
	return routes, rules
}

// randomDiffConfig draws from a small universe of tables, destinations,
// kinds, peers and rules, so that two draws share some entries, differ in
// others and sometimes have no tunnel route at all.
func randomDiffConfig(rng *rand.Rand) *Config {
	cfg := &Config{Link: "mesh0"}
	tunnels := rng.IntN(4) != 0
	for _, table := range []int{100, 101, 7} {
		if rng.IntN(5) == 0 {
			continue
		}
		for i := range 24 {
			if rng.IntN(3) == 0 {
				continue
			}
			dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 42, byte(i), 0}), 24)
			switch i % 3 {
			case 1:
				dst = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x42, 7: byte(i)}), 64)
			case 2:
				dst = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 42, 0, 0}), 16+i/3)
			}
			kind := Kind(rng.IntN(3))
			if kind == Tunnel && !tunnels {
				kind = Throw
			}
			var peer string
			if kind == Tunnel && rng.IntN(4) != 0 {
				peer = fmt.Sprintf("h%d", rng.IntN(3))
			}
			cfg.Routes = append(cfg.Routes, Route{Table: table, Dst: dst, Kind: kind, Peer: peer})
		}
	}
	for _, p := range []string{"10.42.0.0/16", "fd42::/48", "10.0.0.0/8"} {
		for prio := 31000; prio < 31002; prio++ {
			if rng.IntN(3) == 0 {
				continue
			}
			r := Rule{Priority: prio, Table: 100 + rng.IntN(2)}
			if rng.IntN(2) == 0 {
				r.From = netip.MustParsePrefix(p)
			} else {
				r.To = netip.MustParsePrefix(p)
			}
			cfg.Rules = append(cfg.Rules, r)
		}
	}
	// Unsorted, with duplicates: normalize must cope.
	rng.Shuffle(len(cfg.Routes), func(i, j int) { cfg.Routes[i], cfg.Routes[j] = cfg.Routes[j], cfg.Routes[i] })
	if n := len(cfg.Rules); n > 0 && rng.IntN(4) == 0 {
		cfg.Rules = append(cfg.Rules, cfg.Rules[rng.IntN(n)])
	}
	if rng.IntN(2) == 0 {
		cfg.Sort()
	}
	return cfg
}

// The merge walk must plan exactly what diff plans against the kernel's
// view of had, in the same order.
func TestDiffFromIsDiffAgainstKernelView(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for step := range 2000 {
		had, err := normalize(randomDiffConfig(rng))
		if err != nil {
			t.Fatal(err)
		}
		want, err := normalize(randomDiffConfig(rng))
		if err != nil {
			t.Fatal(err)
		}
		linkIndex := 0
		if slices.ContainsFunc(want.Routes, func(r Route) bool { return r.Kind == Tunnel }) {
			linkIndex = 5
		}
		haveRoutes, haveRules := kernelView(had, linkIndex)
		oracle := diff(want, haveRoutes, haveRules, linkIndex)
		got := diffFrom(had, want, linkIndex)
		if !reflect.DeepEqual(got, oracle) {
			t.Fatalf("step %d: diffFrom\n%+v\ndiff against the kernel view\n%+v", step, got, oracle)
		}
	}
}

// updatePeers must leave the map rememberPeers would build, whether or not
// the map described had before.
func TestUpdatePeersMatchesRebuild(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	m := New(nil, nil)
	var last *Config
	for step := range 2000 {
		had, err := normalize(randomDiffConfig(rng))
		if err != nil {
			t.Fatal(err)
		}
		if last != nil && rng.IntN(4) != 0 {
			had = last // the usual case: the kernel holds the last config
		}
		want, err := normalize(randomDiffConfig(rng))
		if err != nil {
			t.Fatal(err)
		}
		m.updatePeers(had, want)
		got := m.peers
		m.rememberPeers(want)
		if !maps.Equal(got, m.peers) {
			t.Fatalf("step %d: updatePeers left\n%v\nrememberPeers builds\n%v", step, got, m.peers)
		}
		last = want
	}
}

// oldNormalize is normalize as it was before it learnt to skip the copy,
// the sort and the map for sorted configs.
func oldNormalize(cfg *Config) (*Config, error) {
	if cfg == nil {
		return &Config{}, nil
	}
	c := &Config{
		Link:   cfg.Link,
		Routes: append([]Route(nil), cfg.Routes...),
		Rules:  append([]Rule(nil), cfg.Rules...),
	}
	c.Sort()
	var errs []error
	seen := make(map[routeKey]Route, len(c.Routes))
	for _, r := range c.Routes {
		if err := validRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", r, err))
			continue
		}
		if prev, dup := seen[r.Key()]; dup && prev.Kind != r.Kind {
			errs = append(errs, fmt.Errorf("route %s: conflicts with %s", r, prev))
		}
		seen[r.Key()] = r
	}
	c.Routes = dedupe(c.Routes, func(a, b Route) bool { return a.Key() == b.Key() })
	for _, r := range c.Rules {
		if err := validRule(r); err != nil {
			errs = append(errs, fmt.Errorf("rule %s: %w", r, err))
		}
	}
	c.Rules = dedupe(c.Rules, func(a, b Rule) bool { return a == b })
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("routes: invalid config: %w", err)
	}
	return c, nil
}

func TestNormalizeMatchesCopyAndSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 9))
	for step := range 2000 {
		cfg := randomDiffConfig(rng)
		if n := len(cfg.Routes); n > 0 {
			switch rng.IntN(6) {
			case 0: // a duplicate, sometimes of another kind
				r := cfg.Routes[rng.IntN(n)]
				if rng.IntN(2) == 0 {
					r.Kind = (r.Kind + 1) % 3
				}
				cfg.Routes = append(cfg.Routes, r)
			case 1: // an invalid route
				cfg.Routes[rng.IntN(n)].Table = 0
			case 2:
				cfg.Routes[rng.IntN(n)].Dst = netip.MustParsePrefix("10.42.2.1/24")
			}
			if rng.IntN(2) == 0 {
				cfg.Sort()
			}
		}
		before := &Config{Link: cfg.Link, Routes: slices.Clone(cfg.Routes), Rules: slices.Clone(cfg.Rules)}
		got, gotErr := normalize(cfg)
		want, wantErr := oldNormalize(before)
		if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
			t.Fatalf("step %d: error %v, want %v", step, gotErr, wantErr)
		}
		if !reflect.DeepEqual(cfg, before) {
			t.Fatalf("step %d: normalize changed the caller's config", step)
		}
		if gotErr == nil && (got.Link != want.Link || !slices.Equal(got.Routes, want.Routes) || !slices.Equal(got.Rules, want.Rules)) {
			t.Fatalf("step %d: normalize gave\n%+v\nwant\n%+v", step, got, want)
		}
	}
}
