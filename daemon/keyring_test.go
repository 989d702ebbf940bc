package daemon

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// The control socket serves before the join; a keyring operation asked
// for then is told to come back (503), and works once the host joined.
// Run with -race: the join publishes the cluster while the socket's
// goroutines read it.
func TestGossipKeyBeforeJoin(t *testing.T) {
	c := newCluster3(t)
	h := c.hosts[0]
	h.joining = make(chan struct{})
	d := New(c.config(1, ""), slog.New(slog.DiscardHandler), h.system(), Options{})
	started := make(chan error, 1)
	go func() { started <- d.Start(context.Background()) }()
	defer d.Close()
	sock := filepath.Join(h.dir, "meshd.sock")
	eventually(t, 5*time.Second, "control socket", func() error { _, err := os.Stat(sock); return err })
	client := control.NewClient(sock)
	var ans control.KeyringAnswer
	err := client.PostJSON("/v1/gossip-key/list", "", &ans)
	var re *control.RemoteError
	if !errors.As(err, &re) || re.Status != http.StatusServiceUnavailable || !strings.Contains(re.Message, "not joined yet") {
		t.Fatalf("gossip-key list before the join: %v; want 503 not joined yet", err)
	}
	close(h.joining)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	if err := client.PostJSON("/v1/gossip-key/list", "", &ans); err != nil || ans.Response == nil || ans.Response.NumNodes != 1 {
		t.Fatalf("gossip-key list after the join: %+v, %v", ans.Response, err)
	}
}
