package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/control"
)

// signedConfig writes a config for h1 whose certificate, from a new CA,
// is valid from notBefore to notAfter (RFC 3339).
func signedConfig(t *testing.T, notBefore, notAfter string) string {
	t.Helper()
	caDir := initCA(t)
	hostDir := filepath.Join(t.TempDir(), "h1")
	if out, code := execute(t, "ca", "sign", "--ca", caDir, "--name", "h1", "--segments", "blue,green",
		"--not-before", notBefore, "--not-after", notAfter, "--out", hostDir); code != 0 {
		t.Fatalf("ca sign: %s", out)
	}
	return writeTestConfig(t, fmt.Sprintf("[identity]\nca_file = %q\ncert_file = %q\nkey_file = %q\n",
		filepath.Join(caDir, "ca.crt"), filepath.Join(hostDir, "host.crt"), filepath.Join(hostDir, "host.key")))
}

// The documented health probe is 'meshd status --config': it must reach
// the daemon after the host's certificate expired, while 'meshd check'
// (like 'meshd run') still refuses the certificate.
func TestClientCommandsWorkWithAnExpiredCertificate(t *testing.T) {
	cfg := signedConfig(t, "2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z")
	sock := filepath.Join(filepath.Dir(cfg), "meshd.sock")
	srv, err := control.Listen(sock, fakeDaemon(control.Status{Node: control.Node{Name: "h1"}}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if out, code := execute(t, "status", "--config", cfg); code != 0 || !strings.Contains(out, "node h1") {
		t.Errorf("status --config with an expired certificate: exit %d\n%s", code, out)
	}
	if out, code := execute(t, "policy", "explain", "--config", cfg, "--from", "blue", "--to", "blue"); code != 0 {
		t.Errorf("policy explain with an expired certificate: exit %d\n%s", code, out)
	}
	if out, code := execute(t, "check", "--config", cfg); code != 2 || !strings.Contains(out, "identity.cert_file") || !strings.Contains(out, "expired") {
		t.Errorf("check with an expired certificate: exit %d\n%s\nwant exit 2 naming identity.cert_file", code, out)
	}
}

// status shows the certificate, and --check blames its expiry rather
// than the missing handshakes it causes.
func TestStatusNamesCertificateExpiry(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "meshd.sock")
	st := control.Status{
		Node:  control.Node{Name: "h1"},
		Peers: []control.Peer{{Name: "h2", State: "alive", Configured: true, HandshakeAgeSeconds: -1}},
		Identity: &control.Identity{Mode: "transitional", Certificate: "h1", NotAfter: "2026-01-01T00:00:00Z",
			ExpirySeconds: -3600, Unsigned: []string{"h2", "h3"}},
	}
	srv, err := control.Listen(sock, liveStatus{&st})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	out, code := execute(t, "status", "--socket", sock, "--check")
	if code != 1 || !strings.Contains(out, "certificate h1 expired at 2026-01-01T00:00:00Z: every other host refuses this one; renew it with 'meshd ca sign --force' and 'meshd reload'") ||
		strings.Contains(out, "no handshake yet") {
		t.Errorf("--check with an expired certificate: exit %d\n%s", code, out)
	}
	out, _ = execute(t, "status", "--socket", sock)
	if !strings.Contains(out, "identity: certificate h1 EXPIRED at 2026-01-01T00:00:00Z") ||
		!strings.Contains(out, "mode transitional, accepting unsigned announcements from 2 members: h2, h3") {
		t.Errorf("status:\n%s", out)
	}

	st.Identity.ExpirySeconds = 5 * 3600
	st.Peers[0].HandshakeAgeSeconds = 10
	out, code = execute(t, "status", "--socket", sock, "--check")
	if code != 1 || !strings.Contains(out, "certificate h1 expires in 5h0m0s") {
		t.Errorf("--check with a day to go: exit %d\n%s", code, out)
	}
	st.Identity.ExpirySeconds = 40 * 86400
	if out, code := execute(t, "status", "--socket", sock, "--check"); code != 0 {
		t.Errorf("--check with 40 days to go: exit %d\n%s", code, out)
	}
	if out, _ := execute(t, "status", "--socket", sock); !strings.Contains(out, "valid until 2026-01-01T00:00:00Z (40 days left); mode transitional") {
		t.Errorf("status:\n%s", out)
	}
}

// liveStatus serves whatever the test has put in st by now.
type liveStatus struct{ st *control.Status }

func (l liveStatus) Status() control.Status { return *l.st }
