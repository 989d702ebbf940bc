// Package cni writes CNI network configurations that attach containers to
// meshd's segments: one conflist per segment, a Linux bridge on this host's
// slice with host-local IPAM. meshd only writes and removes the files;
// container runtimes run the standard plugins that read them. Plan is the
// address plan of one segment's bridge, shared with meshd's Docker driver
// (package cnm), so containers of both runtimes get the same gateway,
// pool and routes.
package cni

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/netip"
	"slices"

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
	Type    string      `json:"type"`
	DataDir string      `json:"dataDir,omitempty"`
	Ranges  [][]ipRange `json:"ranges"`
	Routes  []route     `json:"routes"`
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

// Options are the settings every conflist of a host shares.
type Options struct {
	// MTU should be the WireGuard interface's: a pod sending larger
	// packets would rely on fragmentation or PMTU discovery through the
	// tunnel.
	MTU int
	// IPAMDir is host-local's dataDir, where it keeps one file per
	// address in use; meshd's Docker driver reserves its addresses there
	// too. "" leaves host-local's default (/var/lib/cni/networks).
	IPAMDir string
}

// Render returns the conflist for seg. all is every segment of this host
// (seg included): pods get a route to each one of their address family,
// so a flow an [[allow]] rule admits across segments has a way back.
func Render(seg Segment, all []Segment, o Options) ([]byte, error) {
	plan, err := NewPlan(seg, all, o.MTU)
	if err != nil {
		return nil, err
	}
	routes := make([]route, len(plan.Routes))
	for i, r := range plan.Routes {
		routes[i] = route{Dst: r.String(), GW: plan.Gateway.String()}
	}
	doc := conflist{
		CNIVersion: SpecVersion,
		Name:       NetworkName(seg.Name),
		Meshd:      &marker{Managed: true, Segment: seg.Name},
		Plugins: []any{bridgePlugin{
			Type:   "bridge",
			Bridge: plan.Bridge,
			// The bridge holds the gateway address; meshd's per-segment
			// routing takes over from there. No masquerading: pod
			// addresses are routable across the mesh as they are.
			IsGateway:   true,
			IPMasq:      false,
			HairpinMode: true,
			MTU:         o.MTU,
			IPAM: ipam{
				Type:    "host-local",
				DataDir: o.IPAMDir,
				Ranges: [][]ipRange{{{
					Subnet:     seg.Subnet.String(),
					RangeStart: plan.RangeStart.String(),
					Gateway:    plan.Gateway.String(),
				}}},
				// The overlay's segments go through the bridge gateway; a
				// default route is the runtime's or another network's
				// call (meshd does not masquerade to the outside).
				Routes: routes,
			},
		}},
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Plan is how one segment's containers attach on this host, whichever
// runtime attaches them.
type Plan struct {
	Segment string
	Bridge  string
	Subnet  netip.Prefix // this host's slice: the bridge's subnet
	Gateway netip.Addr   // on the bridge: the first address of the slice
	// RangeStart is the first address handed to containers; the pool runs
	// to the end of the slice (its broadcast address excluded for IPv4).
	RangeStart netip.Addr
	RangeEnd   netip.Addr
	// Routes go through Gateway: the segment's own CIDR as two halves,
	// then every other segment of the same address family.
	Routes []netip.Prefix
}

// NewPlan computes seg's plan; all is every segment of this host.
//
// The own segment is routed as its two halves, one bit longer than any
// segment CIDR, so a container attached to two segments (podman --network
// a,b; docker network connect) reaches each segment through that
// segment's own interface and source address whatever the order of
// attachment: the other network's route to this segment's whole CIDR is
// less specific. Plain CIDRs would collide: the bridge plugin appends the
// second route and the kernel prefers it, and Docker fails the second
// attachment with "file exists".
func NewPlan(seg Segment, all []Segment, mtu int) (Plan, error) {
	if err := validate(seg, mtu); err != nil {
		return Plan{}, fmt.Errorf("cni: segment %q: %w", seg.Name, err)
	}
	base := seg.Subnet.Addr()
	hostBits := base.BitLen() - seg.Subnet.Bits()
	start := 2 // network address, gateway, then the pool
	if hostBits >= 63 || 1<<hostBits >= minPoolForOffset {
		start = rangeOffset
	}
	p := Plan{
		Segment:    seg.Name,
		Bridge:     BridgeName(seg.Name),
		Subnet:     seg.Subnet,
		Gateway:    offset(base, 1),
		RangeStart: offset(base, int64(start)),
		RangeEnd:   lastAddr(seg.Subnet),
	}
	if base.Is4() {
		p.RangeEnd = p.RangeEnd.Prev() // the broadcast address
	}
	lo, hi := halves(seg.CIDR)
	p.Routes = []netip.Prefix{lo, hi}
	var others []netip.Prefix
	for _, o := range all {
		if o.Name != seg.Name && o.CIDR.IsValid() && o.CIDR.Addr().Is4() == base.Is4() {
			others = append(others, o.CIDR)
		}
	}
	slices.SortFunc(others, netip.Prefix.Compare)
	p.Routes = append(p.Routes, slices.Compact(others)...)
	return p, nil
}

// halves splits p into its two halves; validate guarantees p has at
// least two host bits.
func halves(p netip.Prefix) (netip.Prefix, netip.Prefix) {
	bits := p.Bits() + 1
	lo := netip.PrefixFrom(p.Addr(), bits)
	hostBits := p.Addr().BitLen() - bits
	hi := netip.PrefixFrom(offsetShifted(p.Addr(), hostBits), bits)
	return lo, hi
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	raw := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(raw)*8; i++ {
		raw[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(raw)
	return a
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
	return add(a, big.NewInt(n))
}

// offsetShifted returns a + 1<<shift.
func offsetShifted(a netip.Addr, shift int) netip.Addr {
	return add(a, new(big.Int).Lsh(big.NewInt(1), uint(shift)))
}

func add(a netip.Addr, n *big.Int) netip.Addr {
	raw := a.AsSlice()
	v := new(big.Int).SetBytes(raw)
	v.Add(v, n)
	out := make([]byte, len(raw))
	v.FillBytes(out)
	r, _ := netip.AddrFromSlice(out)
	return r
}
