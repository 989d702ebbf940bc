// Package mesh turns serf membership into the desired state of the overlay.
// The announcement codec and Compute are pure (no OS calls) so every rule
// about what a remote host may claim is unit-testable; membership.go holds
// the serf side effects.
package mesh

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/segment"
)

// Serf tags carrying the announcement. Names are one letter because serf
// caps a member's encoded tags at 512 bytes (memberlist meta).
const (
	tagVersion  = "v"
	tagKey      = "k"
	tagEndpoint = "e"
	tagSlices   = "s"
	// Present when the cluster has a CA: the host certificate, a
	// monotonic counter against replays, and the signature over all the
	// other tags and the member name.
	tagCert      = "c"
	tagCounter   = "n"
	tagSignature = "g"

	announceVersion = "1"
	// maxSlices bounds what one member can make every host process.
	maxSlices = 16
	// maxTagBytes leaves room under memberlist's 512-byte meta limit for
	// msgpack framing.
	maxTagBytes = 440
)

// Slice is a host's share of one segment.
type Slice = segment.Slice

func encodeSlice(s Slice) string {
	if s.ClaimedAt == 0 {
		return s.String()
	}
	return s.String() + "@" + strconv.FormatUint(s.ClaimedAt, 10)
}

// Announcement is what each host publishes about itself through serf.
type Announcement struct {
	PublicKey wgtypes.Key
	Endpoint  netip.AddrPort
	Slices    []Slice
	// Set when the cluster has a CA.
	Cert      []byte
	Counter   uint64
	Signature []byte
}

// Tags encodes the announcement for serf, unsigned.
func (a Announcement) Tags() (map[string]string, error) {
	return a.SignedTags("", nil)
}

// SignedTags encodes the announcement and, when sign is non-nil, adds the
// signature over SignedPayload(name, tags).
func (a Announcement) SignedTags(name string, sign func(payload []byte) []byte) (map[string]string, error) {
	parts := make([]string, len(a.Slices))
	for i, s := range a.Slices {
		parts[i] = encodeSlice(s)
	}
	tags := map[string]string{
		tagVersion:  announceVersion,
		tagKey:      a.PublicKey.String(),
		tagEndpoint: a.Endpoint.String(),
		tagSlices:   strings.Join(parts, ","),
	}
	if sign != nil {
		tags[tagCert] = base64.RawStdEncoding.EncodeToString(a.Cert)
		tags[tagCounter] = strconv.FormatUint(a.Counter, 10)
		tags[tagSignature] = base64.RawStdEncoding.EncodeToString(sign(SignedPayload(name, tags)))
	}
	size := 0
	for k, v := range tags {
		size += len(k) + len(v)
	}
	if size > maxTagBytes {
		return nil, fmt.Errorf("announcement is %d bytes, over serf's tag budget of %d: use fewer or shorter segment names", size, maxTagBytes)
	}
	return tags, nil
}

// DecodeTags parses and syntax-checks a member's announcement. Tags come
// from the network, so every field is checked; whether the claims are
// acceptable (inside a segment, not someone else's) is Compute's job.
func DecodeTags(tags map[string]string) (Announcement, error) {
	var a Announcement
	if v := tags[tagVersion]; v != announceVersion {
		return a, fmt.Errorf("announcement version %q is not supported (want %q)", v, announceVersion)
	}
	key, err := wgtypes.ParseKey(tags[tagKey])
	if err != nil {
		return a, fmt.Errorf("public key: %w", err)
	}
	if key == (wgtypes.Key{}) {
		return a, errors.New("public key is all zeros")
	}
	a.PublicKey = key
	ep, err := netip.ParseAddrPort(tags[tagEndpoint])
	if err != nil {
		return a, fmt.Errorf("endpoint: %w", err)
	}
	// Loopback, link-local and broadcast endpoints would aim every host's
	// handshakes at itself or a neighbour, never at the member.
	if ep.Port() == 0 || !ep.Addr().Unmap().IsGlobalUnicast() || ep.Addr().Zone() != "" {
		return a, fmt.Errorf("endpoint %s is not a usable unicast address and port", ep)
	}
	a.Endpoint = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	a.Slices, err = decodeSlices(tags[tagSlices])
	if err != nil {
		return a, err
	}
	return a, decodeSignedFields(&a, tags)
}

// decodeSignedFields reads the optional identity tags. Their presence is
// checked by Compute when the cluster requires signatures.
func decodeSignedFields(a *Announcement, tags map[string]string) error {
	var err error
	if c, ok := tags[tagCert]; ok {
		if a.Cert, err = decodeB64(c, 1024); err != nil {
			return fmt.Errorf("certificate: %w", err)
		}
	}
	if n, ok := tags[tagCounter]; ok {
		if a.Counter, err = strconv.ParseUint(n, 10, 64); err != nil {
			return fmt.Errorf("counter %q is not a number", n)
		}
	}
	if g, ok := tags[tagSignature]; ok {
		if a.Signature, err = decodeB64(g, 128); err != nil {
			return fmt.Errorf("signature: %w", err)
		}
	}
	return nil
}

func decodeB64(s string, max int) ([]byte, error) {
	if base64.RawStdEncoding.DecodedLen(len(s)) > max {
		return nil, fmt.Errorf("longer than %d bytes", max)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// SignedPayload is what a host signs: its member name (serf carries it
// outside the tags, and a signature must bind it) and every tag but the
// signature, in a canonical order.
func SignedPayload(name string, tags map[string]string) []byte {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		if k != tagSignature {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('\n')
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(tags[k])
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

func decodeSlices(s string) ([]Slice, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxSlices {
		return nil, fmt.Errorf("%d slices announced, at most %d allowed", len(parts), maxSlices)
	}
	out := make([]Slice, 0, len(parts))
	for _, p := range parts {
		name, rest, ok := strings.Cut(p, "=")
		if !ok || !segment.ValidName(name) {
			return nil, fmt.Errorf("slice %q is not segment=cidr", p)
		}
		cidr, at, claimed := strings.Cut(rest, "@")
		var claimedAt uint64
		if claimed {
			var err error
			if claimedAt, err = strconv.ParseUint(at, 10, 64); err != nil || claimedAt == 0 {
				return nil, fmt.Errorf("slice %q has a bad claim time", p)
			}
		}
		prefix, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, fmt.Errorf("slice %q: %w", p, err)
		}
		if prefix != prefix.Masked() {
			return nil, fmt.Errorf("slice %q has host bits set", p)
		}
		out = append(out, Slice{Segment: name, Prefix: prefix, ClaimedAt: claimedAt})
	}
	slices.SortFunc(out, segment.Compare)
	return out, nil
}
