package mesh

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// conflict must name the slice a single sorted index names, the last one
// starting at or before the prefix's end, however the slices arrived:
// the rejection reason depends on it.
func TestOwnershipNamesTheSameOwnerAsOneSortedIndex(t *testing.T) {
	for _, ordered := range []bool{false, true} {
		rng := rand.New(rand.NewPCG(3, 4))
		var o ownership
		var all []owned
		for i := range 4000 {
			var p netip.Prefix
			if ordered && rng.IntN(8) != 0 {
				p = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
			} else {
				p = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rng.IntN(20)), byte(rng.IntN(256)), 0}), 16+rng.IntN(9)).Masked()
			}
			var want owned
			wantOK := false
			end := lastAddr(p)
			for _, s := range all {
				if s.prefix.Addr().Compare(end) <= 0 && (!wantOK || s.prefix.Addr().Compare(want.prefix.Addr()) > 0) {
					want, wantOK = s, true
				}
			}
			wantOK = wantOK && want.prefix.Overlaps(p)
			if !wantOK {
				want = owned{}
			}
			got, ok := o.conflict(p)
			if ok != wantOK || got != want {
				t.Fatalf("ordered=%v, slice %d: conflict(%s) = %v %v, want %v %v", ordered, i, p, got, ok, want, wantOK)
			}
			if !ok {
				s := owned{p, string(rune('a' + i%26))}
				o.add(s.prefix, s.owner)
				all = append(all, s)
			}
		}
	}
}
