package identity

import (
	"bytes"
	"crypto/ed25519"
	"strings"
	"testing"
)

func TestSignVerifyPayload(t *testing.T) {
	key, other := hostKey(t), hostKey(t)
	pub := key.Public().(ed25519.PublicKey)
	payload := []byte("v=1,k=abc,e=192.0.2.1:51820,s=blue=10.42.1.0/24")
	sig := SignPayload(key, payload)
	cases := []struct {
		name    string
		pub     ed25519.PublicKey
		payload []byte
		sig     []byte
		ok      bool
	}{
		{"good", pub, payload, sig, true},
		{"other payload", pub, []byte("v=1,k=abc,e=192.0.2.1:51820,s=blue=10.42.0.0/16"), sig, false},
		{"other key", other.Public().(ed25519.PublicKey), payload, sig, false},
		{"plain ed25519 signature", pub, payload, ed25519.Sign(key, payload), false},
		{"short signature", pub, payload, sig[:63], false},
		{"short public key", pub[:31], payload, sig, false},
		{"nil everything", nil, nil, nil, false},
	}
	for _, tc := range cases {
		if got := VerifyPayload(tc.pub, tc.payload, tc.sig); got != tc.ok {
			t.Errorf("%s: VerifyPayload = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

// A certificate signature must not double as an announcement signature
// even when the same bytes are signed.
func TestCertAndPayloadDomainsDiffer(t *testing.T) {
	ca := testCA(t)
	c := signed(t, ca, template(hostKey(t)))
	body, _ := c.body()
	if VerifyPayload(ca.Public, body, c.Signature) {
		t.Fatal("certificate signature verified as an announcement")
	}
}

func TestTagEncoding(t *testing.T) {
	b := []byte{0xfb, 0xff, 0x01, 0x02}
	s := EncodeTag(b)
	if strings.ContainsAny(s, "=\n") {
		t.Errorf("EncodeTag %q is padded", s)
	}
	got, err := DecodeTag(s)
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("DecodeTag(%q) = %x, %v", s, got, err)
	}
	max := EncodeTag(make([]byte, MaxTagDecoded))
	if _, err := DecodeTag(max); err != nil {
		t.Errorf("largest tag refused: %v", err)
	}
	for _, bad := range []string{s + "==", s[:2] + "\n" + s[2:], "+/9", "!!!!", max + "AAAA"} {
		if got, err := DecodeTag(bad); err == nil {
			t.Errorf("DecodeTag(%q) accepted: %x", bad, got)
		}
	}
}
