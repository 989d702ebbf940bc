package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshd/meshd/segment"
)

// File names inside a CA directory and a host directory.
const (
	CAKeyFile    = "ca.key"
	CACertFile   = "ca.crt"
	HostKeyFile  = "host.key"
	HostCertFile = "host.crt"
)

// PEM block types. Distinct types for every file keep a host key from being
// loaded as the CA key by a mistyped path.
const (
	pemCAKey    = "MESHD CA KEY"
	pemCACert   = "MESHD CA CERTIFICATE"
	pemHostKey  = "MESHD HOST KEY"
	pemHostCert = "MESHD HOST CERTIFICATE"
)

// CA is the cluster's certificate authority. Only the machine that signs
// host certificates needs the private half; hosts need only Public.
type CA struct {
	Public ed25519.PublicKey
	key    ed25519.PrivateKey
}

// InitCA creates a new CA in dir. It never replaces an existing one:
// a new CA silently invalidates every host certificate in the cluster.
func InitCA(dir string) (*CA, error) {
	keyPath, certPath := filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile)
	for _, p := range []string{keyPath, certPath} {
		if err := refuseExisting(p); err != nil {
			return nil, err
		}
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CA directory: %w", err)
	}
	if err := writeFile(keyPath, encodePEM(pemCAKey, key.Seed()), 0o600, false); err != nil {
		return nil, err
	}
	if err := writeFile(certPath, encodePEM(pemCACert, pub), 0o644, false); err != nil {
		// A key without its certificate would block the next InitCA.
		os.Remove(keyPath)
		return nil, err
	}
	return &CA{Public: pub, key: key}, nil
}

// LoadCA reads the CA from dir and checks that its two files belong together.
func LoadCA(dir string) (*CA, error) {
	keyPath := filepath.Join(dir, CAKeyFile)
	key, err := loadPrivateKey(keyPath, pemCAKey,
		"the CA key signs every host: if it may have leaked, create a new CA and re-sign all hosts; otherwise chmod 600 it")
	if err != nil {
		return nil, err
	}
	pub, err := LoadCAPublic(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	if !pub.Equal(key.Public()) {
		return nil, &FileError{Path: keyPath, Problem: "does not match " + CACertFile + " in the same directory",
			Fix: "restore the matching pair from backup"}
	}
	return &CA{Public: pub, key: key}, nil
}

// LoadCAPublic reads ca.crt, which is all a host needs to verify its peers.
func LoadCAPublic(path string) (ed25519.PublicKey, error) {
	raw, err := readPEM(path, pemCACert)
	if err != nil {
		return nil, err
	}
	if len(raw) != keyLen {
		return nil, &FileError{Path: path, Problem: fmt.Sprintf("holds %d bytes, not a %d-byte ed25519 public key", len(raw), keyLen),
			Fix: "copy ca.crt again from the CA directory"}
	}
	return ed25519.PublicKey(raw), nil
}

// Sign returns a signed copy of c in canonical form: segments and subnets
// sorted, times truncated to seconds in UTC. c.Signature is ignored.
func (ca *CA) Sign(c Cert) (*Cert, error) {
	if ca == nil || len(ca.key) != ed25519.PrivateKeySize {
		return nil, errors.New("CA has no private key loaded")
	}
	out := Cert{
		Name:      c.Name,
		Segments:  slices.Sorted(slices.Values(c.Segments)),
		NotBefore: c.NotBefore.Truncate(time.Second).UTC(),
		NotAfter:  c.NotAfter.Truncate(time.Second).UTC(),
		PublicKey: slices.Clone(c.PublicKey),
		Site:      c.Site,
		Gateway:   c.Gateway,
	}
	if len(c.Subnets) > 0 {
		out.Subnets = slices.SortedFunc(slices.Values(c.Subnets), segment.Compare)
	}
	body, err := out.body()
	if err != nil {
		return nil, err
	}
	out.Signature = ed25519.Sign(ca.key, append([]byte(certDomain), body...))
	return &out, nil
}
