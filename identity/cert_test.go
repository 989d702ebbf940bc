package identity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func testCA(t testing.TB) *CA {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Public: pub, key: key}
}

func hostKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func sl(seg, cidr string) Slice { return Slice{Segment: seg, Prefix: netip.MustParsePrefix(cidr)} }

func template(key ed25519.PrivateKey) Cert {
	return Cert{Name: "h1", Segments: []string{"green", "blue"}, NotBefore: t0, NotAfter: t0.Add(365 * 24 * time.Hour),
		PublicKey: key.Public().(ed25519.PublicKey)}
}

func signed(t testing.TB, ca *CA, c Cert) *Cert {
	t.Helper()
	out, err := ca.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSignVerifyRoundTrip(t *testing.T) {
	ca := testCA(t)
	tmpl := template(hostKey(t))
	tmpl.Subnets = []Slice{sl("green", "10.43.1.0/24"), sl("blue", "10.42.1.0/24"), sl("blue", "fd42:1::/64")}
	tmpl.NotBefore = t0.Add(123 * time.Millisecond) // Sign truncates to seconds
	c := signed(t, ca, tmpl)
	if got := strings.Join(c.Segments, ","); got != "blue,green" {
		t.Errorf("segments not sorted: %s", got)
	}
	parsed, err := ParseCert(c.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if err := parsed.Verify(ca.Public, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(parsed.Marshal(), c.Marshal()) || parsed.Name != "h1" || !parsed.NotBefore.Equal(t0) ||
		len(parsed.Subnets) != 3 || parsed.Subnets[1] != sl("blue", "fd42:1::/64") {
		t.Errorf("round trip changed the certificate: %+v", parsed)
	}
}

func TestVerifyFailures(t *testing.T) {
	ca := testCA(t)
	c := signed(t, ca, template(hostKey(t)))
	cases := []struct {
		name string
		ca   ed25519.PublicKey
		now  time.Time
		want error
	}{
		{"valid at start", ca.Public, t0, nil},
		{"valid at end", ca.Public, c.NotAfter, nil},
		{"another CA", testCA(t).Public, t0.Add(time.Hour), ErrBadSignature},
		{"not yet valid", ca.Public, t0.Add(-time.Second), ErrNotYetValid},
		{"expired", ca.Public, c.NotAfter.Add(time.Second), ErrExpired},
		{"another CA beats expiry", testCA(t).Public, c.NotAfter.Add(time.Hour), ErrBadSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Verify(tc.ca, tc.now)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Verify: %v, want %v", err, tc.want)
			}
			if err != nil && !strings.Contains(err.Error(), `"h1"`) {
				t.Errorf("error does not name the host: %v", err)
			}
		})
	}
	if err := c.Verify(ed25519.PublicKey{1, 2}, t0); err == nil {
		t.Error("short CA key accepted")
	}
}

func TestTamperingBreaksSignature(t *testing.T) {
	ca := testCA(t)
	tmpl := template(hostKey(t))
	tmpl.Subnets = []Slice{sl("blue", "10.42.1.0/24"), sl("green", "10.43.1.0/24")}
	orig := signed(t, ca, tmpl)
	cases := map[string]func(c *Cert){
		"name":       func(c *Cert) { c.Name = "h2" },
		"segments":   func(c *Cert) { c.Segments = []string{"blue", "red"}; c.Subnets[1].Segment = "red" },
		"drop pins":  func(c *Cert) { c.Subnets = nil },
		"subnet":     func(c *Cert) { c.Subnets[0].Prefix = netip.MustParsePrefix("10.42.0.0/16") },
		"not after":  func(c *Cert) { c.NotAfter = c.NotAfter.Add(time.Hour) },
		"not before": func(c *Cert) { c.NotBefore = c.NotBefore.Add(-time.Hour) },
		"public key": func(c *Cert) { c.PublicKey = hostKey(t).Public().(ed25519.PublicKey) },
		"signature":  func(c *Cert) { c.Signature[0] ^= 1 },
	}
	for name, tamper := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := ParseCert(orig.Marshal())
			if err != nil {
				t.Fatal(err)
			}
			tamper(c)
			if err := c.Verify(ca.Public, t0.Add(time.Hour)); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("tampered certificate: %v, want bad signature", err)
			}
		})
	}
}

func TestAllows(t *testing.T) {
	ca := testCA(t)
	open := signed(t, ca, template(hostKey(t)))
	tmpl := template(hostKey(t))
	tmpl.Subnets = []Slice{sl("blue", "10.42.1.0/24"), sl("green", "10.43.1.0/24"), sl("green", "fd43::/48")}
	pinned := signed(t, ca, tmpl)
	cases := []struct {
		name string
		c    *Cert
		s    Slice
		ok   bool
	}{
		{"listed segment", open, sl("blue", "10.42.9.0/24"), true},
		{"segment not listed", open, sl("red", "10.44.1.0/24"), false},
		{"pinned exact", pinned, sl("blue", "10.42.1.0/24"), true},
		{"inside pin", pinned, sl("blue", "10.42.1.128/25"), true},
		{"second pin of segment", pinned, sl("green", "fd43:0:0:1::/64"), true},
		{"wider than pin", pinned, sl("blue", "10.42.0.0/16"), false},
		{"outside pin", pinned, sl("blue", "10.42.2.0/24"), false},
		{"other segment's pin", pinned, sl("blue", "10.43.1.0/24"), false},
		{"unlisted with pins", pinned, sl("red", "10.42.1.0/24"), false},
		{"mapped address", pinned, sl("blue", "::ffff:10.42.1.0/120"), false},
		{"invalid prefix", open, Slice{Segment: "blue"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Allows(tc.s)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrNotAllowed)) {
				t.Fatalf("Allows(%v) = %v, want ok=%v", tc.s, err, tc.ok)
			}
		})
	}
}

func TestSignRefusesInvalid(t *testing.T) {
	ca := testCA(t)
	cases := map[string]func(c *Cert){
		"empty name":        func(c *Cert) { c.Name = "" },
		"long name":         func(c *Cert) { c.Name = strings.Repeat("h", MaxNameLen+1) },
		"space in name":     func(c *Cert) { c.Name = "h 1" },
		"bad segment":       func(c *Cert) { c.Segments = []string{"Blue"} },
		"duplicate segment": func(c *Cert) { c.Segments = []string{"blue", "blue"} },
		"too many segments": func(c *Cert) { c.Segments = strings.Split("a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q", ",") },
		"not after first":   func(c *Cert) { c.NotAfter = c.NotBefore },
		"before 1970":       func(c *Cert) { c.NotBefore = time.Unix(-10, 0) },
		"short key":         func(c *Cert) { c.PublicKey = c.PublicKey[:31] },
		"pin unlisted": func(c *Cert) {
			c.Subnets = []Slice{sl("blue", "10.42.1.0/24"), sl("green", "10.43.1.0/24"), sl("red", "10.44.0.0/24")}
		},
		"pin host bits":       func(c *Cert) { c.Subnets = []Slice{sl("blue", "10.42.1.1/24"), sl("green", "10.43.1.0/24")} },
		"pin mapped":          func(c *Cert) { c.Subnets = []Slice{sl("blue", "::ffff:10.42.1.0/120"), sl("green", "10.43.1.0/24")} },
		"segment without pin": func(c *Cert) { c.Subnets = []Slice{sl("blue", "10.42.1.0/24")} },
		"duplicate pin": func(c *Cert) {
			c.Subnets = []Slice{sl("blue", "10.42.1.0/24"), sl("blue", "10.42.1.0/24"), sl("green", "10.43.1.0/24")}
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			c := template(hostKey(t))
			mutate(&c)
			if got, err := ca.Sign(c); err == nil {
				t.Fatalf("signed %+v", got)
			}
		})
	}
	if _, err := (&CA{Public: ca.Public}).Sign(template(hostKey(t))); err == nil {
		t.Error("CA without private key signed")
	}
}

func TestMarshalIsSmall(t *testing.T) {
	c := signed(t, testCA(t), template(hostKey(t)))
	enc := c.Marshal()
	if len(enc) > 140 {
		t.Fatalf("certificate for h1 with 2 segments is %d bytes, want <= 140", len(enc))
	}
	t.Logf("typical certificate: %d bytes, %d as a tag", len(enc), len(EncodeTag(enc)))
	if (&Cert{Name: "h1"}).Marshal() != nil {
		t.Error("unsigned, invalid certificate marshalled")
	}
}

func TestParseCertRejectsTruncationAndTrailingBytes(t *testing.T) {
	tmpl := template(hostKey(t))
	tmpl.Subnets = []Slice{sl("blue", "10.42.1.0/24"), sl("green", "fd43::/48")}
	enc := signed(t, testCA(t), tmpl).Marshal()
	for n := range len(enc) {
		if _, err := ParseCert(enc[:n]); err == nil {
			t.Errorf("accepted a certificate truncated to %d of %d bytes", n, len(enc))
		}
	}
	for _, extra := range [][]byte{{0}, []byte("garbage")} {
		if _, err := ParseCert(append(bytes.Clone(enc), extra...)); err == nil || !strings.Contains(err.Error(), "trailing") {
			t.Errorf("trailing %q: %v", extra, err)
		}
	}
}

func TestParseCertRejectsMalformed(t *testing.T) {
	enc := signed(t, testCA(t), template(hostKey(t))).Marshal()
	// enc: [1][2]h1[2][4]blue[5]green[0][nb varint][life varint][key][sig]
	cases := map[string]func(b []byte) []byte{
		"version 2":  func(b []byte) []byte { b[0] = 2; return b },
		"empty name": func(b []byte) []byte { return append([]byte{1, 0}, b[4:]...) },
		"long name": func(b []byte) []byte {
			return append(append([]byte{1, 65}, bytes.Repeat([]byte("h"), 65)...), b[4:]...)
		},
		"unsorted": func(b []byte) []byte {
			return append(append([]byte{}, b[:5]...), append([]byte("\x05green\x04blue"), b[16:]...)...)
		},
		"bad segment":    func(b []byte) []byte { b[6] = 'B'; return b },
		"17 segments":    func(b []byte) []byte { b[4] = 17; return b },
		"pin bad index":  func(b []byte) []byte { return splice(b, 16, []byte{1, 5, 4, 24, 10, 42, 1}) },
		"pin bad family": func(b []byte) []byte { return splice(b, 16, []byte{1, 0, 5, 24, 10, 42, 1}) },
		"pin too long":   func(b []byte) []byte { return splice(b, 16, []byte{1, 0, 4, 33, 10, 42, 1, 0, 0}) },
		"pin host bits":  func(b []byte) []byte { return splice(b, 16, []byte{1, 0, 4, 23, 10, 42, 1}) },
		"overlong varint": func(b []byte) []byte {
			_, n := binary.Uvarint(b[17:])
			last := 17 + n - 1
			return splice(b, last, []byte{b[last] | 0x80, 0})
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := ParseCert(mutate(bytes.Clone(enc)))
			if err == nil {
				t.Fatalf("accepted %+v", c)
			}
			t.Log(err)
		})
	}
}

// splice replaces the byte at i with repl.
func splice(b []byte, i int, repl []byte) []byte {
	return append(append(append([]byte{}, b[:i]...), repl...), b[i+1:]...)
}
