package main

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/identity"
)

func initCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if out, code := execute(t, "ca", "init", "--out", dir); code != 0 {
		t.Fatalf("ca init: exit %d: %s", code, out)
	}
	return dir
}

func TestCAInitAndSign(t *testing.T) {
	caDir := initCA(t)
	for name, want := range map[string]os.FileMode{"ca.key": 0o600, "ca.crt": 0o644} {
		if info, err := os.Stat(filepath.Join(caDir, name)); err != nil || info.Mode().Perm() != want {
			t.Errorf("%s: %v, want mode %v", name, err, want)
		}
	}
	hostDir := filepath.Join(t.TempDir(), "h1")
	out, code := execute(t, "ca", "sign", "--ca", caDir, "--name", "h1", "--segments", "blue,green",
		"--subnets", "blue=10.42.1.0/24,green=10.43.1.0/24", "--out", hostDir)
	if code != 0 || !strings.Contains(out, "signed h1") {
		t.Fatalf("ca sign: exit %d: %s", code, out)
	}
	if info, err := os.Stat(hostDir); err != nil || info.Mode().Perm() != 0o700 {
		t.Errorf("host directory: %v, want mode 0700", err)
	}
	cert, _, err := identity.LoadHost(filepath.Join(hostDir, "host.crt"), filepath.Join(hostDir, "host.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPub, err := identity.LoadCAPublic(filepath.Join(caDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.Verify(caPub, time.Now()); err != nil {
		t.Fatal(err)
	}
	if d := cert.NotAfter.Sub(cert.NotBefore); d != 8760*time.Hour {
		t.Errorf("default validity %v, want one year", d)
	}
	if err := cert.Allows(identity.Slice{Segment: "green", Prefix: mustPrefix("10.43.1.0/25")}); err != nil {
		t.Error(err)
	}
	if err := cert.Allows(identity.Slice{Segment: "green", Prefix: mustPrefix("10.43.2.0/24")}); err == nil {
		t.Error("pinned certificate allows a slice outside its pin")
	}

	// Re-signing keeps the old identity unless --force says otherwise.
	out, code = execute(t, "ca", "sign", "--ca", caDir, "--name", "h1", "--segments", "blue", "--out", hostDir)
	if code != 2 || !strings.Contains(out, "--force") {
		t.Errorf("re-sign without --force: exit %d: %s", code, out)
	}
	if _, code = execute(t, "ca", "sign", "--ca", caDir, "--name", "h1", "--segments", "blue", "--out", hostDir, "--force"); code != 0 {
		t.Error("re-sign with --force failed")
	}
}

func TestCAInitRefusesOverwrite(t *testing.T) {
	caDir := initCA(t)
	before, _ := os.ReadFile(filepath.Join(caDir, "ca.key"))
	out, code := execute(t, "ca", "init", "--out", caDir)
	if code != 2 || !strings.Contains(out, "refusing to overwrite") {
		t.Fatalf("second ca init: exit %d: %s", code, out)
	}
	if after, _ := os.ReadFile(filepath.Join(caDir, "ca.key")); string(after) != string(before) {
		t.Fatal("ca.key was replaced")
	}
}

func TestCASignExpiredForTests(t *testing.T) {
	caDir := initCA(t)
	hostDir := filepath.Join(t.TempDir(), "old")
	if out, code := execute(t, "ca", "sign", "--ca", caDir, "--name", "old", "--segments", "blue", "--out", hostDir,
		"--not-before", "2020-01-01T00:00:00Z", "--not-after", "2020-01-02T00:00:00Z"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	cert, _, err := identity.LoadHost(filepath.Join(hostDir, "host.crt"), filepath.Join(hostDir, "host.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPub, _ := identity.LoadCAPublic(filepath.Join(caDir, "ca.crt"))
	if err := cert.Verify(caPub, time.Now()); !errors.Is(err, identity.ErrExpired) {
		t.Fatalf("Verify: %v, want expired", err)
	}
}

func TestCASignBadFlags(t *testing.T) {
	caDir := initCA(t)
	out := filepath.Join(t.TempDir(), "h")
	base := []string{"ca", "sign", "--ca", caDir, "--out", out}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--segments", "blue"}, "--name"},
		{[]string{"--name", "h 1", "--segments", "blue"}, "--name"},
		{[]string{"--name", "h1"}, "--segments"},
		{[]string{"--name", "h1", "--segments", "Blue"}, "--segments"},
		{[]string{"--name", "h1", "--segments", "blue,blue"}, "--segments"},
		{[]string{"--name", "h1", "--segments", "blue", "--subnets", "blue:10.42.1.0/24"}, "--subnets"},
		{[]string{"--name", "h1", "--segments", "blue", "--subnets", "blue=10.42.1.1/24"}, "--subnets"},
		{[]string{"--name", "h1", "--segments", "blue", "--subnets", "red=10.42.1.0/24"}, "--subnets"},
		{[]string{"--name", "h1", "--segments", "blue,green", "--subnets", "blue=10.42.1.0/24"}, "--subnets"},
		{[]string{"--name", "h1", "--segments", "blue", "--valid-for", "0s"}, "--valid-for"},
		{[]string{"--name", "h1", "--segments", "blue", "--valid-for", "soon"}, "--valid-for"},
		{[]string{"--name", "h1", "--segments", "blue", "--not-before", "yesterday"}, "--not-before"},
		{[]string{"--name", "h1", "--segments", "blue", "--not-after", "2020-01-01"}, "--not-after"},
		{[]string{"--name", "h1", "--segments", "blue", "--not-before", "2020-01-02T00:00:00Z", "--not-after", "2020-01-01T00:00:00Z"}, "--not-after"},
		{[]string{"--name", "h1", "--segments", "blue", "--ca", filepath.Join(caDir, "nope")}, "--ca"},
		{[]string{"--name", "h1", "--segments", "blue", "stray"}, "takes no arguments"},
	}
	for _, tc := range cases {
		got, code := execute(t, append(base, tc.args...)...)
		if code != 2 || !strings.Contains(got, tc.want) || strings.Count(strings.TrimSpace(got), "\n") != 0 {
			t.Errorf("ca sign %s: exit %d, output %q; want exit 2, one line naming %s", strings.Join(tc.args, " "), code, got, tc.want)
		}
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused ca sign created %s", out)
	}
	if got, code := execute(t, "ca", "sign", "--name", "h1", "--segments", "blue"); code != 2 || !strings.Contains(got, "--out") {
		t.Errorf("missing --out: exit %d, %q", code, got)
	}
}

func TestCASignRefusesReadableCAKey(t *testing.T) {
	caDir := initCA(t)
	os.Chmod(filepath.Join(caDir, "ca.key"), 0o644)
	got, code := execute(t, "ca", "sign", "--ca", caDir, "--name", "h1", "--segments", "blue", "--out", filepath.Join(t.TempDir(), "h"))
	if code != 2 || !strings.Contains(got, "ca.key") || !strings.Contains(got, "0644") {
		t.Fatalf("exit %d: %s", code, got)
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestCAShow(t *testing.T) {
	caDir := initCA(t)
	hostDir := filepath.Join(t.TempDir(), "gw1")
	if out, code := execute(t, "ca", "sign", "--ca", caDir, "--name", "gw1", "--segments", "blue,green", "--site", "paris", "--gateway",
		"--subnets", "blue=10.42.16.0/20,green=10.43.16.0/20", "--not-before", "2025-01-01T00:00:00Z", "--not-after", "2999-01-01T00:00:00Z", "--out", hostDir); code != 0 {
		t.Fatalf("ca sign: %s", out)
	}
	crt := filepath.Join(hostDir, "host.crt")
	cert, err := identity.LoadCert(crt)
	if err != nil {
		t.Fatal(err)
	}
	caPub, _ := identity.LoadCAPublic(filepath.Join(caDir, "ca.crt"))
	out, code := execute(t, "ca", "show", crt, "--ca", caDir)
	for _, want := range []string{"name       gw1\n", "site       paris\n", "gateway    yes\n", "segments   blue, green\n",
		"subnets    blue=10.42.16.0/20, green=10.43.16.0/20\n", "valid      2025-01-01T00:00:00Z to 2999-01-01T00:00:00Z (", " days left)\n",
		"key        " + identity.Fingerprint(cert.PublicKey) + "\n", "CA         " + identity.Fingerprint(caPub) + " (" + filepath.Join(caDir, "ca.crt") + "): signature verified\n"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("ca show: exit %d, output lacks %q:\n%s", code, want, out)
		}
	}
	if out, code := execute(t, "ca", "show", crt); code != 0 || !strings.Contains(out, "CA         not checked") {
		t.Errorf("ca show without a CA: exit %d\n%s", code, out)
	}
	if out, code := execute(t, "ca", "show", crt, "--ca", initCA(t)); code != 0 || !strings.Contains(out, "NOT signed by this CA") {
		t.Errorf("ca show against another CA: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{filepath.Join(caDir, "ca.crt")}, {filepath.Join(caDir, "none.crt")}, {crt, "--ca", hostDir}, {}} {
		if out, code := execute(t, append([]string{"ca", "show"}, args...)...); code != 2 {
			t.Errorf("ca show %q: exit %d, want 2\n%s", args, code, out)
		}
	}
}

// A CA is created where the operator works, not in /etc/meshd on a host.
func TestCAInitDefaultsToTheWorkingDirectory(t *testing.T) {
	t.Chdir(t.TempDir())
	if out, code := execute(t, "ca", "init"); code != 0 || !strings.Contains(out, "created CA in meshd-ca") {
		t.Fatalf("ca init: exit %d: %s", code, out)
	}
	if out, code := execute(t, "ca", "sign", "--name", "h1", "--segments", "blue", "--out", "h1"); code != 0 {
		t.Fatalf("ca sign with the default --ca: exit %d: %s", code, out)
	}
	if out, _ := execute(t, "ca", "init", "--help"); !strings.Contains(out, "a meshd host never needs it") {
		t.Errorf("ca init --help does not say why:\n%s", out)
	}
}
