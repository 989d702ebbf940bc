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
	// Present when the cluster has several sites: the member's site, its
	// role flags, its mesh address, and for gateways in the WAN pool the
	// site's blocks, the endpoint peers saw it from behind NAT, and the
	// sites it reaches through a transit site.
	tagSite     = "t"
	tagRole     = "r"
	tagMesh     = "m"
	tagBlocks   = "b"
	tagObserved = "o"
	tagRelays   = "x"

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
	// Endpoint is where peers send WireGuard packets; invalid for a
	// gateway behind NAT (Role.NAT), which peers learn from its
	// handshakes instead.
	Endpoint netip.AddrPort
	Slices   []Slice
	// Site is the member's site; "" means DefaultSite.
	Site string
	Role Role
	// MeshAddr is the member's own address inside the overlay (in its
	// first slice, or its site's first block for a gateway), which gossip
	// and probes reach it at through the tunnel; invalid on single-site
	// clusters.
	MeshAddr netip.Addr
	// Blocks are the site's blocks, one per segment, announced by its
	// gateways in the WAN pool.
	Blocks []Slice
	// Observed is the endpoint public gateways see a NATed gateway's
	// WireGuard packets come from, which other NATed gateways try for a
	// direct path.
	Observed netip.AddrPort
	// Relays names the sites this gateway reaches through a transit site
	// because no direct path works.
	Relays []string
	// Set when the cluster has a CA.
	Cert      []byte
	Counter   uint64
	Signature []byte
}

// DefaultSite is the site of every host that names none: a cluster
// without [site] is one site, as meshd has always been.
const DefaultSite = "default"

// Role is what a member does besides being a host of its site.
type Role struct {
	// Gateway carries traffic between its site and other sites.
	Gateway bool
	// Draining is a gateway that found it cannot forward (IP forwarding
	// off): it keeps its tunnels, but others stop sending it transit.
	Draining bool
	// NAT is a gateway without an inbound endpoint: peers wait for its
	// handshakes and it keeps the mappings open with keepalives.
	NAT bool
	// Symmetric is a NATed gateway whose NAT gives every destination
	// another mapping (the public gateways saw it from different ports):
	// no hole can be punched to it, so a pair with another NATed gateway
	// is relayed at once.
	Symmetric bool
}

const (
	roleGateway   = 'g'
	roleDraining  = 'd'
	roleNAT       = 'n'
	roleSymmetric = 's'
)

func (r Role) encode() string {
	var b []byte
	if r.Gateway {
		b = append(b, roleGateway)
	}
	if r.Draining {
		b = append(b, roleDraining)
	}
	if r.NAT {
		b = append(b, roleNAT)
	}
	if r.Symmetric {
		b = append(b, roleSymmetric)
	}
	return string(b)
}

func decodeRole(s string) (Role, error) {
	var r Role
	if len(s) > 4 {
		return r, fmt.Errorf("role %q is not one of the known flags", s)
	}
	for _, c := range []byte(s) {
		switch c {
		case roleGateway:
			r.Gateway = true
		case roleDraining:
			r.Draining = true
		case roleNAT:
			r.NAT = true
		case roleSymmetric:
			r.Symmetric = true
		default:
			return r, fmt.Errorf("role %q has an unknown flag %q", s, c)
		}
	}
	if (r.Draining || r.NAT) && !r.Gateway {
		return r, fmt.Errorf("role %q: only a gateway drains or sits behind NAT", s)
	}
	if r.Symmetric && !r.NAT {
		return r, fmt.Errorf("role %q: only a gateway behind NAT has a symmetric one", s)
	}
	return r, nil
}

// SiteName is the member's site, DefaultSite when it names none.
func (a *Announcement) SiteName() string {
	if a.Site == "" {
		return DefaultSite
	}
	return a.Site
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
		tagVersion: announceVersion,
		tagKey:     a.PublicKey.String(),
		tagSlices:  strings.Join(parts, ","),
	}
	if a.Endpoint.IsValid() {
		tags[tagEndpoint] = a.Endpoint.String()
	}
	a.addSiteTags(tags)
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
	if err := decodeSiteTags(&a, tags); err != nil {
		return a, err
	}
	// Only a gateway behind NAT announces no endpoint.
	if e, ok := tags[tagEndpoint]; ok || !a.Role.NAT {
		if a.Endpoint, err = decodeEndpoint("endpoint", e); err != nil {
			return a, err
		}
	}
	a.Slices, err = decodeSlices(tags[tagSlices])
	if err != nil {
		return a, err
	}
	return a, decodeSignedFields(&a, tags)
}

// decodeEndpoint accepts a unicast address and port. Loopback, link-local
// and broadcast endpoints would aim every host's handshakes at itself or a
// neighbour, never at the member.
func decodeEndpoint(what, s string) (netip.AddrPort, error) {
	ep, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s: %w", what, err)
	}
	if ep.Port() == 0 || !ep.Addr().Unmap().IsGlobalUnicast() || ep.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%s %s is not a usable unicast address and port", what, ep)
	}
	return netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port()), nil
}

// maxRelays bounds the relay list a gateway can make others parse.
const maxRelays = 32

func (a Announcement) addSiteTags(tags map[string]string) {
	if a.Site != "" {
		tags[tagSite] = a.Site
	}
	if r := a.Role.encode(); r != "" {
		tags[tagRole] = r
	}
	if a.MeshAddr.IsValid() {
		tags[tagMesh] = a.MeshAddr.String()
	}
	if len(a.Blocks) > 0 {
		parts := make([]string, len(a.Blocks))
		for i, b := range a.Blocks {
			parts[i] = b.String()
		}
		tags[tagBlocks] = strings.Join(parts, ",")
	}
	if a.Observed.IsValid() {
		tags[tagObserved] = a.Observed.String()
	}
	if len(a.Relays) > 0 {
		tags[tagRelays] = strings.Join(a.Relays, ",")
	}
}

// decodeSiteTags reads the multi-site fields; all are optional.
func decodeSiteTags(a *Announcement, tags map[string]string) error {
	var err error
	if s, ok := tags[tagSite]; ok {
		if err := segment.CheckName(s); err != nil {
			return fmt.Errorf("site: %w", err)
		}
		a.Site = s
	}
	if a.Role, err = decodeRole(tags[tagRole]); err != nil {
		return err
	}
	if m, ok := tags[tagMesh]; ok {
		addr, err := netip.ParseAddr(m)
		if err != nil || !addr.IsGlobalUnicast() || addr.Zone() != "" || addr.Is4In6() {
			return fmt.Errorf("mesh address %q is not a unicast address", m)
		}
		a.MeshAddr = addr
	}
	if b, ok := tags[tagBlocks]; ok {
		if a.Blocks, err = decodeSlices(b); err != nil {
			return fmt.Errorf("blocks: %w", err)
		}
		for i, blk := range a.Blocks {
			if blk.ClaimedAt != 0 || (i > 0 && a.Blocks[i-1].Segment == blk.Segment) {
				return fmt.Errorf("blocks: %s is not one plain block per segment", blk)
			}
		}
		if !a.Role.Gateway {
			return errors.New("blocks announced by a member that is not a gateway")
		}
	}
	if o, ok := tags[tagObserved]; ok {
		if a.Observed, err = decodeEndpoint("observed endpoint", o); err != nil {
			return err
		}
	}
	if x, ok := tags[tagRelays]; ok && x != "" {
		a.Relays = strings.Split(x, ",")
		if len(a.Relays) > maxRelays {
			return fmt.Errorf("%d relayed sites, at most %d", len(a.Relays), maxRelays)
		}
		for _, r := range a.Relays {
			if err := segment.CheckName(r); err != nil {
				return fmt.Errorf("relayed site: %w", err)
			}
		}
	}
	return nil
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
