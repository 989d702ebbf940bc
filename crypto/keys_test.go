package crypto

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrivateKeyIsCreatedOnceAndKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", KeyFileName)
	first, created, err := LoadOrCreatePrivateKey(path)
	if err != nil || !created {
		t.Fatalf("first start: created=%v err=%v", created, err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", perm)
	}
	second, created, err := LoadOrCreatePrivateKey(path)
	if err != nil || created {
		t.Fatalf("restart: created=%v err=%v", created, err)
	}
	if first != second {
		t.Fatal("restart produced a different key; peers would lose this host")
	}
}

func TestReadableKeyIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), KeyFileName)
	if _, _, err := LoadOrCreatePrivateKey(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadOrCreatePrivateKey(path)
	var ke *KeyError
	if !errors.As(err, &ke) || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("want KeyError naming mode 0644, got %v", err)
	}
}

func TestCorruptKeyIsRefusedNotReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), KeyFileName)
	if err := os.WriteFile(path, []byte("not-a-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadOrCreatePrivateKey(path)
	var ke *KeyError
	if !errors.As(err, &ke) {
		t.Fatalf("want KeyError, got %v", err)
	}
	raw, _ := os.ReadFile(path)
	if string(raw) != "not-a-key\n" {
		t.Fatal("a corrupt key file was overwritten; the operator's data must be left as it was")
	}
}

func TestGossipKeyIs32Bytes(t *testing.T) {
	k, err := NewGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(raw) != 32 {
		t.Fatalf("gossip key %q: %d bytes, err %v", k, len(raw), err)
	}
}

// A key file that is a symlink into a secrets mount that is not there yet
// must stop the start: a new key would silently change the host's identity.
func TestDanglingKeySymlinkIsRefusedNotReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, KeyFileName)
	target := filepath.Join(dir, "secrets", "wireguard.key")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	_, created, err := LoadOrCreatePrivateKey(path)
	var ke *KeyError
	if !errors.As(err, &ke) || created || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("want a KeyError naming the missing target, got created=%v err=%v", created, err)
	}
	if got, err := os.Readlink(path); err != nil || got != target {
		t.Fatalf("the symlink was replaced: readlink = %q, %v", got, err)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a key was written through the dangling link: %v", err)
	}
}

func TestSymlinkToKeyIsFollowed(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real.key")
	want, _, err := LoadOrCreatePrivateKey(real)
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, KeyFileName)
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	got, created, err := LoadOrCreatePrivateKey(link)
	if err != nil || created || got != want {
		t.Fatalf("through the link: created=%v err=%v same=%v", created, err, got == want)
	}
}

func TestZeroKeyIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), KeyFileName)
	zero := base64.StdEncoding.EncodeToString(make([]byte, 32))
	if err := os.WriteFile(path, []byte(zero+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadOrCreatePrivateKey(path)
	if err == nil || !strings.Contains(err.Error(), "all-zero") {
		t.Fatalf("want an all-zero refusal, got %v", err)
	}
}

func TestKeyPathThatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, KeyFileName), 0o755); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadOrCreatePrivateKey(filepath.Join(dir, KeyFileName))
	if err == nil || !strings.Contains(err.Error(), "is a directory") || strings.Contains(err.Error(), "mode") {
		t.Fatalf("a directory must be named as one, not as a readable key: %v", err)
	}
	if _, _, err := LoadOrCreatePrivateKey("/dev/zero"); err == nil || !strings.Contains(err.Error(), "device") {
		t.Fatalf("/dev/zero: %v", err)
	}
}
