// Package mesh turns serf membership into the desired state of the overlay.
// The announcement codec and Compute are pure (no OS calls) so every rule
// about what a remote host may claim is unit-testable; membership.go holds
// the serf side effects.
package mesh

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Serf tags carrying the announcement. Names are one letter because serf
// caps a member's encoded tags at 512 bytes (memberlist meta).
const (
	tagVersion  = "v"
	tagKey      = "k"
	tagEndpoint = "e"
	tagSlices   = "s"

	announceVersion = "1"
	// maxSlices bounds what one member can make every host process.
	maxSlices = 16
	// maxTagBytes leaves room under memberlist's 512-byte meta limit for
	// msgpack framing.
	maxTagBytes = 440
)

var segmentNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,14}$`)

// Slice is a host's share of one segment.
type Slice struct {
	Segment string
	Prefix  netip.Prefix
}

func (s Slice) String() string { return s.Segment + "=" + s.Prefix.String() }

// Announcement is what each host publishes about itself through serf.
type Announcement struct {
	PublicKey wgtypes.Key
	Endpoint  netip.AddrPort
	Slices    []Slice
}

// Tags encodes the announcement for serf.
func (a Announcement) Tags() (map[string]string, error) {
	parts := make([]string, len(a.Slices))
	for i, s := range a.Slices {
		parts[i] = s.String()
	}
	tags := map[string]string{
		tagVersion:  announceVersion,
		tagKey:      a.PublicKey.String(),
		tagEndpoint: a.Endpoint.String(),
		tagSlices:   strings.Join(parts, ","),
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
	if ep.Port() == 0 || !ep.Addr().IsValid() || ep.Addr().IsUnspecified() || ep.Addr().IsMulticast() {
		return a, fmt.Errorf("endpoint %s is not a usable unicast address and port", ep)
	}
	a.Endpoint = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	a.Slices, err = decodeSlices(tags[tagSlices])
	return a, err
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
		name, cidr, ok := strings.Cut(p, "=")
		if !ok || !segmentNameRE.MatchString(name) {
			return nil, fmt.Errorf("slice %q is not segment=cidr", p)
		}
		prefix, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, fmt.Errorf("slice %q: %w", p, err)
		}
		if prefix != prefix.Masked() {
			return nil, fmt.Errorf("slice %q has host bits set", p)
		}
		out = append(out, Slice{Segment: name, Prefix: prefix})
	}
	slices.SortFunc(out, compareSlice)
	return out, nil
}

func compareSlice(a, b Slice) int {
	if c := strings.Compare(a.Segment, b.Segment); c != 0 {
		return c
	}
	if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
		return c
	}
	return a.Prefix.Bits() - b.Prefix.Bits()
}
