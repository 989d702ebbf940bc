package daemon

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/meshd/meshd/config"
)

// WireGuard's per-packet overhead on the underlay: outer IP header, UDP
// header (8), WireGuard header (16) and Poly1305 tag (16).
const (
	overheadIPv4 = 20 + 8 + 32
	overheadIPv6 = 40 + 8 + 32
	fallbackMTU  = 1420
)

// resolveUnderlay fills in what the config left to the host: the address
// to advertise, the WireGuard endpoint, and the tunnel MTU. The MTU comes
// from the interface that carries the endpoint address, so a 1400-byte
// underlay gets a 1340-byte tunnel without anyone doing arithmetic.
func resolveUnderlay(cfg *config.Config) (Underlay, error) {
	var u Underlay
	u.Advertise = cfg.Cluster.AdvertiseAddr
	if !u.Advertise.IsValid() {
		if !cfg.Cluster.BindAddr.IsUnspecified() {
			u.Advertise = cfg.Cluster.BindAddr
		} else {
			a, err := firstGlobalAddr()
			if err != nil {
				return u, err
			}
			u.Advertise = a
		}
	}
	u.Endpoint = cfg.WireGuard.Endpoint
	if !u.Endpoint.IsValid() {
		u.Endpoint = netip.AddrPortFrom(u.Advertise, uint16(cfg.WireGuard.ListenPort))
	}
	u.MTU = cfg.WireGuard.MTU
	if u.MTU == 0 {
		u.MTU = autoMTU(u.Endpoint.Addr())
	}
	return u, nil
}

func autoMTU(endpoint netip.Addr) int {
	overhead := overheadIPv4
	if endpoint.Is6() {
		overhead = overheadIPv6
	}
	link, ok := linkWithAddr(endpoint)
	if !ok {
		return fallbackMTU
	}
	return link.Attrs().MTU - overhead
}

func linkWithAddr(a netip.Addr) (netlink.Link, bool) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, false
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Unmap() == a {
			link, err := netlink.LinkByIndex(ad.LinkIndex)
			return link, err == nil
		}
	}
	return nil, false
}

// firstGlobalAddr picks the host's first global unicast address, for
// hosts configured with bind_addr 0.0.0.0 and no advertise_addr.
func firstGlobalAddr() (netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list addresses to pick cluster.advertise_addr: %w", err)
	}
	for _, ad := range addrs {
		ip, ok := netip.AddrFromSlice(ad.IP)
		if ok && ip.Unmap().IsGlobalUnicast() {
			return ip.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no global unicast address found to advertise; set cluster.advertise_addr")
}
