package daemon

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/meshd/meshd/control"
)

// A device that refuses the new key leaves the rotation undone
// everywhere: the key file, the device and the announcement keep the old
// key, so a restart comes back with the key every peer knows. Once the
// device takes keys again, a rotation goes through.
func TestFailedRotationKeepsTheOldKey(t *testing.T) {
	c := newCluster3(t)
	h := c.hosts[0]
	r := startDaemon(t, h, c.config(1, ""), Options{})
	old := h.publicKey()
	injected := errors.New("injected: the device refused the key")
	h.failOn("configure key", injected)
	client := control.NewClient(filepath.Join(h.dir, "meshd.sock"))
	var out map[string]string
	err := client.PostJSON("/v1/rotate-key", "", &out)
	var re *control.RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("rotate-key with a refusing device: %v, want the daemon's refusal", err)
	}
	if got := h.publicKey(); got != old {
		t.Fatalf("the key file holds %s after the failed rotation, want the old %s", got, old)
	}
	if got := r.d.ann.privateKey().PublicKey(); got != old {
		t.Fatalf("the announcement carries %s, want the old %s", got, old)
	}
	if dev, err := h.link("mesh0").Device("mesh0"); err != nil || dev.PublicKey != old {
		t.Fatalf("the device has %v (%v), want the old key", dev.PublicKey, err)
	}

	h.failOn("configure key", nil)
	if err := client.PostJSON("/v1/rotate-key", "", &out); err != nil {
		t.Fatal(err)
	}
	if got := h.publicKey(); got == old || out["public_key"] != got.String() {
		t.Fatalf("after a working rotation the key file holds %s, the answer %s (old %s)", got, out["public_key"], old)
	}
}
