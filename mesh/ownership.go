package mesh

import (
	"net/netip"
	"slices"
)

// ownership indexes accepted slices, sorted by first address. Accepted
// slices never overlap, so a new prefix can only collide with the last
// span starting at or before its own last address: finding a conflict is
// a binary search, which keeps Compute near-linear at thousands of hosts.
type ownership struct {
	spans []owned
}

type owned struct {
	prefix netip.Prefix
	owner  string
}

// conflict returns the accepted slice that p overlaps, if any.
func (o *ownership) conflict(p netip.Prefix) (owned, bool) {
	end := lastAddr(p)
	// i is the number of spans starting at or before end.
	i, _ := slices.BinarySearchFunc(o.spans, end, func(s owned, a netip.Addr) int {
		if s.prefix.Addr().Compare(a) <= 0 {
			return -1
		}
		return 1
	})
	if i == 0 {
		return owned{}, false
	}
	prev := o.spans[i-1]
	if prev.prefix.Overlaps(p) {
		return prev, true
	}
	return owned{}, false
}

// add records p; the caller has checked it conflicts with nothing.
func (o *ownership) add(p netip.Prefix, owner string) {
	i, _ := slices.BinarySearchFunc(o.spans, p.Addr(), func(s owned, a netip.Addr) int {
		return s.prefix.Addr().Compare(a)
	})
	o.spans = slices.Insert(o.spans, i, owned{p, owner})
}

// lastAddr is the highest address inside p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As16()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		return a.Unmap()
	}
	return a
}
