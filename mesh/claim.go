package mesh

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
)

// maxScan bounds the search for a free slice; a /48 split into /64s has
// 65,536 slices, far more hosts than a serf cluster holds.
const maxScan = 1 << 20

// ChooseSlice picks the slice of segment cidr (prefix length bits) that a
// host without a configured subnet claims: the first one not overlapping
// taken, scanning from a position derived from the host's name. Hosts thus
// spread over the segment and rarely collide, and a host that re-claims
// after losing a conflict moves on deterministically.
func ChooseSlice(cidr netip.Prefix, bits int, name string, taken []netip.Prefix) (netip.Prefix, error) {
	width := cidr.Addr().BitLen()
	if bits < cidr.Bits() || bits > width {
		return netip.Prefix{}, fmt.Errorf("slice length /%d does not fit segment %s", bits, cidr)
	}
	count := uint64(1) << min(bits-cidr.Bits(), 63)
	h := fnv.New64a()
	h.Write([]byte(name))
	start := h.Sum64() % count
	for i := uint64(0); i < min(count, maxScan); i++ {
		cand := nthSlice(cidr, bits, (start+i)%count)
		if !overlapsAny(cand, taken) {
			return cand, nil
		}
	}
	return netip.Prefix{}, errors.New("no free slice left in segment " + cidr.String())
}

// nthSlice returns slice number n of length bits inside cidr.
func nthSlice(cidr netip.Prefix, bits int, n uint64) netip.Prefix {
	b := cidr.Addr().As16()
	shift := cidr.Addr().BitLen() - bits
	offset := 16 - cidr.Addr().BitLen()/8 // IPv4 lives in the last 4 bytes
	// Add n << shift to the address, byte by byte from the right.
	carry := uint64(0)
	for i := 15; i >= offset; i-- {
		bitPos := (15 - i) * 8
		var add uint64
		if bitPos >= shift && bitPos-shift < 64 {
			add = (n >> uint(bitPos-shift)) & 0xff
		} else if bitPos < shift && shift-bitPos < 8 {
			add = (n << uint(shift-bitPos)) & 0xff
		}
		sum := uint64(b[i]) + add + carry
		b[i] = byte(sum)
		carry = sum >> 8
	}
	addr := netip.AddrFrom16(b)
	if cidr.Addr().Is4() {
		addr = addr.Unmap()
	}
	return netip.PrefixFrom(addr, bits)
}

func overlapsAny(p netip.Prefix, set []netip.Prefix) bool {
	for _, q := range set {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}
