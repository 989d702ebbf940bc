package identity

import (
	"crypto/ed25519"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/crypto"
)

func TestInitCAWritesFilesAndRefusesOverwrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := InitCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]fs.FileMode{CAKeyFile: 0o600, CACertFile: 0o644, ".": 0o700} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil || info.Mode().Perm() != want {
			t.Errorf("%s: %v, mode %v, want %v", name, err, info.Mode().Perm(), want)
		}
	}
	before, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if _, err := InitCA(dir); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second InitCA: %v, want ErrExist", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if string(before) != string(after) {
		t.Fatal("second InitCA replaced the CA key")
	}
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadCAPublic(filepath.Join(dir, CACertFile))
	if err != nil || !pub.Equal(ca.Public) || !loaded.Public.Equal(ca.Public) {
		t.Fatalf("loaded CA differs: %v", err)
	}
	c := signed(t, loaded, template(hostKey(t)))
	if err := c.Verify(pub, t0); err != nil {
		t.Fatal(err)
	}
}

func TestInitCARefusesHalfExistingCA(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, CACertFile), []byte("x"), 0o644)
	if _, err := InitCA(dir); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("InitCA over an existing ca.crt: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("refused InitCA still wrote ca.key")
	}
}

func TestPrivateKeyPermissionsRefused(t *testing.T) {
	caDir := t.TempDir()
	if _, err := InitCA(caDir); err != nil {
		t.Fatal(err)
	}
	hostDir, _, _ := writeTestHost(t)
	cases := map[string]struct {
		path string
		load func() error
	}{
		"CA key": {filepath.Join(caDir, CAKeyFile), func() error { _, err := LoadCA(caDir); return err }},
		"host key": {filepath.Join(hostDir, HostKeyFile), func() error {
			_, _, err := LoadHost(filepath.Join(hostDir, HostCertFile), filepath.Join(hostDir, HostKeyFile))
			return err
		}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.Chmod(tc.path, 0o640); err != nil {
				t.Fatal(err)
			}
			err := tc.load()
			var ke *crypto.KeyError
			if !errors.As(err, &ke) || ke.Path != tc.path || !strings.Contains(err.Error(), "0640") || !strings.Contains(err.Error(), "chmod 600") {
				t.Fatalf("loading a group-readable key: %v", err)
			}
			os.Chmod(tc.path, 0o600)
			if err := tc.load(); err != nil {
				t.Fatalf("after chmod 600: %v", err)
			}
		})
	}
}

func writeTestHost(t *testing.T) (string, *Cert, ed25519.PrivateKey) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "h1")
	key := hostKey(t)
	c := signed(t, testCA(t), template(key))
	if err := WriteHost(dir, c, key, false); err != nil {
		t.Fatal(err)
	}
	return dir, c, key
}

func TestWriteAndLoadHost(t *testing.T) {
	dir, c, key := writeTestHost(t)
	for name, want := range map[string]fs.FileMode{HostKeyFile: 0o600, HostCertFile: 0o644, ".": 0o700} {
		if info, err := os.Stat(filepath.Join(dir, name)); err != nil || info.Mode().Perm() != want {
			t.Errorf("%s: %v, want mode %v", name, err, want)
		}
	}
	got, gotKey, err := LoadHost(filepath.Join(dir, HostCertFile), filepath.Join(dir, HostKeyFile))
	if err != nil || !gotKey.Equal(key) || string(got.Marshal()) != string(c.Marshal()) {
		t.Fatalf("LoadHost: %v", err)
	}
	if err := WriteHost(dir, c, key, false); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("WriteHost over existing files: %v, want ErrExist", err)
	}
	if err := WriteHost(dir, c, key, true); err != nil {
		t.Fatalf("WriteHost --force: %v", err)
	}
	if err := WriteHost(dir, c, hostKey(t), true); err == nil {
		t.Fatal("WriteHost accepted a key that does not match the certificate")
	}
}

func TestLoadHostMismatchedKey(t *testing.T) {
	dir, _, _ := writeTestHost(t)
	other, _, _ := writeTestHost(t)
	_, _, err := LoadHost(filepath.Join(dir, HostCertFile), filepath.Join(other, HostKeyFile))
	var fe *FileError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key: %v", err)
	}
}

func TestLoadRejectsWrongFiles(t *testing.T) {
	dir, _, _ := writeTestHost(t)
	certPath, keyPath := filepath.Join(dir, HostCertFile), filepath.Join(dir, HostKeyFile)
	if _, err := LoadCAPublic(certPath); err == nil || !strings.Contains(err.Error(), "MESHD HOST CERTIFICATE") {
		t.Errorf("host.crt loaded as ca.crt: %v", err)
	}
	if _, _, err := LoadHost(keyPath, keyPath); err == nil {
		t.Error("host.key loaded as a certificate")
	}
	raw, _ := os.ReadFile(certPath)
	os.WriteFile(certPath, append(raw, raw...), 0o644)
	if _, _, err := LoadHost(certPath, keyPath); err == nil || !strings.Contains(err.Error(), "after") {
		t.Errorf("two blocks in host.crt: %v", err)
	}
	os.WriteFile(certPath, []byte("hello"), 0o644)
	if _, _, err := LoadHost(certPath, keyPath); err == nil || !strings.Contains(err.Error(), "not a PEM") {
		t.Errorf("garbage host.crt: %v", err)
	}
	if _, err := LoadCA(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing CA: %v", err)
	}
}
