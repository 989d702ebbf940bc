package daemon

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/config"
)

// claimingConfig is ts.config(name) without the subnet, so the host
// claims its slice.
func (ts *twoSites) claimingConfig(t *testing.T, name string) *config.Config {
	t.Helper()
	ts.config(name)
	h := ts.hosts[name]
	text, err := os.ReadFile(filepath.Join(h.dir, "meshd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	return h.config(regexp.MustCompile(`(?m)^subnet = .*$`).ReplaceAllString(string(text), ""))
}

// A host of a site claims its slice inside the site's block: other hosts
// of the site refuse anything else, so a slice from the whole segment
// left the host without peers.
func TestClaimedSliceLiesInTheSiteBlock(t *testing.T) {
	ts := newTwoSites(t)
	block := netip.MustParsePrefix("10.42.16.0/20") // site b's
	startDaemon(t, ts.hosts["b1"], ts.config("b1"), Options{})
	r := startDaemon(t, ts.hosts["b2"], ts.claimingConfig(t, "b2"), Options{})
	slice := r.d.ann.local().Segments[0].Subnet
	if !slice.IsValid() || !block.Contains(slice.Addr()) || slice.Bits() != 24 {
		t.Fatalf("b2 claimed %s, want a /24 of site b's block %s", slice, block)
	}
	eventually(t, 15*time.Second, "b1 accepts b2's claimed slice", func() error {
		return expectPeers(ts, "b1", map[string][]string{"b2": {slice.String()}})
	})
}

// A saved claim is restored only if it can still be announced; anything
// else is logged with the reason and claimed anew.
func TestSavedClaimMustFitTheSite(t *testing.T) {
	for _, tc := range []struct {
		name, saved, why string
	}{
		{"fits", "10.42.17.0/24", ""},
		{"outside the site block", "10.42.40.0/24", "outside this site's block 10.42.16.0/20"},
		{"not canonical", "10.42.17.5/24", "not canonical"},
		{"another length", "10.42.17.0/25", "host_prefix"},
		{"outside the segment", "10.50.17.0/24", "outside the segment's cidr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTwoSites(t)
			cfg := ts.claimingConfig(t, "b2")
			if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
				t.Fatal(err)
			}
			saved := fmt.Sprintf(`{"blue": {"prefix": %q, "claimed_at": 7}}`, tc.saved)
			if err := os.WriteFile(filepath.Join(cfg.DataDir, claimsFile), []byte(saved), 0o600); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			c := newClaimer(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
			key, _ := wgtypes.GeneratePrivateKey()
			ann := newAnnouncer(cfg, key, netip.MustParseAddrPort("192.0.2.1:51820"))
			if err := c.load(ann); err != nil {
				t.Fatal(err)
			}
			got := ann.segments()[0].Subnet
			if tc.why == "" {
				if got.String() != tc.saved {
					t.Fatalf("restored %s, want the saved %s", got, tc.saved)
				}
				return
			}
			if got.IsValid() {
				t.Fatalf("restored %s from a saved claim that does not fit (%s)", got, tc.why)
			}
			if !bytes.Contains(logs.Bytes(), []byte(tc.why)) {
				t.Errorf("the log does not say why the claim was dropped (%s):\n%s", tc.why, logs.String())
			}
		})
	}
}
