// Package cni writes CNI network configurations that attach containers to
// meshd's segments: one conflist per segment, a Linux bridge on this host's
// slice with host-local IPAM. meshd only writes and removes the files;
// container runtimes run the standard plugins that read them.
package cni

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/netip"

	"github.com/meshd/meshd/segment"
)

const (
	// SpecVersion is the CNI spec the files conform to; the bridge and
	// host-local plugins support it since plugins v1.0.0.
	SpecVersion = "1.0.0"

	filePrefix = "10-meshd-"
	fileSuffix = ".conflist"
	// bridgePrefix marks meshd's bridges in `ip link` output.
	bridgePrefix = "mbr-"
	ifnameMax    = 15 // IFNAMSIZ-1

	// rangeOffset keeps the first addresses after the gateway out of the
	// pool, for anything an operator addresses by hand on the bridge.
	rangeOffset = 10
	// minPoolForOffset is the slice size from which skipping those
	// addresses still leaves a useful pool.
	minPoolForOffset = 32
)

// Segment is one overlay segment and this host's slice of it.
type Segment struct {
	Name   string
	CIDR   netip.Prefix // the whole segment, routed through the gateway
	Subnet netip.Prefix // this host's slice: the bridge's subnet
}

// The conflist as written. Field order is the file's key order, which the
// golden tests pin.
type conflist struct {
	CNIVersion string  `json:"cniVersion"`
	Name       string  `json:"name"`
	Meshd      *marker `json:"meshd"`
	Plugins    []any   `json:"plugins"`
}

// marker identifies meshd's own files. The spec defines only cniVersion,
// cniVersions, name, disableCheck and plugins at the top level; runtimes
// (libcni) read those by name and never pass other top-level keys to a
// plugin, so an extra key is invisible to the network setup.
type marker struct {
	Managed bool   `json:"managed"`
	Segment string `json:"segment"`
}

type bridgePlugin struct {
	Type        string `json:"type"`
	Bridge      string `json:"bridge"`
	IsGateway   bool   `json:"isGateway"`
	IPMasq      bool   `json:"ipMasq"`
	HairpinMode bool   `json:"hairpinMode"`
	MTU         int    `json:"mtu"`
	IPAM        ipam   `json:"ipam"`
}

type ipam struct {
	Type   string      `json:"type"`
	Ranges [][]ipRange `json:"ranges"`
	Routes []route     `json:"routes"`
}

type ipRange struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	Gateway    string `json:"gateway"`
}

type route struct {
	Dst string `json:"dst"`
	GW  string `json:"gw"`
}

// FileName is the conflist's base name for a segment. The 10- prefix
// sorts it before most distribution defaults (e.g. 87-podman-bridge).
func FileName(segment string) string { return filePrefix + segment + fileSuffix }

// NetworkName is the CNI network name, unique per segment on a host.
func NetworkName(segment string) string { return "meshd-" + segment }

// BridgeName is the bridge device for a segment. Names too long for
// IFNAMSIZ keep a readable head and gain a hash of the full name, so two
// long segment names sharing a prefix never share a bridge.
func BridgeName(segment string) string {
	if n := bridgePrefix + segment; len(n) <= ifnameMax {
		return n
	}
	h := fnv.New32a()
	h.Write([]byte(segment))
	sum := fmt.Sprintf("%06x", h.Sum32()&0xffffff)
	head := segment[:ifnameMax-len(bridgePrefix)-1-len(sum)]
	return bridgePrefix + head + "-" + sum
}

// Render returns the conflist for seg with pods at the given MTU, which
// should be the WireGuard interface's: a pod sending larger packets would
// rely on fragmentation or PMTU discovery through the tunnel.
func Render(seg Segment, mtu int) ([]byte, error) {
	pool, err := addressPlan(seg, mtu)
	if err != nil {
		return nil, err
	}
	doc := conflist{
		CNIVersion: SpecVersion,
		Name:       NetworkName(seg.Name),
		Meshd:      &marker{Managed: true, Segment: seg.Name},
		Plugins: []any{bridgePlugin{
			Type:   "bridge",
			Bridge: BridgeName(seg.Name),
			// The bridge holds the gateway address; meshd's per-segment
			// routing takes over from there. No masquerading: pod
			// addresses are routable across the mesh as they are.
			IsGateway:   true,
			IPMasq:      false,
			HairpinMode: true,
			MTU:         mtu,
			IPAM: ipam{
				Type:   "host-local",
				Ranges: [][]ipRange{{pool}},
				// Only the segment goes through the bridge gateway; a
				// default route is the runtime's or another plugin's call.
				Routes: []route{{Dst: seg.CIDR.String(), GW: pool.Gateway}},
			},
		}},
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

func addressPlan(seg Segment, mtu int) (ipRange, error) {
	if err := validate(seg, mtu); err != nil {
		return ipRange{}, fmt.Errorf("cni: segment %q: %w", seg.Name, err)
	}
	base := seg.Subnet.Addr()
	hostBits := base.BitLen() - seg.Subnet.Bits()
	start := 2 // network address, gateway, then the pool
	if hostBits >= 63 || 1<<hostBits >= minPoolForOffset {
		start = rangeOffset
	}
	return ipRange{
		Subnet:     seg.Subnet.String(),
		Gateway:    offset(base, 1).String(),
		RangeStart: offset(base, int64(start)).String(),
	}, nil
}

func validate(seg Segment, mtu int) error {
	// Checked again because the name ends up in a file name and an
	// interface name.
	if !segment.ValidName(seg.Name) {
		return fmt.Errorf("invalid segment name")
	}
	if !seg.CIDR.IsValid() || !seg.Subnet.IsValid() {
		return fmt.Errorf("cidr %s and subnet %s must both be valid prefixes", seg.CIDR, seg.Subnet)
	}
	if seg.Subnet.Masked() != seg.Subnet || seg.CIDR.Masked() != seg.CIDR {
		return fmt.Errorf("cidr %s and subnet %s must not have host bits set", seg.CIDR, seg.Subnet)
	}
	if seg.Subnet.Addr().Is4() != seg.CIDR.Addr().Is4() || seg.Subnet.Bits() < seg.CIDR.Bits() || !seg.CIDR.Contains(seg.Subnet.Addr()) {
		return fmt.Errorf("subnet %s is not inside cidr %s", seg.Subnet, seg.CIDR)
	}
	// Network address, gateway, one pod and (IPv4) broadcast.
	if seg.Subnet.Addr().BitLen()-seg.Subnet.Bits() < 2 {
		return fmt.Errorf("subnet %s is too small for a bridge gateway and pods; use at least a /%d", seg.Subnet, seg.Subnet.Addr().BitLen()-2)
	}
	minMTU := 576
	if seg.Subnet.Addr().Is6() {
		minMTU = 1280 // the kernel disables IPv6 on smaller links
	}
	if mtu < minMTU || mtu > 65535 {
		return fmt.Errorf("mtu %d is outside %d..65535", mtu, minMTU)
	}
	return nil
}

// offset returns a+n; big.Int keeps IPv6 arithmetic simple.
func offset(a netip.Addr, n int64) netip.Addr {
	raw := a.AsSlice()
	v := new(big.Int).SetBytes(raw)
	v.Add(v, big.NewInt(n))
	out := make([]byte, len(raw))
	v.FillBytes(out)
	r, _ := netip.AddrFromSlice(out)
	return r
}
