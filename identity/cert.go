// Package identity is meshd's certificate layer: a cluster CA (ed25519)
// signs one certificate per host naming the segments, and optionally the
// exact subnets, that host may claim. Hosts then sign their gossip
// announcement with the certificate's key, so the gossip key alone no longer
// lets anyone announce anything.
//
// Certificates travel inside serf tags, which are capped at 512 bytes per
// member, so the encoding is a compact binary format rather than X.509.
package identity

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/meshd/meshd/segment"
)

// Limits of the certificate format. They bound what a remote host can make
// every other host parse, and keep a certificate small enough for a tag.
const (
	certVersion = 1
	// certVersionSites adds the host's site and whether it may be a
	// gateway; certificates without either are still written as version
	// 1, so single-site clusters keep their encoding.
	certVersionSites = 2
	MaxNameLen       = 64
	MaxSegments      = 16
	MaxSubnets       = 16

	sigLen = ed25519.SignatureSize
	keyLen = ed25519.PublicKeySize
)

// maxUnix (9999-12-31T23:59:59Z) keeps NotBefore+lifetime from overflowing
// and every validity time printable as RFC 3339.
const maxUnix = 253402300799

// certDomain separates certificate signatures from every other use of an
// ed25519 key, so no signed message can be replayed as another kind.
const certDomain = "meshd-cert-v1\x00"

// Verification failures callers tell apart to explain why a host was refused.
var (
	ErrBadSignature = errors.New("not signed by this cluster's CA")
	ErrNotYetValid  = errors.New("not yet valid")
	ErrExpired      = errors.New("expired")
	ErrNotAllowed   = errors.New("slice not allowed by certificate")
)

// Slice is a host's share of one segment; a pin never carries a claim
// time.
type Slice = segment.Slice

// Cert binds a host name and its allowed segments to the host's signing key.
type Cert struct {
	Name      string
	Segments  []string
	Subnets   []Slice
	NotBefore time.Time
	NotAfter  time.Time
	PublicKey ed25519.PublicKey
	Signature []byte
	// Site is the only site the host may announce itself in ("" is the
	// default site); Gateway lets it act as its site's gateway.
	Site    string
	Gateway bool
}

// SiteName is the certified site, "default" when none is named.
func (c *Cert) SiteName() string {
	if c.Site == "" {
		return "default"
	}
	return c.Site
}

// flagGateway is bit 0 of a version 2 certificate's flags.
const flagGateway = 1

// Marshal returns the wire encoding: the signed body followed by the
// signature. It returns nil for a certificate that is unsigned or that Sign
// would refuse, since such a certificate has no valid encoding.
func (c *Cert) Marshal() []byte {
	body, err := c.body()
	if err != nil || len(c.Signature) != sigLen {
		return nil
	}
	return append(body, c.Signature...)
}

// body encodes every signed field:
//
//	version(1) name(len8 bytes) segments(n8 {len8 bytes})
//	subnets(n8 {segIndex8 family8 bits8 addr[ceil(bits/8)]})
//	notBefore(uvarint unix s) lifetime(uvarint s) publicKey(32)
//
// A pin names its segment by index, so a pin for an unlisted segment cannot
// even be expressed, and only the prefix's significant bytes are sent.
func (c *Cert) body() ([]byte, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 128)
	version := byte(certVersion)
	if c.Site != "" || c.Gateway {
		version = certVersionSites
	}
	b = append(b, version, byte(len(c.Name)))
	b = append(b, c.Name...)
	b = append(b, byte(len(c.Segments)))
	for _, s := range c.Segments {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	b = append(b, byte(len(c.Subnets)))
	for _, p := range c.Subnets {
		b = appendPin(b, byte(slices.Index(c.Segments, p.Segment)), p.Prefix)
	}
	nb := c.NotBefore.Unix()
	b = binary.AppendUvarint(b, uint64(nb))
	b = binary.AppendUvarint(b, uint64(c.NotAfter.Unix()-nb))
	b = append(b, c.PublicKey...)
	if version == certVersionSites {
		var flags byte
		if c.Gateway {
			flags |= flagGateway
		}
		b = append(b, byte(len(c.Site)))
		b = append(b, c.Site...)
		b = append(b, flags)
	}
	return b, nil
}

func appendPin(b []byte, seg byte, p netip.Prefix) []byte {
	family := byte(6)
	if p.Addr().Is4() {
		family = 4
	}
	addr := p.Addr().AsSlice()
	return append(append(b, seg, family, byte(p.Bits())), addr[:(p.Bits()+7)/8]...)
}

// check enforces everything the encoding and the verifiers rely on, in
// canonical form (sorted, unique, second precision), so one certificate has
// exactly one encoding.
func (c *Cert) check() error {
	if err := ValidName(c.Name); err != nil {
		return err
	}
	if len(c.Segments) > MaxSegments {
		return fmt.Errorf("%d segments, at most %d allowed", len(c.Segments), MaxSegments)
	}
	for i, s := range c.Segments {
		if err := ValidSegment(s); err != nil {
			return err
		}
		if i > 0 && c.Segments[i-1] >= s {
			return fmt.Errorf("segments must be sorted and unique, got %q after %q", s, c.Segments[i-1])
		}
	}
	if err := c.checkSubnets(); err != nil {
		return err
	}
	if c.Site != "" {
		if err := segment.CheckName(c.Site); err != nil {
			return fmt.Errorf("site: %w", err)
		}
	}
	if err := checkValidity(c.NotBefore, c.NotAfter); err != nil {
		return err
	}
	if len(c.PublicKey) != keyLen {
		return fmt.Errorf("public key is %d bytes, want %d", len(c.PublicKey), keyLen)
	}
	return nil
}

func (c *Cert) checkSubnets() error {
	if len(c.Subnets) > MaxSubnets {
		return fmt.Errorf("%d subnets, at most %d allowed", len(c.Subnets), MaxSubnets)
	}
	pinned := map[string]bool{}
	for i, p := range c.Subnets {
		if !slices.Contains(c.Segments, p.Segment) {
			return fmt.Errorf("subnet %s pins segment %q, which the certificate does not list", p, p.Segment)
		}
		if err := canonicalPrefix(p.Prefix); err != nil {
			return fmt.Errorf("subnet %s: %w", p, err)
		}
		if i > 0 && segment.Compare(c.Subnets[i-1], p) >= 0 {
			return fmt.Errorf("subnets must be sorted and unique, got %s after %s", p, c.Subnets[i-1])
		}
		pinned[p.Segment] = true
	}
	// Pinning is all or nothing (see Allows): a listed segment without a pin
	// could never be used, which is an operator mistake worth refusing.
	if len(c.Subnets) > 0 {
		for _, s := range c.Segments {
			if !pinned[s] {
				return fmt.Errorf("segment %q has no pinned subnet although others do", s)
			}
		}
	}
	return nil
}

func checkValidity(nb, na time.Time) error {
	if nb.Nanosecond() != 0 || na.Nanosecond() != 0 {
		return errors.New("validity times must have second precision")
	}
	if nb.Unix() < 0 || na.Unix() > maxUnix {
		return fmt.Errorf("validity must lie between 1970 and 9999, got %s to %s", nb.UTC().Format(time.RFC3339), na.UTC().Format(time.RFC3339))
	}
	if !na.After(nb) {
		return fmt.Errorf("not-after %s is not after not-before %s", na.UTC().Format(time.RFC3339), nb.UTC().Format(time.RFC3339))
	}
	return nil
}

func canonicalPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("not a valid prefix")
	case p.Addr().Is4In6():
		return errors.New("IPv4-mapped IPv6 prefixes are ambiguous; use the IPv4 form")
	case p != p.Masked():
		return errors.New("host bits are set")
	}
	return nil
}

// ValidName reports whether s can be a certificate's host name. The rules
// match node_name in the config (no whitespace or control characters, since
// names end up in logs) with a tighter length to keep certificates small.
func ValidName(s string) error {
	switch {
	case s == "":
		return errors.New("name is empty")
	case len(s) > MaxNameLen:
		return fmt.Errorf("name %q is %d bytes, at most %d allowed", s, len(s), MaxNameLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("name %q is not valid UTF-8", s)
	case strings.ContainsFunc(s, BadNameRune):
		return fmt.Errorf("name %q contains whitespace, a control character or an invisible formatting character", s)
	}
	return nil
}

// BadNameRune reports the characters no host name may hold: whitespace
// and control characters break log lines and status output, and
// formatting characters (zero-width spaces, bidirectional overrides such
// as U+202E) make two different names look the same to an operator.
func BadNameRune(r rune) bool {
	return unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r)
}

// ValidSegment reports whether s is a segment name, with the same rule the
// config and the announcement decoder use.
func ValidSegment(s string) error { return segment.CheckName(s) }

// ParseSlice parses "segment=cidr" in canonical form.
func ParseSlice(s string) (Slice, error) {
	name, cidr, ok := strings.Cut(s, "=")
	if !ok {
		return Slice{}, fmt.Errorf("%q is not segment=cidr", s)
	}
	if err := ValidSegment(name); err != nil {
		return Slice{}, err
	}
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Slice{}, fmt.Errorf("%q: %w", s, err)
	}
	if err := canonicalPrefix(p); err != nil {
		return Slice{}, fmt.Errorf("%q: %w (did you mean %s?)", s, err, p.Masked())
	}
	return Slice{Segment: name, Prefix: p}, nil
}

// Verify checks the CA's signature first, so validity details are only ever
// reported for certificates the CA really issued.
func (c *Cert) Verify(ca ed25519.PublicKey, now time.Time) error {
	if len(ca) != keyLen {
		return fmt.Errorf("CA public key is %d bytes, want %d", len(ca), keyLen)
	}
	body, err := c.body()
	if err != nil {
		return fmt.Errorf("certificate %q is malformed: %w", c.Name, err)
	}
	if len(c.Signature) != sigLen || !ed25519.Verify(ca, append([]byte(certDomain), body...), c.Signature) {
		return fmt.Errorf("certificate %q: %w", c.Name, ErrBadSignature)
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("certificate %q: %w until %s", c.Name, ErrNotYetValid, c.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("certificate %q: %w at %s", c.Name, ErrExpired, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Allows reports whether the certificate lets its host claim s. It does not
// verify the signature; callers Verify first.
func (c *Cert) Allows(s Slice) error {
	if !slices.Contains(c.Segments, s.Segment) {
		return fmt.Errorf("%w: certificate %q does not list segment %q", ErrNotAllowed, c.Name, s.Segment)
	}
	if !s.Prefix.IsValid() {
		return fmt.Errorf("%w: %q is not a valid prefix", ErrNotAllowed, s.Prefix)
	}
	if len(c.Subnets) == 0 {
		return nil
	}
	var pins []string
	for _, p := range c.Subnets {
		if p.Segment != s.Segment {
			continue
		}
		if p.Prefix.Bits() <= s.Prefix.Bits() && p.Prefix.Contains(s.Prefix.Addr()) {
			return nil
		}
		pins = append(pins, p.Prefix.String())
	}
	return fmt.Errorf("%w: certificate %q pins segment %q to %s, and %s is outside", ErrNotAllowed, c.Name, s.Segment, strings.Join(pins, ","), s.Prefix)
}

// ParseCert decodes a certificate received from the network. It checks
// structure only; callers must Verify before trusting any field.
func ParseCert(b []byte) (*Cert, error) {
	r := reader{b: b}
	v := r.byte()
	if v != certVersion && v != certVersionSites && r.err == nil {
		return nil, fmt.Errorf("certificate version %d is not supported (want %d or %d)", v, certVersion, certVersionSites)
	}
	c := &Cert{Name: r.string(MaxNameLen)}
	c.Segments = make([]string, r.count(MaxSegments))
	for i := range c.Segments {
		c.Segments[i] = r.string(15)
	}
	c.Subnets = make([]Slice, r.count(MaxSubnets))
	for i := range c.Subnets {
		c.Subnets[i] = r.pin(c.Segments)
	}
	if len(c.Subnets) == 0 {
		c.Subnets = nil
	}
	nb, life := r.uvarint(), r.uvarint()
	c.PublicKey = ed25519.PublicKey(r.bytes(keyLen))
	if v == certVersionSites {
		c.Site = r.string(15)
		flags := r.byte()
		if flags&^flagGateway != 0 {
			r.fail(fmt.Errorf("unknown flags %#x", flags))
		}
		c.Gateway = flags&flagGateway != 0
	}
	c.Signature = r.bytes(sigLen)
	if r.err != nil {
		return nil, fmt.Errorf("certificate: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("certificate: %d trailing bytes", len(r.b))
	}
	if nb > maxUnix || life > maxUnix {
		return nil, errors.New("certificate: validity out of range")
	}
	c.NotBefore = time.Unix(int64(nb), 0).UTC()
	c.NotAfter = time.Unix(int64(nb+life), 0).UTC()
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	// The signature covers the re-encoded fields, so anything the decoder
	// accepted loosely would fail verification anyway; refusing it here gives
	// a clear error and makes the encoding canonical.
	if !bytes.Equal(c.Marshal(), b) {
		return nil, errors.New("certificate: not in canonical encoding")
	}
	return c, nil
}

var errTruncated = errors.New("truncated")

// reader records the first error and returns zero values afterwards, so
// the decoder reads straight through and checks once.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || n > len(r.b) {
		r.fail(errTruncated)
		return nil
	}
	out := bytes.Clone(r.b[:n])
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() byte {
	b := r.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) count(max int) int {
	n := int(r.byte())
	if n > max {
		r.fail(fmt.Errorf("count %d exceeds %d", n, max))
		return 0
	}
	return n
}

func (r *reader) string(max int) string {
	return string(r.bytes(r.count(max)))
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errors.New("bad varint"))
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) pin(segments []string) Slice {
	idx, family, bits := int(r.byte()), r.byte(), int(r.byte())
	if r.err != nil {
		return Slice{}
	}
	size := map[byte]int{4: 4, 6: 16}[family]
	switch {
	case idx >= len(segments):
		r.fail(fmt.Errorf("subnet names segment %d of %d", idx, len(segments)))
		return Slice{}
	case size == 0 || bits > size*8:
		r.fail(fmt.Errorf("subnet has family %d and %d bits", family, bits))
		return Slice{}
	}
	addr := make([]byte, size)
	copy(addr, r.bytes((bits+7)/8))
	ip, _ := netip.AddrFromSlice(addr)
	return Slice{Segment: segments[idx], Prefix: netip.PrefixFrom(ip, bits)}
}
