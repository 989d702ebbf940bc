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

	"github.com/meshd/meshd/config"
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
	staleSocket(t, path)
	srv, err = Listen(path, fixed{})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	srv.Close()
}

// staleSocket leaves a socket file nothing serves, as a killed daemon
// does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
}

// Whatever is at control_socket and is not a socket (a config file the
// path was pointed at by mistake, a directory, a symlink) stays as it
// was, and the error names the key.
func TestListenLeavesWhatIsNotASocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "meshd.toml")
	if err := os.WriteFile(file, []byte("node_name = \"h1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{file, sub, link} {
		srv, err := Listen(path, fixed{})
		if err == nil {
			srv.Close()
			t.Fatalf("Listen(%s) took the path over", path)
		}
		var ce *config.Error
		if !errors.As(err, &ce) || ce.Key != "control_socket" {
			t.Errorf("Listen(%s) = %v; want a config error naming control_socket", path, err)
		}
		if err := CheckPath(path); err == nil {
			t.Errorf("CheckPath(%s) passed", path)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "node_name = \"h1\"\n" {
		t.Fatalf("the file at control_socket was changed: %q, %v", b, err)
	}
	if info, err := os.Lstat(link); err != nil || info.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the symlink at control_socket was changed: %v", err)
	}
	if info, err := os.Stat(sub); err != nil || !info.IsDir() {
		t.Fatalf("the directory at control_socket was changed: %v", err)
	}
}

// Close gives requests in flight a moment, then cuts their connections:
// a stuck handler must not keep a client waiting for the request
// timeout, nor Close wait for it.
func TestCloseCutsOffStuckRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.sock")
	srv, err := Listen(path, fixed{})
	if err != nil {
		t.Fatal(err)
	}
	stuck, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	srv.Handle("POST /v1/stuck", func(w http.ResponseWriter, r *http.Request) {
		close(stuck)
		<-release
	})
	answered := make(chan error, 1)
	go func() { answered <- NewClient(path).Post("/v1/stuck") }()
	<-stuck
	began := time.Now()
	if err := srv.Close(); err == nil {
		t.Error("Close did not say it cut off a request")
	}
	if took := time.Since(began); took > closeGrace+time.Second {
		t.Errorf("Close took %s", took)
	}
	select {
	case err := <-answered:
		if err == nil {
			t.Error("the stuck request succeeded")
		}
	case <-time.After(time.Second):
		t.Fatal("the client of a stuck request still waits after Close: its connection was left open")
	}
}

// A socket someone else put at the path after this server's was deleted
// is not this server's to remove.
func TestCloseRemovesOnlyItsOwnSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.sock")
	srv, err := Listen(path, fixed{})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	staleSocket(t, path)
	srv.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("Close removed a socket it did not make: %v", err)
	}
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
