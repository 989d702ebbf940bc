package main

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/control"
)

func fakeKeyring(t *testing.T, ans control.KeyringAnswer) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "meshd.sock")
	srv, err := control.Listen(sock, fakeDaemon(control.Status{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	srv.Handle("POST /v1/gossip-key/{op}", func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(ans) })
	return sock
}

// A rotation while a host is offline reached two of three members: it
// says so, names the host, tells how to bring it back, and exits 1.
func TestGossipKeyRotationWithAHostOffline(t *testing.T) {
	key := "q7Hn3mXy8yYw0Fg4J1m9XQ=="
	sock := fakeKeyring(t, control.KeyringAnswer{
		Response: &control.KeyringResponse{NumNodes: 2, NumResp: 2, Keys: map[string]int{}, PrimaryKeys: map[string]int{}},
		Absent:   []control.Member{{Name: "h3", State: "left"}},
	})
	out, code := execute(t, "gossip-key", "install", key, "--socket", sock)
	for _, want := range []string{"install " + cluster.KeyFingerprint(key) + ": 2 of 3 members answered, 0 failed\n",
		"meshd: gossip-key install incomplete: h3 (left) did not take part",
		"write the cluster's primary key (the one 'use' made primary) into its cluster.gossip_key_file and restart it"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code != 1 || strings.Contains(out, key) {
		t.Errorf("exit %d (want 1), or the key itself was printed:\n%s", code, out)
	}
}

func TestGossipKeyListShowsFingerprints(t *testing.T) {
	sock := fakeKeyring(t, control.KeyringAnswer{Response: &control.KeyringResponse{NumNodes: 3, NumResp: 3,
		Keys: map[string]int{"0a1b2c3d4e5f6071": 3, "8899aabbccddeeff": 1}, PrimaryKeys: map[string]int{"0a1b2c3d4e5f6071": 3}}})
	out, code := execute(t, "gossip-key", "list", "--socket", sock)
	want := "list: 3 of 3 members answered, 0 failed\n  0a1b2c3d4e5f6071  installed on 3  primary on 3\n  8899aabbccddeeff  installed on 1\n"
	if code != 0 || out != want {
		t.Errorf("exit %d\n%s\nwant\n%s", code, out, want)
	}
}
