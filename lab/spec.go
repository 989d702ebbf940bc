package lab

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"regexp"
	"strconv"
)

// Spec describes a lab. The zero value of every field has a usable default
// except Hosts and Segments, which default to two hosts and no segments.
type Spec struct {
	// Prefix names everything the lab creates; empty picks DefaultPrefix().
	// Labs with different prefixes never collide.
	Prefix string
	// Hosts is the number of hosts, 1..99 (default 2).
	Hosts int
	// IPv6Underlay gives hosts 2001:db8::i/64 instead of 192.0.2.i/24.
	IPv6Underlay bool
	// UnderlayMTU, when non-zero, is set on every underlay link.
	UnderlayMTU int
	// Segments get one pod namespace per host each.
	Segments []SegmentSpec
	// Dir holds per-host working directories; empty creates a temporary
	// directory that Close removes.
	Dir string
	// Mode is written as [wireguard] mode; empty means "auto".
	Mode string
	// Sites, when set, build a multi-site lab instead of one flat switch
	// (see site.go): hosts are numbered h1..hN across the sites in order,
	// Hosts must be 0 or their total, and the underlay is IPv4 only.
	Sites []SiteSpec
}

// SegmentSpec is an overlay segment: host i owns slice number i of CIDR,
// a prefix of length SliceBits.
type SegmentSpec struct {
	Name      string
	CIDR      string // e.g. "10.42.0.0/16" or "fd42::/48"
	SliceBits int    // e.g. 24 or 64
	// SiteBits is the prefix length of each site's block of CIDR in a
	// multi-site lab (site k owns block k-1, and its hosts own slices
	// 1, 2, ... of it); 0 means SliceBits-4. Flat labs ignore it.
	SiteBits int
}

// Slice is one host's share of a segment.
type Slice struct {
	Subnet  netip.Prefix // e.g. 10.42.3.0/24
	Gateway netip.Addr   // the host side of the pod link: .1 / ::1
	Pod     netip.Addr   // the pod's address: .10 / ::a
}

const (
	maxHosts  = 99
	ifnameMax = 15 // IFNAMSIZ-1: the kernel rejects longer interface names
	// sunPathMax is sizeof(sockaddr_un.sun_path) minus the NUL; a longer
	// control socket path would only fail later inside meshd, obscurely.
	sunPathMax = 107
)

// Pod offsets inside a slice. Hosts bits must leave room for podOffset and,
// for IPv4, a broadcast address above it.
const (
	gatewayOffset = 1
	podOffset     = 10
	minHostBits   = 4
)

// SegmentSlice computes host's slice of seg (host is 1-based) with its
// gateway and pod addresses.
func SegmentSlice(seg SegmentSpec, host int) (Slice, error) {
	cidr, err := parseSegmentCIDR(seg)
	if err != nil {
		return Slice{}, err
	}
	addrBits := cidr.Addr().BitLen()
	hostBits := addrBits - seg.SliceBits
	if seg.SliceBits <= cidr.Bits() || hostBits < minHostBits {
		return Slice{}, fmt.Errorf("segment %q: slice bits %d must be in (%d, %d]", seg.Name, seg.SliceBits, cidr.Bits(), addrBits-minHostBits)
	}
	// Slice 0 is skipped so that host i owns slice i, which keeps addresses
	// readable (10.42.1.0/24 belongs to h1).
	if host < 1 || !fitsBits(host, seg.SliceBits-cidr.Bits()) {
		return Slice{}, fmt.Errorf("segment %q: host %d has no slice in %s with /%d slices", seg.Name, host, cidr, seg.SliceBits)
	}
	base := addShifted(cidr.Addr(), int64(host), hostBits)
	return Slice{
		Subnet:  netip.PrefixFrom(base, seg.SliceBits),
		Gateway: addShifted(base, gatewayOffset, 0),
		Pod:     addShifted(base, podOffset, 0),
	}, nil
}

// parseSegmentCIDR parses seg.CIDR and rejects what no slice can be cut
// from.
func parseSegmentCIDR(seg SegmentSpec) (netip.Prefix, error) {
	cidr, err := netip.ParsePrefix(seg.CIDR)
	if err != nil {
		return cidr, fmt.Errorf("segment %q: %w", seg.Name, err)
	}
	if cidr.Masked() != cidr {
		return cidr, fmt.Errorf("segment %q: cidr %s has host bits set (did you mean %s?)", seg.Name, cidr, cidr.Masked())
	}
	if cidr.Addr().Is4In6() {
		return cidr, fmt.Errorf("segment %q: IPv4-mapped cidr %s is not supported", seg.Name, cidr)
	}
	return cidr, nil
}

// fitsBits reports whether n < 2^bits without overflowing for wide slices.
func fitsBits(n, bits int) bool {
	if bits >= 62 {
		return true
	}
	return int64(n) < int64(1)<<bits
}

// addShifted returns a + v<<shift; big.Int keeps IPv6 arithmetic simple.
func addShifted(a netip.Addr, v int64, shift int) netip.Addr {
	raw := a.AsSlice()
	n := new(big.Int).SetBytes(raw)
	n.Add(n, new(big.Int).Lsh(big.NewInt(v), uint(shift)))
	out := make([]byte, len(raw))
	n.FillBytes(out)
	r, _ := netip.AddrFromSlice(out)
	return r
}

// UnderlayAddr is host i's underlay address: 192.0.2.i or 2001:db8::i.
func UnderlayAddr(v6 bool, host int) netip.Addr {
	if v6 {
		b := netip.MustParseAddr("2001:db8::").As16()
		b[15] = byte(host)
		return netip.AddrFrom16(b)
	}
	return netip.AddrFrom4([4]byte{192, 0, 2, byte(host)})
}

func underlayPrefixLen(v6 bool) int {
	if v6 {
		return 64
	}
	return 24
}

var (
	prefixRE  = regexp.MustCompile(`^[a-z0-9]+$`)
	segmentRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_]*$`)
)

// validatePrefix guards CleanupStale as much as New: an empty or odd prefix
// would make "<prefix>-" match namespaces the lab does not own.
func validatePrefix(prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("lab prefix %q must be non-empty lowercase letters and digits", prefix)
	}
	return nil
}

// DefaultPrefix returns a short prefix unique enough that parallel runs on
// one machine do not collide: "md" and four base36 characters mixing the pid
// with randomness (a restarted pid alone would reuse a crashed run's names).
func DefaultPrefix() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	const space = 36 * 36 * 36 * 36
	n := (uint64(binary.LittleEndian.Uint32(b[:])) ^ uint64(os.Getpid())*2654435761) % space
	s := strconv.FormatUint(n+space, 36) // +space pads to 5 digits, the first always "1"
	return "md" + s[1:]
}

func wgInterfaceName(prefix string, host int) string {
	return prefix + "h" + strconv.Itoa(host)
}

// podLinkName is the host side of a pod's veth, truncated to fit IFNAMSIZ.
func podLinkName(segment string) string {
	n := "p-" + segment
	if len(n) > ifnameMax {
		n = n[:ifnameMax]
	}
	return n
}

// normalize fills defaults and rejects specs that would fail halfway
// through New (or worse, inside meshd).
func (s Spec) normalize() (Spec, error) {
	if s.Prefix == "" {
		s.Prefix = DefaultPrefix()
	}
	if err := validatePrefix(s.Prefix); err != nil {
		return s, err
	}
	if len(s.Sites) > 0 {
		if err := s.normalizeSites(); err != nil {
			return s, err
		}
	}
	if s.Hosts == 0 {
		s.Hosts = 2
	}
	if s.Hosts < 1 || s.Hosts > maxHosts {
		return s, fmt.Errorf("lab: %d hosts, want 1..%d", s.Hosts, maxHosts)
	}
	if n := wgInterfaceName(s.Prefix, s.Hosts); len(n) > ifnameMax {
		return s, fmt.Errorf("lab prefix %q too long: interface name %q exceeds %d bytes", s.Prefix, n, ifnameMax)
	}
	if s.UnderlayMTU != 0 && (s.UnderlayMTU < 1280 || s.UnderlayMTU > 65535) {
		return s, fmt.Errorf("lab: underlay MTU %d outside 1280..65535", s.UnderlayMTU)
	}
	if s.Mode == "" {
		s.Mode = "auto"
	}
	names := map[string]bool{}
	links := map[string]string{}
	for _, seg := range s.Segments {
		if !segmentRE.MatchString(seg.Name) {
			return s, fmt.Errorf("lab: segment name %q must be lowercase letters, digits and _", seg.Name)
		}
		if names[seg.Name] {
			return s, fmt.Errorf("lab: duplicate segment %q", seg.Name)
		}
		names[seg.Name] = true
		if other, ok := links[podLinkName(seg.Name)]; ok {
			return s, fmt.Errorf("lab: segments %q and %q both truncate to link %q", other, seg.Name, podLinkName(seg.Name))
		}
		links[podLinkName(seg.Name)] = seg.Name
		if err := s.checkSlices(seg); err != nil {
			return s, err
		}
	}
	return s, nil
}

// checkSlices makes sure the last host of the lab (of every site, in a
// multi-site lab) has a slice of seg.
func (s Spec) checkSlices(seg SegmentSpec) error {
	if len(s.Sites) == 0 {
		_, err := SegmentSlice(seg, s.Hosts)
		return err
	}
	for i, site := range s.Sites {
		if _, err := SiteSlice(seg, i+1, site.Hosts); err != nil {
			return fmt.Errorf("site %q: %w", site.Name, err)
		}
	}
	return nil
}
