// Package segment holds the rules about overlay segments that every host
// must apply identically: what a segment name may be and how slices are
// ordered. The config, the announcement decoder, the certificate format
// and the CNI writer all check names, and a host that accepted a name
// another refuses would split the cluster's view; so the rule lives here,
// once, in a leaf package any of them can import.
package segment

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// NamePattern is short and conservative so a name can be embedded in
// kernel object names (15-byte limits), file names and log fields without
// quoting.
const NamePattern = `^[a-z0-9][a-z0-9-]{0,14}$`

var nameRE = regexp.MustCompile(NamePattern)

// ValidName reports whether s may name a segment.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// CheckName is ValidName with an error naming the rule, for decoders.
func CheckName(s string) error {
	if !ValidName(s) {
		return fmt.Errorf("segment name %q must match %s", s, NamePattern)
	}
	return nil
}

// NameFix is how to correct an invalid name, for operator-facing errors.
const NameFix = "use 1 to 15 characters of a-z, 0-9 and '-', starting with a letter or digit"

// Slice is a host's share of one segment.
type Slice struct {
	Segment string
	Prefix  netip.Prefix
	// ClaimedAt is the serf Lamport time at which the host claimed a slice
	// it was not configured with; 0 for a configured subnet. Conflicting
	// claims go to the earlier claim, then the lower name. Certificates
	// pin slices without it.
	ClaimedAt uint64
}

func (s Slice) String() string { return s.Segment + "=" + s.Prefix.String() }

// Compare orders slices by segment name, then address, then length: the
// canonical order of slices in announcements and certificates, which
// signatures cover, so every host must sort the same way.
func Compare(a, b Slice) int {
	if c := strings.Compare(a.Segment, b.Segment); c != 0 {
		return c
	}
	if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
		return c
	}
	return a.Prefix.Bits() - b.Prefix.Bits()
}

// Contains reports whether inner lies entirely within outer, of the same
// family.
func Contains(outer, inner netip.Prefix) bool {
	return outer.Addr().Is4() == inner.Addr().Is4() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

// LastAddr is the highest address inside p.
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
