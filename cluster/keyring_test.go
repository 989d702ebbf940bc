package cluster

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func saveKeyring(t *testing.T, path string, keys ...[]byte) {
	t.Helper()
	enc := make([]string, len(keys))
	for i, k := range keys {
		enc[i] = base64.StdEncoding.EncodeToString(k)
	}
	raw, _ := json.Marshal(enc)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The saved keyring wins over a gossip_key_file that still holds the key
// the cluster rotated away from; a key the operator put into the file
// since the last start wins over the saved keyring, so a host that was
// offline during a rotation can come back.
func TestLoadKeyring(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gossip.keyring")
	old, next := key(1), key(2)

	kr, adopted, err := LoadKeyring(path, old)
	if err != nil || adopted || !bytes.Equal(kr.GetPrimaryKey(), old) {
		t.Fatalf("first start: primary %x adopted %v err %v", kr.GetPrimaryKey(), adopted, err)
	}
	// The cluster rotates to next; serf saves the keyring.
	saveKeyring(t, path, next)
	kr, adopted, err = LoadKeyring(path, old)
	if err != nil || adopted || !bytes.Equal(kr.GetPrimaryKey(), next) || len(kr.GetKeys()) != 1 {
		t.Fatalf("restart after rotation: primary %x keys %d adopted %v err %v; the saved keyring must win over the stale file", kr.GetPrimaryKey(), len(kr.GetKeys()), adopted, err)
	}

	// A host offline during that rotation still has old saved; the
	// operator puts next into its key file.
	saveKeyring(t, path, old)
	os.WriteFile(path+seenSuffix, []byte(keyFingerprint(old)+"\n"), 0o600)
	kr, adopted, err = LoadKeyring(path, next)
	if err != nil || !adopted || !bytes.Equal(kr.GetPrimaryKey(), next) || len(kr.GetKeys()) != 2 {
		t.Fatalf("recovery: primary %x keys %d adopted %v err %v; the new file key must become primary", kr.GetPrimaryKey(), len(kr.GetKeys()), adopted, err)
	}
	// Next start: the file is unchanged, nothing more is adopted.
	saveKeyring(t, path, next, old)
	if _, adopted, err = LoadKeyring(path, next); err != nil || adopted {
		t.Fatalf("start after recovery: adopted %v err %v", adopted, err)
	}

	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, _, err := LoadKeyring(path, old); err == nil || !strings.Contains(err.Error(), "gossip_key_file") {
		t.Fatalf("corrupt keyring: %v", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadKeyring(path, old); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Fatalf("keyring path is a directory: %v", err)
	}
}

func TestConflictAddress(t *testing.T) {
	var c conflictLog
	c.note("2026/12/01 10:00:00 [ERR] serf: Node name conflicts with another node at 192.0.2.7:7946. Names must be unique! (Resolution enabled: true)")
	if got := c.get(); got != "192.0.2.7:7946" {
		t.Fatalf("conflict address %q", got)
	}
}

func TestUndecryptableIsExplainedOncePerSender(t *testing.T) {
	var out strings.Builder
	w := &levelWriter{l: slog.New(slog.NewTextHandler(&out, nil))}
	line := "[ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=192.0.2.9:7946\n"
	for range 5 {
		w.Write([]byte(line))
	}
	if n := strings.Count(out.String(), "cannot be decrypted"); n != 1 {
		t.Fatalf("explained %d times, want once:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "from=192.0.2.9:7946") || !strings.Contains(out.String(), "gossip_key_file") {
		t.Fatalf("explanation lacks the sender or the fix:\n%s", out.String())
	}
}
