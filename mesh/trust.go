package mesh

import (
	"errors"
	"fmt"
	"slices"

	"github.com/meshd/meshd/identity"
)

// verifyIdentity enforces the cluster CA: the announcement must carry a
// certificate from the CA for this very member name, valid now, signed
// with the certificate's key, not older than one already accepted, and
// claiming only slices the certificate allows. Without a CA every member
// holding the gossip key is trusted and this is a no-op.
// A verified announcement raises counters[name], the replay high-water
// mark, even when it is refused later for its claims.
//
// With local.AcceptUnsigned, an announcement with neither certificate nor
// signature passes: it comes from a host not yet converted to the CA.
// Anything signed is still verified in full, and a host seen signing
// cannot fall back to unsigned: otherwise anyone holding the gossip key
// could speak for a converted host while it is away.
func verifyIdentity(local Local, c candidate, counters map[string]uint64) error {
	if local.CA == nil {
		return nil
	}
	ann := c.ann
	if unsigned(ann) && local.AcceptUnsigned {
		if counters[c.member.Name] > 0 {
			return errors.New("unsigned announcement from a host that has signed its announcements before")
		}
		return nil
	}
	if len(ann.Cert) == 0 || len(ann.Signature) == 0 {
		return errors.New("unsigned announcement: this cluster requires a host certificate from its CA")
	}
	cert, err := identity.ParseCert(ann.Cert)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	if err := cert.Verify(local.CA, local.Now); err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	if cert.Name != c.member.Name {
		return fmt.Errorf("certificate is for %q, not %q", cert.Name, c.member.Name)
	}
	if !identity.VerifyPayload(cert.PublicKey, SignedPayload(c.member.Name, c.member.Tags), ann.Signature) {
		return errors.New("bad announcement signature")
	}
	if seen := counters[c.member.Name]; ann.Counter < seen {
		return fmt.Errorf("replayed announcement: counter %d is older than %d", ann.Counter, seen)
	}
	counters[c.member.Name] = ann.Counter
	for _, s := range ann.Slices {
		if err := cert.Allows(identity.Slice{Segment: s.Segment, Prefix: s.Prefix}); err != nil {
			return fmt.Errorf("slice %s: %w", s, err)
		}
	}
	// The site and the gateway role are the CA's to grant: a stolen key
	// of one site cannot speak for another, nor a plain host for a site.
	if ann.SiteName() != cert.SiteName() {
		return fmt.Errorf("certificate is for site %q, not %q", cert.SiteName(), ann.SiteName())
	}
	if ann.Role.Gateway && !cert.Gateway {
		return errors.New("it announces itself as a gateway, and its certificate does not allow that")
	}
	for _, b := range ann.Blocks {
		if err := cert.Allows(identity.Slice{Segment: b.Segment, Prefix: b.Prefix}); err != nil {
			return fmt.Errorf("block %s: %w", b, err)
		}
	}
	return nil
}

func unsigned(ann *Announcement) bool { return len(ann.Cert) == 0 && len(ann.Signature) == 0 }

// Unsigned names, sorted, the live members whose announcement carried no
// certificate and was accepted: under a CA in transitional mode, the
// hosts still to be converted before the cluster can turn strict.
// Without a CA it names every accepted member.
func (s *State) Unsigned() []string {
	var out []string
	for _, cache := range []map[string]*decodedTags{s.decoded, s.decodedRemote} {
		for name, d := range cache {
			if d.err == nil && unsigned(&d.ann) && !slices.ContainsFunc(s.Rejected, func(r Rejection) bool { return r.Member == name }) {
				out = append(out, name)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
