package config

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshd/meshd/identity"
)

// testIdentity makes a CA and a certificate for h7 (fullTOML's node) on
// blue and green-6, valid from nb to na, and returns the [identity]
// table naming them.
func testIdentity(t *testing.T, nb, na time.Time) string {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.InitCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	cert, err := ca.Sign(identity.Cert{Name: "h7", Segments: []string{"blue", "green-6"}, NotBefore: nb.Truncate(time.Second), NotAfter: na.Truncate(time.Second), PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteHost(filepath.Join(dir, "h7"), cert, key, false); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("\n[identity]\nca_file = %q\ncert_file = %q\nkey_file = %q\n",
		filepath.Join(dir, "ca", "ca.crt"), filepath.Join(dir, "h7", "host.crt"), filepath.Join(dir, "h7", "host.key"))
}

// The commands that only talk to the daemon must keep working once the
// host's certificate has expired; run and check must not.
func TestLoadClientAcceptsACertificateOutsideItsValidity(t *testing.T) {
	isolate(t)
	now := time.Now()
	for name, window := range map[string][2]time.Time{
		"expired":         {now.Add(-48 * time.Hour), now.Add(-time.Hour)},
		"not yet valid":   {now.Add(time.Hour), now.Add(48 * time.Hour)},
		"valid (control)": {now.Add(-time.Hour), now.Add(time.Hour)},
	} {
		t.Run(name, func(t *testing.T) {
			path := writeConfig(t, fullTOML+testIdentity(t, window[0], window[1]))
			cfg, err := LoadClient(path)
			if err != nil {
				t.Fatalf("LoadClient: %v", err)
			}
			if cfg.ControlSocket != "/run/m.sock" || !cfg.Identity.Enabled() {
				t.Errorf("LoadClient read %q, identity %v", cfg.ControlSocket, cfg.Identity.Enabled())
			}
			_, err = Load(path)
			if name == "valid (control)" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			checkError(t, err, keyCertFile, "sign a new certificate")
		})
	}
}

func TestTrustMode(t *testing.T) {
	isolate(t)
	id := testIdentity(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if cfg := mustLoad(t, fullTOML+id); cfg.Identity.Mode != TrustStrict {
		t.Errorf("default mode %q, want strict", cfg.Identity.Mode)
	}
	if cfg := mustLoad(t, fullTOML+id+"mode = \"transitional\"\n"); cfg.Identity.Mode != TrustTransitional {
		t.Errorf("mode %q, want transitional", cfg.Identity.Mode)
	}
	_, err := Load(writeConfig(t, fullTOML+id+"mode = \"lenient\"\n"))
	checkError(t, err, keyIdentityMode, `"lenient" is not a valid value`, "strict, transitional")
	_, err = Load(writeConfig(t, fullTOML+"\n[identity]\nmode = \"transitional\"\n"))
	checkError(t, err, keyIdentityMode, `"transitional" needs the cluster CA`, "set ca_file, cert_file and key_file")
}
