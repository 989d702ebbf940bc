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
