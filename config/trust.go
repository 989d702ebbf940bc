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
)

// Identity is the host's certificate and signing key, and the cluster CA
// every announcement is checked against. Zero when the cluster runs
// without a CA.
type Identity struct {
	CAFile, CertFile, KeyFile string
	CA                        ed25519.PublicKey
	Cert                      *identity.Cert
	Key                       ed25519.PrivateKey
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
	switch set {
	case 0:
		return nil
	case 3:
	default:
		return l.fail(sectionIdentity, "ca_file, cert_file and key_file must be set together",
			"set all three to use the cluster CA, or none to trust every holder of the gossip key")
	}
	id := Identity{CAFile: paths[0], CertFile: paths[1], KeyFile: paths[2]}
	var err error
	if id.CA, err = identity.LoadCAPublic(id.CAFile); err != nil {
		return l.fileError(keyCAFile, err, "point it at the ca.crt written by 'meshd ca init'")
	}
	if id.Cert, id.Key, err = identity.LoadHost(id.CertFile, id.KeyFile); err != nil {
		return l.fileError(keyCertFile, err, "point cert_file and key_file at the host.crt and host.key written by 'meshd ca sign'")
	}
	if e := l.checkOwnCert(c, id); e != nil {
		return e
	}
	c.Identity = id
	return nil
}

func (l *loader) fileError(key string, err error, fix string) *Error {
	var fe *identity.FileError
	if errors.As(err, &fe) {
		return l.fail(key, fe.Problem, fe.Fix)
	}
	return l.fail(key, err.Error(), fix)
}

func (l *loader) checkOwnCert(c *Config, id Identity) *Error {
	if err := id.Cert.Verify(id.CA, time.Now()); err != nil {
		return l.fail(keyCertFile, err.Error(), "sign a new certificate with 'meshd ca sign' using this cluster's CA")
	}
	if id.Cert.Name != c.NodeName {
		return l.fail(keyCertFile, fmt.Sprintf("certificate is for %q but node_name is %q", id.Cert.Name, c.NodeName),
			"set node_name to the certificate's name, or sign a certificate for this name")
	}
	if id.Cert.SiteName() != c.Site.Name {
		return l.fail(keyCertFile, fmt.Sprintf("certificate is for site %q but site.name is %q", id.Cert.SiteName(), c.Site.Name),
			"sign a certificate with 'meshd ca sign --site "+c.Site.Name+"'")
	}
	if c.Site.Gateway && !id.Cert.Gateway {
		return l.fail(keyCertFile, "site.gateway is true but the certificate does not allow this host to be a gateway",
			"sign a certificate with 'meshd ca sign --gateway', or set site.gateway = false")
	}
	const fix = "sign a certificate that allows this segment and slice"
	for i, s := range c.Segments {
		if !s.Subnet.IsValid() {
			// The slice is claimed later; the segment must be allowed now.
			if !certListsSegment(id.Cert, s.Name) {
				return l.fail(segKey(i, segKeyName), fmt.Sprintf("certificate does not allow segment %q", s.Name), fix)
			}
			continue
		}
		if err := id.Cert.Allows(identity.Slice{Segment: s.Name, Prefix: s.Subnet}); err != nil {
			return l.fail(segKey(i, segKeySubnet), err.Error(), fix)
		}
	}
	return nil
}

func certListsSegment(c *identity.Cert, name string) bool {
	for _, s := range c.Segments {
		if s == name {
			return true
		}
	}
	return false
}
