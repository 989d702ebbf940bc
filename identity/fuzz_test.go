package identity

import (
	"bytes"
	"testing"
	"time"
)

// FuzzParseCert feeds arbitrary bytes through the certificate decoder:
// certificates arrive in gossip tags, so nothing a remote host sends may
// crash the daemon, and whatever is accepted must re-encode to the same
// bytes (one certificate, one encoding).
func FuzzParseCert(f *testing.F) {
	ca := testCA(f)
	tmpl := template(hostKey(f))
	f.Add(signed(f, ca, tmpl).Marshal())
	tmpl.Subnets = []Slice{sl("blue", "10.42.1.0/24"), sl("green", "fd43::/48"), sl("green", "0.0.0.0/0")}
	f.Add(signed(f, ca, tmpl).Marshal())
	f.Add([]byte{})
	f.Add([]byte{1, 2, 'h', '1', 1, 4, 'b', 'l', 'u', 'e', 1, 0, 4, 33})
	caPub := ca.Public
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCert(b)
		if err != nil {
			return
		}
		if !bytes.Equal(c.Marshal(), b) {
			t.Fatalf("accepted non-canonical encoding %x", b)
		}
		_ = c.Verify(caPub, time.Now())
		for _, s := range append(c.Subnets, sl("blue", "10.42.1.0/24"), Slice{Segment: "blue"}) {
			_ = c.Allows(s)
		}
		for _, p := range c.Subnets {
			if p.Prefix != p.Prefix.Masked() || p.Prefix.Addr().Is4In6() || p.Prefix.Addr().Zone() != "" {
				t.Fatalf("accepted non-canonical pin %v", p)
			}
			if err := c.Allows(p); err != nil {
				t.Fatalf("certificate does not allow its own pin %v: %v", p, err)
			}
		}
		if !c.NotAfter.After(c.NotBefore) {
			t.Fatalf("accepted validity %v..%v", c.NotBefore, c.NotAfter)
		}
	})
}
