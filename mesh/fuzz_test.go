package mesh

import (
	"net/netip"
	"testing"
)

// FuzzDecodeTags feeds arbitrary gossip tags through the decoder and the
// desired-state computation: nothing a remote host announces may crash
// the daemon or get a slice outside the segment accepted.
func FuzzDecodeTags(f *testing.F) {
	good, _ := Announcement{PublicKey: testKey(f, 2), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"),
		Slices: []Slice{sl("blue", "10.42.2.0/24")}}.Tags()
	f.Add(good["v"], good["k"], good["e"], good["s"])
	f.Add("1", good["k"], "[2001:db8::1]:1", "blue=10.42.0.0/16,six=fd42::/48")
	f.Add("1", "", "", "")
	f.Add("1", good["k"], "192.0.2.2:51820", "blue=10.42.2.0/24,blue=10.42.2.0/25")
	f.Add("1", good["k"], "[::ffff:192.0.2.1]:9", "=,=,==")
	f.Fuzz(func(t *testing.T, v, k, e, s string) {
		tags := map[string]string{"v": v, "k": k, "e": e, "s": s}
		ann, err := DecodeTags(tags)
		if err == nil {
			if !ann.Endpoint.IsValid() || ann.Endpoint.Port() == 0 {
				t.Fatalf("accepted endpoint %v", ann.Endpoint)
			}
			for _, sl := range ann.Slices {
				if sl.Prefix != sl.Prefix.Masked() {
					t.Fatalf("accepted non-canonical slice %v", sl)
				}
			}
		}
		local := localH1(t)
		st := Compute(local, []Member{{Name: "x", Status: StatusAlive, Tags: tags}}, nil)
		for _, p := range st.Peers {
			for _, a := range p.AllowedIPs {
				inside := false
				for _, seg := range local.Segments {
					inside = inside || contains(seg.CIDR, a)
					if a.Overlaps(seg.Subnet) {
						t.Fatalf("peer got our own slice: %v", a)
					}
				}
				if !inside {
					t.Fatalf("peer got %v outside every segment", a)
				}
			}
		}
	})
}
