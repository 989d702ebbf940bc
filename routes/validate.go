package routes

import (
	"errors"
	"fmt"
	"net/netip"
)

// normalize returns a sorted copy of cfg (nil becomes empty) so Set never
// reorders the caller's slices, or an error when cfg cannot be programmed.
// A malformed config is rejected whole: applying the well-formed part of a
// buggy config leaves a state nobody asked for.
func normalize(cfg *Config) (*Config, error) {
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
		if prev, dup := seen[r.key()]; dup && prev.Kind != r.Kind {
			errs = append(errs, fmt.Errorf("route %s: conflicts with %s", r, prev))
		}
		seen[r.key()] = r
	}
	c.Routes = dedupe(c.Routes, func(a, b Route) bool { return a.key() == b.key() })
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

// dedupe drops adjacent duplicates of a sorted slice; a repeated entry
// would otherwise be written twice and fail the second time.
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
