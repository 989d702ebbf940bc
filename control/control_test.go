package control

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

type fixed Status

func (f fixed) Status() Status { return Status(f) }

func TestStatusRoundTripOverRootOnlySocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "meshd.sock")
	want := Status{Node: Node{Name: "h1", Mode: "userspace"}, Peers: []Peer{{Name: "h2", State: "alive", HandshakeAgeSeconds: 3}}}
	srv, err := Listen(path, fixed(want))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("control socket mode %04o, want 0600: status exposes keys and topology", perm)
	}
	got, err := NewClient(path).Status()
	if err != nil {
		t.Fatal(err)
	}
	if got.Node.Name != "h1" || len(got.Peers) != 1 || got.Peers[0].HandshakeAgeSeconds != 3 {
		t.Fatalf("status = %+v", got)
	}
}

func TestSecondDaemonIsRefusedAndStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.sock")
	srv, err := Listen(path, fixed{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, fixed{}); err == nil {
		t.Fatal("a second daemon took over a live control socket")
	}
	srv.Close()
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("socket file left after Close")
	}
	// A crashed daemon leaves a dead socket file behind.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err = Listen(path, fixed{})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	srv.Close()
}

func TestNoDaemonAndRefusedRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.sock")
	if _, err := NewClient(path).Status(); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("want ErrNoDaemon, got %v", err)
	}
	srv, err := Listen(path, fixed{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.Handle("POST /v1/reload", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "config x: allow[0].to: unknown segment", http.StatusBadRequest)
	})
	err = NewClient(path).Post("/v1/reload")
	var re *RemoteError
	if !errors.As(err, &re) || !re.BadInput() || re.Message != "config x: allow[0].to: unknown segment" {
		t.Fatalf("want a bad-input RemoteError with the daemon's message, got %v", err)
	}
}
