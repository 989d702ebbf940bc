package daemon

import (
	"encoding/base64"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/control"
)

// A keyring operation reaches only live members; the answer names the
// others, and shows keys by fingerprint only.
func TestGossipKeyNamesAbsentMembers(t *testing.T) {
	c := newCluster3(t)
	h1, h2, h3 := c.hosts[0], c.hosts[1], c.hosts[2]
	startDaemon(t, h1, c.config(1, ""), Options{})
	startDaemon(t, h2, c.config(2, ""), Options{})
	r3 := startDaemon(t, h3, c.config(3, ""), Options{})
	eventually(t, 15*time.Second, "three hosts meshed", func() error {
		return errors.Join(meshed(h1, h2, h3), meshed(h2, h1, h3), meshed(h3, h1, h2))
	})
	r3.stop(t)
	eventually(t, 5*time.Second, "h3 left", func() error { return errors.Join(meshed(h1, h2), meshed(h2, h1)) })

	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	var ans control.KeyringAnswer
	client := control.NewClient(filepath.Join(h1.dir, "meshd.sock"))
	if err := client.PostJSON("/v1/gossip-key/install", key, &ans); err != nil {
		t.Fatal(err)
	}
	if ans.Response == nil || ans.Response.NumNodes != 2 || ans.Response.NumResp != 2 ||
		!slices.Equal(ans.Absent, []control.Member{{Name: "h3", State: "left"}}) {
		t.Fatalf("install with h3 gone: %+v %+v", ans.Response, ans.Absent)
	}
	if err := client.PostJSON("/v1/gossip-key/list", "", &ans); err != nil {
		t.Fatal(err)
	}
	if ans.Response.Keys[cluster.KeyFingerprint(key)] != 2 {
		t.Errorf("list: keys %v, want the new key's fingerprint on 2 members", ans.Response.Keys)
	}
	for k := range ans.Response.Keys {
		if len(k) != 16 {
			t.Errorf("list shows %q, which is not a fingerprint", k)
		}
	}
}
