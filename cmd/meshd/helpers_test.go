package main

import (
	"os"
	"path/filepath"
	"testing"
)

// writeTestConfig writes a config of two segments (blue, green) whose
// control socket lies in the test's directory; extra is appended.
func writeTestConfig(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	key := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(key, []byte("q7Hn3mXy8yYw0Fg4J1m9XQ==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	body := `node_name = "h1"
control_socket = "` + filepath.Join(dir, "meshd.sock") + `"
[cluster]
bind_addr = "192.0.2.1"
gossip_key_file = "` + key + `"
[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
subnet = "10.42.1.0/24"
[[segments]]
name = "green"
cidr = "10.43.0.0/16"
subnet = "10.43.1.0/24"
` + extra
	path := filepath.Join(dir, "meshd.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
