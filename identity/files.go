package identity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/internal/fileio"
)

// FileError says what is wrong with a certificate or key file and how to fix
// it; like crypto.KeyError it is a configuration problem, not a crash.
type FileError = fileio.Error

// LoadCert reads a host certificate without its key. It does not verify
// it against a CA.
func LoadCert(path string) (*Cert, error) {
	raw, err := readPEM(path, pemHostCert)
	if err != nil {
		return nil, err
	}
	cert, err := ParseCert(raw)
	if err != nil {
		return nil, &FileError{Path: path, Problem: err.Error(), Fix: "sign the host again with 'meshd ca sign'"}
	}
	return cert, nil
}

// Fingerprint identifies a public key (a CA's, a host certificate's) in
// output meant for people: the first 8 bytes of its SHA-256, in hex.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// LoadHost reads a host's certificate and key and checks they belong
// together. It does not verify the certificate against a CA.
func LoadHost(certFile, keyFile string) (*Cert, ed25519.PrivateKey, error) {
	cert, err := LoadCert(certFile)
	if err != nil {
		return nil, nil, err
	}
	key, err := loadPrivateKey(keyFile, pemHostKey,
		"if it may have leaked, sign the host again with 'meshd ca sign --force'; otherwise chmod 600 it")
	if err != nil {
		return nil, nil, err
	}
	if !cert.PublicKey.Equal(key.Public()) {
		return nil, nil, &FileError{Path: keyFile, Problem: "does not match the public key in " + certFile,
			Fix: "install the host.key and host.crt that 'meshd ca sign' wrote together"}
	}
	return cert, key, nil
}

// WriteHost installs a host's key and certificate in dir. Without force it
// refuses to replace either file, so re-running a provisioning script cannot
// silently rotate a host's identity.
func WriteHost(dir string, c *Cert, key ed25519.PrivateKey, force bool) error {
	enc := c.Marshal()
	if enc == nil {
		return errors.New("certificate is unsigned or invalid")
	}
	if len(key) != ed25519.PrivateKeySize || !c.PublicKey.Equal(key.Public()) {
		return errors.New("host key does not match the certificate's public key")
	}
	keyPath, certPath := filepath.Join(dir, HostKeyFile), filepath.Join(dir, HostCertFile)
	if !force {
		for _, p := range []string{keyPath, certPath} {
			if err := refuseExisting(p); err != nil {
				return err
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create host directory: %w", err)
	}
	if err := writeFile(keyPath, encodePEM(pemHostKey, key.Seed()), 0o600, force); err != nil {
		return err
	}
	return writeFile(certPath, encodePEM(pemHostCert, enc), 0o644, force)
}

// refuseExisting is checked before generating anything so a refusal leaves
// no half-written state; writeFile re-checks atomically.
func refuseExisting(path string) error {
	_, err := os.Lstat(path)
	if err == nil {
		return fmt.Errorf("%s: %w", path, fs.ErrExist)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// loadPrivateKey refuses keys others can read instead of fixing the mode:
// a key that may have leaked must be replaced, not re-permissioned.
func loadPrivateKey(path, blockType, fix string) (ed25519.PrivateKey, error) {
	if _, err := readFile(path); err != nil {
		return nil, err
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if perm := info.Mode().Perm(); !fileio.Private(info) {
		return nil, &crypto.KeyError{Path: path,
			Problem: fmt.Sprintf("mode %04o lets other users read the private key", perm), Fix: fix}
	}
	seed, err := readPEM(path, blockType)
	if err != nil {
		return nil, err
	}
	if len(seed) != ed25519.SeedSize {
		return nil, &crypto.KeyError{Path: path, Problem: fmt.Sprintf("holds %d bytes, not a %d-byte ed25519 seed", len(seed), ed25519.SeedSize),
			Fix: "restore it from backup or create it again with 'meshd ca'"}
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// readPEM insists on exactly one block of the expected type, so a
// concatenated or mislabelled file is reported instead of half-used.
func readPEM(path, blockType string) ([]byte, error) {
	raw, err := readFile(path)
	if err != nil {
		return nil, err
	}
	block, rest := pem.Decode(raw)
	switch {
	case block == nil:
		return nil, &FileError{Path: path, Problem: "is not a PEM file", Fix: "expected a -----BEGIN " + blockType + "----- block written by 'meshd ca'"}
	case block.Type != blockType:
		return nil, &FileError{Path: path, Problem: fmt.Sprintf("holds a %q block, want %q", block.Type, blockType), Fix: "check the path: it points at the wrong meshd file"}
	case len(bytes.TrimSpace(rest)) != 0:
		return nil, &FileError{Path: path, Problem: "has data after the " + blockType + " block", Fix: "keep exactly one block per file"}
	}
	return block.Bytes, nil
}

func encodePEM(blockType string, b []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: b})
}

// writeFile goes through a temporary file so a crash never leaves a
// truncated key; without replace it fails atomically if the target
// appeared meanwhile.
func writeFile(path string, data []byte, perm fs.FileMode, replace bool) error {
	return fileio.WriteAtomic(path, data, perm, fileio.Replace(replace))
}

// readFile bounds what a certificate or key path can make meshd read.
func readFile(path string) ([]byte, error) {
	return fileio.ReadRegular(path, fileio.MaxCertSize)
}
