// Package e2e runs real meshd binaries in network-namespace hosts joined by
// a veth underlay and checks what a user would see: packets delivered or
// dropped, routes present or gone, nothing in plaintext on the wire.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/lab"
)

// meshdBin is built once for all tests in this package, and forgerBin,
// the hostile member of the trust tests.
var meshdBin, forgerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshd-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	meshdBin = filepath.Join(dir, "meshd")
	forgerBin = filepath.Join(dir, "forger")
	for bin, pkg := range map[string]string{meshdBin: "github.com/meshd/meshd/cmd/meshd", forgerBin: "github.com/meshd/meshd/test/e2e/forger"} {
		build := exec.Command("go", "build", "-o", bin, pkg)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", pkg+":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var blue = lab.SegmentSpec{Name: "blue", CIDR: "10.42.0.0/16", SliceBits: 24}

// newLab builds a lab and registers its teardown; the daemons' logs are
// printed when the test failed, since they are the first thing to read.
func newLab(t *testing.T, spec lab.Spec) *lab.Lab {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ip", "ping", "tcpdump")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := lab.New(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range l.Hosts() {
				t.Logf("---- %s meshd log (tail) ----\n%s", h.Name(), tail(h.Log(), 60))
			}
		}
		// MESHD_E2E_LOGS=DIR keeps every host's whole log, for reading a
		// timeline after the lab is gone.
		if dir := os.Getenv("MESHD_E2E_LOGS"); dir != "" {
			keep := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
			os.MkdirAll(keep, 0o755)
			for _, h := range l.Hosts() {
				os.WriteFile(filepath.Join(keep, h.Name()+".log"), []byte(h.Log()), 0o644)
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab cleanup: %v", err)
		}
	})
	return l
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func startAll(t *testing.T, l *lab.Lab, extra string) {
	t.Helper()
	for _, h := range l.Hosts() {
		start(t, h, extra)
	}
}

func start(t *testing.T, h *lab.Host, extra string) {
	t.Helper()
	if _, err := h.WriteConfig(extra); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(meshdBin); err != nil {
		t.Fatal(err)
	}
}

// status asks a host's running daemon, exactly as a user would.
func status(t *testing.T, h *lab.Host) (*control.Status, error) {
	t.Helper()
	out, err := exec.Command(meshdBin, "status", "--json", "--socket", h.ControlSocket()).Output()
	if err != nil {
		return nil, fmt.Errorf("meshd status on %s: %w", h.Name(), err)
	}
	var st control.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("meshd status --json on %s: %w\n%s", h.Name(), err, out)
	}
	return &st, nil
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	began := time.Now()
	if err := lab.WaitFor(ctx, 200*time.Millisecond, cond); err != nil {
		t.Fatalf("%s: not reached within %s: %v", what, timeout, err)
	}
	return time.Since(began)
}

// run executes a command in a namespace and returns its output.
func run(t *testing.T, ns string, argv ...string) string {
	t.Helper()
	out, err := lab.Exec(context.Background(), ns, argv...)
	if err != nil {
		t.Fatalf("%s in %s: %v\n%s", strings.Join(argv, " "), ns, err, out)
	}
	return out
}
