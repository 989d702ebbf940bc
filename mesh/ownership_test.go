package mesh

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// The index must agree with a plain scan on every query.
func TestOwnershipMatchesLinearScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var o ownership
	var all []netip.Prefix
	for range 3000 {
		var p netip.Prefix
		if rng.IntN(4) == 0 {
			p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x42, 0, 0, 0, 0, byte(rng.IntN(256)), byte(rng.IntN(256))}), 56+rng.IntN(9)).Masked()
		} else {
			p = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rng.IntN(8)), byte(rng.IntN(256)), 0}), 14+rng.IntN(11)).Masked()
		}
		want := false
		for _, q := range all {
			want = want || q.Overlaps(p)
		}
		_, got := o.conflict(p)
		if got != want {
			t.Fatalf("conflict(%s) = %v, scan says %v", p, got, want)
		}
		if !got {
			o.add(p, "x")
			all = append(all, p)
		}
	}
}

func TestLastAddr(t *testing.T) {
	for in, want := range map[string]string{"10.42.1.0/24": "10.42.1.255", "10.0.0.0/8": "10.255.255.255", "fd42::/48": "fd42::ffff:ffff:ffff:ffff:ffff", "10.1.2.3/32": "10.1.2.3"} {
		if got := lastAddr(netip.MustParsePrefix(in)); got.String() != want {
			t.Errorf("lastAddr(%s) = %s, want %s", in, got, want)
		}
	}
}
