package control

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
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

// A flood of connections that never speak (or keep an idle keep-alive
// open) must not grow the daemon without bound, must not lock out a real
// request for long, and must leave nothing behind once it ends.
func TestFloodIsBoundedAndRecovers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.sock")
	srv, err := Listen(path, fixed(Status{Node: Node{Name: "h1"}}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	runtime.GC()
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)

	const flood = 2000
	var conns []net.Conn
	for range flood {
		c, err := net.Dial("unix", path)
		if err != nil {
			break // the backlog is full: the kernel refuses, the daemon never sees it
		}
		conns = append(conns, c)
	}
	t.Logf("%d flood connections open", len(conns))
	time.Sleep(200 * time.Millisecond)
	// The test's own client sockets count too; what the server holds is
	// what grows beyond them.
	if g := runtime.NumGoroutine() - baseG; g > MaxConns+8 {
		t.Errorf("%d more goroutines during the flood, want at most %d", g, MaxConns+8)
	}
	if fds := openFDs(t) - baseFD - len(conns); fds > MaxConns+8 {
		t.Errorf("the server holds %d more descriptors during the flood, want at most %d", fds, MaxConns+8)
	}
	began := time.Now()
	if _, err := NewClient(path).Status(); err != nil {
		t.Fatalf("status during the flood: %v", err)
	} else if took := time.Since(began); took > 10*time.Second {
		t.Errorf("status during the flood took %s", took)
	}
	for _, c := range conns {
		c.Close()
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		runtime.GC()
		g, fds := runtime.NumGoroutine()-baseG, openFDs(t)-baseFD
		if g <= 2 && fds <= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the flood: %d goroutines and %d descriptors above the baseline", g, fds)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
