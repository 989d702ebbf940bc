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
