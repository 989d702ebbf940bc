// Package crypto owns meshd's long-lived secrets: the host's WireGuard
// private key (created once, kept in data_dir, never rotated by accident,
// since a new key at every start would break every peer) and the cluster's
// gossip key.
package crypto

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/internal/fileio"
)

// KeyFileName is the private key's file name inside data_dir.
const KeyFileName = "wireguard.key"

// KeyError says what is wrong with a key file and how to fix it; the CLI
// maps it to exit code 2 because it is a configuration problem.
type KeyError = fileio.Error

// LoadOrCreatePrivateKey returns the WireGuard private key stored at path,
// creating it (mode 0600, directory 0700) on first start. An existing key
// that others can read is refused rather than silently fixed: a leaked key
// must be replaced, not re-permissioned. Only a path that does not exist
// at all gets a new key: a symlink to a secret that is not mounted yet is
// an error, because a silently new key changes the host's identity.
func LoadOrCreatePrivateKey(path string) (key wgtypes.Key, created bool, err error) {
	key, err = LoadPrivateKey(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, false, err
	}
	key, err = wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("generate WireGuard key: %w", err)
	}
	if err := writeSecret(path, key, fileio.Exclusive); err != nil {
		return wgtypes.Key{}, false, err
	}
	return key, true, nil
}

// LoadPrivateKey reads an existing private key. A missing file is returned
// as an error wrapping fs.ErrNotExist.
func LoadPrivateKey(path string) (wgtypes.Key, error) {
	raw, err := fileio.ReadRegular(path, fileio.MaxKeySize)
	if err != nil {
		return wgtypes.Key{}, err
	}
	// ReadRegular has checked the file is regular, so the mode check is
	// about the key, not a directory's execute bits.
	if info, err := os.Stat(path); err == nil && !fileio.Private(info) {
		return wgtypes.Key{}, &KeyError{Path: path,
			Problem: fmt.Sprintf("mode %04o lets other users read the private key", info.Mode().Perm()),
			Fix:     "treat the key as leaked: delete the file so meshd creates a new one, or chmod 600 it if you are sure it never leaked"}
	}
	key, err := wgtypes.ParseKey(strings.TrimSpace(string(raw)))
	if err != nil {
		return wgtypes.Key{}, &KeyError{Path: path, Problem: "not a base64 WireGuard private key",
			Fix: "delete it so meshd creates a new one, or write the output of `wg genkey` into it"}
	}
	// An all-zero key is what a truncated or zero-filled secret decodes
	// to; every host using it would share one identity.
	if key == (wgtypes.Key{}) {
		return wgtypes.Key{}, &KeyError{Path: path, Problem: "holds an all-zero private key",
			Fix: "delete it so meshd creates a new one, or write the output of `wg genkey` into it"}
	}
	return key, nil
}

// WritePrivateKey replaces the key at path atomically (key rotation).
func WritePrivateKey(path string, key wgtypes.Key) error {
	return writeSecret(path, key, fileio.Overwrite)
}

func writeSecret(path string, key wgtypes.Key, replace fileio.Replace) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	return fileio.WriteAtomic(path, []byte(key.String()+"\n"), 0o600, replace)
}

// NewGossipKey returns a fresh base64 AES-256 key for serf's gossip
// encryption, in the format cluster.gossip_key_file expects.
func NewGossipKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("read random bytes: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// Fingerprint is a short, stable label for a public key in logs and
// status output; the full key is still shown where users need to copy it.
func Fingerprint(k wgtypes.Key) string {
	return k.String()[:8]
}
