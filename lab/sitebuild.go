package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
)

// buildSites builds the WAN, then each site: its bridge, its router and
// its hosts.
func (l *Lab) buildSites(ctx context.Context) error {
	if err := l.buildSwitch(ctx, l.WANNS()); err != nil {
		return err
	}
	for _, s := range l.sites {
		if err := l.buildSwitch(ctx, s.NS()); err != nil {
			return err
		}
		if s.router != nil {
			if err := l.buildRouter(ctx, s.router); err != nil {
				return err
			}
		}
		for _, h := range s.hosts {
			if err := l.buildSiteHost(ctx, h); err != nil {
				return err
			}
		}
	}
	return nil
}

// buildSiteHost plugs h into its site's bridge, a public gateway into the
// WAN too, and routes a NAT site's hosts through the router.
func (l *Lab) buildSiteHost(ctx context.Context, h *Host) error {
	s := h.site
	if err := l.addForwardingNS(ctx, h.NS()); err != nil {
		return err
	}
	if err := l.plug(ctx, s.NS(), h.Name(), h.NS(), underlayIf, netip.PrefixFrom(h.SiteAddr(), s.Network().Bits())); err != nil {
		return err
	}
	if pub := h.PublicAddr(); pub.IsValid() {
		if err := l.plug(ctx, l.WANNS(), h.Name(), h.NS(), wanIf, netip.PrefixFrom(pub, WANPrefix.Bits())); err != nil {
			return err
		}
	}
	if s.router == nil {
		return nil
	}
	return ipn(ctx, h.NS(), []string{"route", "add", "default", "via", s.router.PrivateAddr().String(), "dev", underlayIf})
}

// buildRouter plugs the router into its site's bridge and the WAN and
// loads its NAT ruleset.
func (l *Lab) buildRouter(ctx context.Context, r *Router) error {
	s := r.site
	if err := l.addForwardingNS(ctx, r.NS()); err != nil {
		return err
	}
	if err := l.plug(ctx, s.NS(), "nat", r.NS(), routerLANIf, netip.PrefixFrom(r.PrivateAddr(), s.Network().Bits())); err != nil {
		return err
	}
	if err := l.plug(ctx, l.WANNS(), r.wanPort(), r.NS(), routerWANIf, netip.PrefixFrom(r.PublicAddr(), WANPrefix.Bits())); err != nil {
		return err
	}
	// Kept in Dir: what the router does is then one file to read.
	if err := os.WriteFile(r.rulesPath(), []byte(r.natRules()), 0o644); err != nil {
		return fmt.Errorf("lab: router of site %s: %w", s.Name(), err)
	}
	_, err := Exec(ctx, r.NS(), "nft", "-f", r.rulesPath())
	return err
}

// CutWAN sets the WAN bridge's ports of the named sites down (every site
// if none is named): their public gateways and NAT routers lose the WAN,
// while each site's private network stays up.
func (l *Lab) CutWAN(ctx context.Context, sites ...string) error {
	return l.setWANPorts(ctx, "down", sites)
}

// HealWAN sets the WAN bridge's ports of the named sites (every site if
// none is named) up again.
func (l *Lab) HealWAN(ctx context.Context, sites ...string) error {
	return l.setWANPorts(ctx, "up", sites)
}

func (l *Lab) setWANPorts(ctx context.Context, state string, names []string) error {
	if len(l.sites) == 0 {
		return errors.New("lab: a flat lab has no WAN (set Spec.Sites)")
	}
	sites := l.sites
	if len(names) > 0 {
		sites = nil
		for _, n := range names {
			s := l.Site(n)
			if s == nil {
				return fmt.Errorf("lab: no site %q", n)
			}
			sites = append(sites, s)
		}
	}
	var cmds [][]string
	for _, s := range sites {
		var ports []string
		for _, g := range s.Gateways() {
			if g.PublicAddr().IsValid() {
				ports = append(ports, g.Name())
			}
		}
		if s.router != nil {
			ports = append(ports, s.router.wanPort())
		}
		for _, p := range ports {
			cmds = append(cmds, []string{"link", "set", "dev", p, state})
		}
	}
	return ipn(ctx, l.WANNS(), cmds...)
}
