package config

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/meshd/meshd/segment"
)

// Keys of a cluster of several sites. A config without [site] and [wan]
// is one site, "default", as meshd has always been.
const (
	sectionSite    = "site"
	keySiteName    = "site.name"
	keySiteGateway = "site.gateway"

	sectionWAN       = "wan"
	keyWANBindAddr   = "wan.bind_addr"
	keyWANBindPort   = "wan.bind_port"
	keyWANAdvertise  = "wan.advertise_addr"
	keyWANJoin       = "wan.join"
	defaultWANPort   = 7947
	defaultSiteName  = "default"
	segKeySiteBlock  = "site_block"
	maxKeepaliveSecs = 65535
)

// Site is this host's site and role.
type Site struct {
	// Name is the site; hosts of one site reach each other directly.
	Name string
	// Gateway carries traffic between this site and the others, and
	// joins the WAN pool.
	Gateway bool
}

// Multi reports whether the cluster has several sites: this host names a
// site of its own or is a gateway.
func (s Site) Multi() bool { return s.Name != defaultSiteName || s.Gateway }

// WAN configures a gateway's membership in the pool of all sites'
// gateways.
type WAN struct {
	BindAddr netip.Addr
	BindPort int
	// AdvertiseAddr is the gateway's public address; invalid for a
	// gateway behind NAT, which other gateways learn from its
	// handshakes.
	AdvertiseAddr netip.Addr
	// Join lists gateways of other sites (host:port).
	Join []string
}

func (l *loader) site(c *Config) *Error {
	name, e := l.str(keySiteName)
	if e != nil {
		return e
	}
	if !segment.ValidName(name) {
		return l.fail(keySiteName, fmt.Sprintf("%q is not a valid site name", name), segment.NameFix)
	}
	c.Site.Name = name
	if c.Site.Gateway, e = l.boolean(keySiteGateway); e != nil {
		return e
	}
	if e := l.wan(c); e != nil {
		return e
	}
	return l.siteBlocks(c)
}

func (l *loader) wan(c *Config) *Error {
	if !c.Site.Gateway {
		// [wan] as the example file writes it (every key at its default)
		// is harmless; anything else on a plain host is a mistake.
		for _, k := range []string{keyWANBindAddr, keyWANBindPort, keyWANAdvertise, keyWANJoin} {
			if l.given(k) && fmt.Sprint(l.v.Get(k)) != fmt.Sprint(defaultFor(k)) {
				return l.fail(k, "only a gateway joins the WAN pool", "set site.gateway = true on this host, or remove the [wan] section")
			}
		}
		return nil
	}
	w := &c.WAN
	var e *Error
	if w.BindAddr, e = l.ip(keyWANBindAddr, keyWANBindPort); e != nil {
		return e
	}
	if w.BindPort, e = l.port(keyWANBindPort); e != nil {
		return e
	}
	// The site pool and the WAN pool are two serf agents: they need two
	// ports, and both gossip over UDP, as WireGuard listens.
	if w.BindPort == c.Cluster.BindPort && (w.BindAddr == c.Cluster.BindAddr || w.BindAddr.IsUnspecified() || c.Cluster.BindAddr.IsUnspecified()) {
		return l.fail(keyWANBindPort, fmt.Sprintf("%d is also cluster.bind_port on an overlapping address", w.BindPort),
			fmt.Sprintf("use another port, e.g. the default %d", defaultWANPort))
	}
	if w.BindPort == c.WireGuard.ListenPort {
		return l.fail(keyWANBindPort, fmt.Sprintf("%d is also wireguard.listen_port", w.BindPort),
			fmt.Sprintf("use another port, e.g. the default %d", defaultWANPort))
	}
	if s, e := l.str(keyWANAdvertise); e != nil {
		return e
	} else if s != "" {
		if w.AdvertiseAddr, e = l.ip(keyWANAdvertise, keyWANBindPort); e != nil {
			return e
		}
		if e := l.reachable(keyWANAdvertise, w.AdvertiseAddr, "or leave it empty behind NAT"); e != nil {
			return e
		}
	}
	w.Join, e = l.seeds(keyWANJoin, defaultWANPort)
	return e
}

// siteBlocks reads each segment's site_block: required when there are
// several sites (other sites route this site as one prefix per segment),
// meaningless on one.
func (l *loader) siteBlocks(c *Config) *Error {
	tables, e := l.segmentTables()
	if e != nil {
		return e
	}
	for i, t := range tables {
		seg := &c.Segments[i]
		if _, given := t[segKeySiteBlock]; !given {
			if c.Site.Multi() {
				return fail(segKey(i, segKeySiteBlock), "is missing; on a cluster of several sites every segment needs this site's block",
					fmt.Sprintf(`give site %q its own block of %s, e.g. site_block = %q, distinct from every other site's`, c.Site.Name, seg.CIDR, exampleBlock(seg.CIDR)))
			}
			continue
		}
		block, e := segPrefix(i, t, segKeySiteBlock)
		if e != nil {
			return e
		}
		key := segKey(i, segKeySiteBlock)
		if !segment.Contains(seg.CIDR, block) || block == seg.CIDR {
			return fail(key, fmt.Sprintf("%s is not a proper part of segment %q's cidr %s", block, seg.Name, seg.CIDR),
				"give the site a smaller block of "+seg.CIDR.String())
		}
		if seg.Subnet.IsValid() && !segment.Contains(block, seg.Subnet) {
			return fail(segKey(i, segKeySubnet), fmt.Sprintf("%s is outside this site's block %s", seg.Subnet, block),
				"pick this host's slice from within "+block.String())
		}
		if seg.HostPrefix <= block.Bits() {
			return fail(segKey(i, segKeyHostPrefix), fmt.Sprintf("/%d slices do not fit in the site's block %s", seg.HostPrefix, block),
				fmt.Sprintf("use a host_prefix longer than /%d", block.Bits()))
		}
		seg.SiteBlock = block
	}
	return nil
}

func exampleBlock(cidr netip.Prefix) string {
	bits := min(cidr.Bits()+4, cidr.Addr().BitLen())
	return netip.PrefixFrom(cidr.Addr(), bits).String()
}

// given reports whether the file or the environment sets key, as opposed
// to its default.
func (l *loader) given(key string) bool {
	if l.v.InConfig(key) {
		return true
	}
	v, ok := os.LookupEnv(envName(key))
	return ok && v != ""
}

func (l *loader) boolean(key string) (bool, *Error) {
	switch x := l.v.Get(key).(type) {
	case nil:
		return false, nil
	case bool:
		return x, nil
	case string:
		switch strings.TrimSpace(strings.ToLower(x)) {
		case "true", "1", "yes":
			return true, nil
		case "false", "0", "no", "":
			return false, nil
		}
		return false, l.fail(key, fmt.Sprintf("%q is not true or false", x), fmt.Sprintf("write %s = true or false", leaf(key)))
	default:
		return false, l.fail(key, "must be true or false, not "+describe(x), fmt.Sprintf("write %s = true or false", leaf(key)))
	}
}

// keepalive accepts a duration ("25s", "0s") or, as earlier versions
// wrote it, a number of seconds.
func (l *loader) keepalive() (int, *Error) {
	const fix = `use a duration between "0s" (off) and "18h12m15s", e.g. "25s", which keeps most NAT mappings open`
	switch x := l.v.Get(keyKeepalive).(type) {
	case string:
		s := strings.TrimSpace(x)
		if n, err := parseWholeSeconds(s); err == nil {
			return n, nil
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, l.fail(keyKeepalive, fmt.Sprintf("%q is not a duration", x), fix)
		}
		if d < 0 || d > maxKeepaliveSecs*time.Second {
			return 0, l.fail(keyKeepalive, fmt.Sprintf("%s is out of range", d), fix)
		}
		if d%time.Second != 0 {
			return 0, l.fail(keyKeepalive, fmt.Sprintf("%s is not a whole number of seconds", d), fix)
		}
		return int(d / time.Second), nil
	default:
		return l.intIn(keyKeepalive, 0, maxKeepaliveSecs, fix)
	}
}

func parseWholeSeconds(s string) (int, error) {
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || fmt.Sprint(n) != s || n < 0 || n > maxKeepaliveSecs {
		return 0, fmt.Errorf("not a number of seconds")
	}
	return n, nil
}
