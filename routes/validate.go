package routes

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// normalize returns cfg sorted and without duplicates (nil becomes
// empty), copying it first if that takes any change so Set never reorders
// the caller's slices, or an error when cfg cannot be programmed. A
// malformed config is rejected whole: applying the well-formed part of a
// buggy config leaves a state nobody asked for.
func normalize(cfg *Config) (*Config, error) {
	if cfg == nil {
		return &Config{}, nil
	}
	// Configs from Compute are sorted already, and then the caller's
	// slices serve as they are: nothing downstream writes to them.
	c := &Config{Link: cfg.Link, Routes: cfg.Routes, Rules: cfg.Rules}
	copyRoutes := !strictlySorted(c.Routes, compareRoutes)
	if copyRoutes {
		c.Routes = slices.Clone(c.Routes)
		slices.SortFunc(c.Routes, compareRoutes)
	}
	copyRules := !strictlySorted(c.Rules, compareRules)
	if copyRules {
		c.Rules = slices.Clone(c.Rules)
		slices.SortFunc(c.Rules, compareRules)
	}
	var errs []error
	// Sorting puts routes with the same key next to each other, so a
	// conflict is with the last valid route before.
	var last *Route
	for i, r := range c.Routes {
		if err := validRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", r, err))
			continue
		}
		if last != nil && last.Key() == r.Key() && last.Kind != r.Kind {
			errs = append(errs, fmt.Errorf("route %s: conflicts with %s", r, *last))
		}
		last = &c.Routes[i]
	}
	for _, r := range c.Rules {
		if err := validRule(r); err != nil {
			errs = append(errs, fmt.Errorf("rule %s: %w", r, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("routes: invalid config: %w", err)
	}
	// Strictly sorted slices hold no duplicates.
	if copyRoutes {
		c.Routes = dedupe(c.Routes, func(a, b Route) bool { return a.Key() == b.Key() })
	}
	if copyRules {
		c.Rules = dedupe(c.Rules, func(a, b Rule) bool { return a == b })
	}
	return c, nil
}

// strictlySorted reports whether s is sorted with no two entries equal
// under cmp: sorted and free of duplicates already.
func strictlySorted[T any](s []T, cmp func(a, b T) int) bool {
	for i := 1; i < len(s); i++ {
		if cmp(s[i-1], s[i]) >= 0 {
			return false
		}
	}
	return true
}

// dedupe drops adjacent duplicates of a sorted slice, in place; a repeated
// entry would otherwise be written twice and fail the second time.
func dedupe[T any](s []T, eq func(a, b T) bool) []T {
	out := s[:0]
	for i, v := range s {
		if i > 0 && eq(out[len(out)-1], v) {
			continue
		}
		out = append(out, v)
	}
	return out
}

func validRoute(r Route) error {
	if err := validPrefix(r.Dst); err != nil {
		return err
	}
	if r.Kind < Tunnel || r.Kind > Unreachable {
		return fmt.Errorf("unknown kind %d", int(r.Kind))
	}
	return validTable(r.Table)
}

func validRule(r Rule) error {
	if r.From.IsValid() == r.To.IsValid() {
		return errors.New("exactly one of From and To must be set")
	}
	p := r.From
	if !p.IsValid() {
		p = r.To
	}
	if err := validPrefix(p); err != nil {
		return err
	}
	if r.Priority < 0 || int64(r.Priority) > 1<<32-1 {
		return fmt.Errorf("priority %d out of range", r.Priority)
	}
	return validTable(r.Table)
}

func validPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("no destination prefix")
	case p.Addr().Is4In6():
		// The kernel would file it as IPv6, never matching IPv4 traffic.
		return fmt.Errorf("prefix %s is IPv4-mapped IPv6", p)
	case p.Addr().Zone() != "":
		return fmt.Errorf("prefix %s has a zone", p)
	case p != p.Masked():
		// The kernel rejects host bits in a route destination.
		return fmt.Errorf("prefix %s has host bits set (want %s)", p, p.Masked())
	}
	return nil
}

// validTable refuses 0, which the kernel reads as "main", so a forgotten
// table number cannot put segment routes into the main table.
func validTable(t int) error {
	if t <= 0 || int64(t) > 1<<32-1 {
		return fmt.Errorf("table %d out of range", t)
	}
	return nil
}
