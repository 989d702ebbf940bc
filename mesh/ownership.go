package mesh

import (
	"net/netip"
	"slices"
)

// ownership indexes accepted slices, sorted by first address. Accepted
// slices never overlap, so a new prefix can only collide with the last
// span starting at or before its own last address: finding a conflict is
// a binary search, which keeps Compute near-linear at thousands of hosts.
//
// A slice that starts after every indexed one is appended. Any other goes
// to recent, a second sorted index merged into spans once it outgrows the
// square root of spans: inserting each into spans would move half of it
// every time, O(n²) for hosts whose slices do not follow their names.
type ownership struct {
	spans  []owned
	recent []owned
}

type owned struct {
	prefix netip.Prefix
	owner  string
}

// conflict returns the accepted slice that p overlaps, if any.
func (o *ownership) conflict(p netip.Prefix) (owned, bool) {
	end := lastAddr(p)
	last, ok := lastStartingBy(o.spans, end)
	if r, rok := lastStartingBy(o.recent, end); rok && (!ok || r.prefix.Addr().Compare(last.prefix.Addr()) > 0) {
		last, ok = r, true
	}
	if ok && last.prefix.Overlaps(p) {
		return last, true
	}
	return owned{}, false
}

// lastStartingBy returns the span of sorted spans with the highest first
// address at or before a.
func lastStartingBy(spans []owned, a netip.Addr) (owned, bool) {
	// Candidates whose slices come in address order ask about the end.
	if n := len(spans); n > 0 && spans[n-1].prefix.Addr().Compare(a) <= 0 {
		return spans[n-1], true
	}
	// i is the number of spans starting at or before a.
	i, _ := slices.BinarySearchFunc(spans, a, func(s owned, a netip.Addr) int {
		if s.prefix.Addr().Compare(a) <= 0 {
			return -1
		}
		return 1
	})
	if i == 0 {
		return owned{}, false
	}
	return spans[i-1], true
}

// add records p; the caller has checked it conflicts with nothing.
func (o *ownership) add(p netip.Prefix, owner string) {
	s := owned{p, owner}
	if n := len(o.spans); n == 0 || o.spans[n-1].prefix.Addr().Compare(p.Addr()) < 0 {
		o.spans = append(o.spans, s)
		return
	}
	i, _ := slices.BinarySearchFunc(o.recent, p.Addr(), func(s owned, a netip.Addr) int {
		return s.prefix.Addr().Compare(a)
	})
	o.recent = slices.Insert(o.recent, i, s)
	if len(o.recent)*len(o.recent) > len(o.spans) {
		o.merge()
	}
}

// merge moves recent into spans, from the back so nothing moves twice.
func (o *ownership) merge() {
	i, j := len(o.spans)-1, len(o.recent)-1
	o.spans = slices.Grow(o.spans, len(o.recent))[:len(o.spans)+len(o.recent)]
	for k := len(o.spans) - 1; j >= 0; k-- {
		if i >= 0 && o.spans[i].prefix.Addr().Compare(o.recent[j].prefix.Addr()) > 0 {
			o.spans[k] = o.spans[i]
			i--
		} else {
			o.spans[k] = o.recent[j]
			j--
		}
	}
	o.recent = o.recent[:0]
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
