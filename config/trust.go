package config

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/meshd/meshd/identity"
)

const (
	keyGossipKeyring = "cluster.gossip_keyring"

	sectionIdentity = "identity"
	keyCAFile       = "identity.ca_file"
	keyCertFile     = "identity.cert_file"
	keyKeyFile      = "identity.key_file"
	keyIdentityMode = "identity.mode"
)

// TrustMode is how a host with a CA treats announcements without a
// certificate.
type TrustMode string

const (
	// TrustStrict refuses them: every host must sign.
	TrustStrict TrustMode = "strict"
	// TrustTransitional accepts them, counted, while a running cluster
	// turns its CA on host by host; this host signs its own, and
	// announcements with a bad signature or certificate are refused as
	// in strict mode.
	TrustTransitional TrustMode = "transitional"
)

// Identity is the host's certificate and signing key, and the cluster CA
// every announcement is checked against. Zero when the cluster runs
// without a CA.
type Identity struct {
	CAFile, CertFile, KeyFile string
	CA                        ed25519.PublicKey
	Cert                      *identity.Cert
	Key                       ed25519.PrivateKey
	// Mode is TrustStrict or TrustTransitional; set only with a CA.
	Mode TrustMode
}

// Enabled reports whether announcements are signed and verified.
func (i Identity) Enabled() bool { return i.CA != nil }

// trust reads the gossip keyring location and the identity files. The
// host's own certificate is checked like any peer's would be, so a host
// that every other host would refuse fails at start, with the reason.
func (l *loader) trust(c *Config) *Error {
	keyring, e := l.str(keyGossipKeyring)
	if e != nil {
		return e
	}
	if keyring == "" {
		keyring = filepath.Join(c.DataDir, "gossip.keyring")
	} else if keyring, e = l.absPath(keyGossipKeyring); e != nil {
		return e
	}
	c.Cluster.GossipKeyring = keyring
	return l.identity(c)
}

func (l *loader) identity(c *Config) *Error {
	var paths [3]string
	set := 0
	for i, key := range []string{keyCAFile, keyCertFile, keyKeyFile} {
		p, e := l.str(key)
		if e != nil {
			return e
		}
		if p != "" {
			if p, e = l.absPath(key); e != nil {
				return e
			}
			set++
		}
		paths[i] = p
	}
	mode, e := l.oneOf(keyIdentityMode, string(TrustStrict), string(TrustTransitional))
	if e != nil {
		return e
	}
	switch set {
	case 0:
		if TrustMode(mode) == TrustTransitional {
			return l.fail(keyIdentityMode, `"transitional" needs the cluster CA`,
				"set ca_file, cert_file and key_file too, or leave mode at its default")
		}
		return nil
	case 3:
	default:
		return l.fail(sectionIdentity, "ca_file, cert_file and key_file must be set together",
			"set all three to use the cluster CA, or none to trust every holder of the gossip key")
	}
	id := Identity{CAFile: paths[0], CertFile: paths[1], KeyFile: paths[2], Mode: TrustMode(mode)}
	var err error
	if id.CA, err = identity.LoadCAPublic(id.CAFile); err != nil {
		return l.fileError(keyCAFile, err, "point it at the ca.crt written by 'meshd ca init'")
	}
	if id.Cert, id.Key, err = identity.LoadHost(id.CertFile, id.KeyFile); err != nil {
		return l.fileError(keyCertFile, err, "point cert_file and key_file at the host.crt and host.key written by 'meshd ca sign'")
	}
	if e := checkOwnCert(c, id, l.client); e != nil {
		return l.fail(e.Key, e.Problem, e.Fix)
	}
	c.Identity = id
	return nil
}

// CheckIdentity reports whether id can serve this host as its own
// identity: the checks Load makes of cert_file, against c's node name,
// site, role and segments. A reload uses it to try a renewed certificate
// against the settings the daemon runs with.
func (c *Config) CheckIdentity(id Identity) error {
	if e := checkOwnCert(c, id, false); e != nil {
		return e
	}
	return nil
}

func (l *loader) fileError(key string, err error, fix string) *Error {
	var fe *identity.FileError
	if errors.As(err, &fe) {
		return l.fail(key, fe.Problem, fe.Fix)
	}
	return l.fail(key, err.Error(), fix)
}

// checkOwnCert checks the host's own certificate as every other host
// would, so a host they would refuse fails at start, with the reason.
// client accepts a certificate outside its validity (see LoadClient).
func checkOwnCert(c *Config, id Identity, client bool) *Error {
	if err := id.Cert.Verify(id.CA, time.Now()); err != nil && !(client && outsideValidity(err)) {
		return fail(keyCertFile, err.Error(), "sign a new certificate with 'meshd ca sign' using this cluster's CA")
	}
	if id.Cert.Name != c.NodeName {
		return fail(keyCertFile, fmt.Sprintf("certificate is for %q but node_name is %q", id.Cert.Name, c.NodeName),
			"set node_name to the certificate's name, or sign a certificate for this name")
	}
	if id.Cert.SiteName() != c.Site.Name {
		return fail(keyCertFile, fmt.Sprintf("certificate is for site %q but site.name is %q", id.Cert.SiteName(), c.Site.Name),
			"sign a certificate with 'meshd ca sign --site "+c.Site.Name+"'")
	}
	if c.Site.Gateway && !id.Cert.Gateway {
		return fail(keyCertFile, "site.gateway is true but the certificate does not allow this host to be a gateway",
			"sign a certificate with 'meshd ca sign --gateway', or set site.gateway = false")
	}
	const fix = "sign a certificate that allows this segment and slice"
	for i, s := range c.Segments {
		if !s.Subnet.IsValid() {
			// The slice is claimed later; the segment must be allowed now.
			if !certListsSegment(id.Cert, s.Name) {
				return fail(segKey(i, segKeyName), fmt.Sprintf("certificate does not allow segment %q", s.Name), fix)
			}
			continue
		}
		if err := id.Cert.Allows(identity.Slice{Segment: s.Name, Prefix: s.Subnet}); err != nil {
			return fail(segKey(i, segKeySubnet), err.Error(), fix)
		}
	}
	return nil
}

func outsideValidity(err error) bool {
	return errors.Is(err, identity.ErrExpired) || errors.Is(err, identity.ErrNotYetValid)
}

func certListsSegment(c *identity.Cert, name string) bool {
	for _, s := range c.Segments {
		if s == name {
			return true
		}
	}
	return false
}
