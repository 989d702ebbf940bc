package config

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestEnvTyposAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        []string
	}{
		{"MESHD_WIREGUARD_MTUU", "1300", []string{"names no config key", "did you mean MESHD_WIREGUARD_MTU (wireguard.mtu)?"}},
		{"MESHD_NODE_NAEM", "h9", []string{"did you mean MESHD_NODE_NAME (node_name)?"}},
		{"MESHD_JOIN", "192.0.2.9", []string{"did you mean MESHD_CLUSTER_JOIN (cluster.join)?"}},
		{"MESHD_LISTEN_PORT", "51999", []string{"did you mean MESHD_WIREGUARD_LISTEN_PORT"}},
		{"MESHD_WIREGUARD_BIND_PORT", "8000", []string{"did you mean MESHD_CLUSTER_BIND_PORT"}},
		{"MESHD_WIREGUARD_BANANAS", "1", []string{"unset it; the variables for [wireguard] are", "MESHD_WIREGUARD_MTU"}},
		{"MESHD_SEGMENTS", "blue", []string{"array of tables", "[[segments]]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			t.Setenv(tc.name, tc.value)
			_, err := Load(writeConfig(t, fullTOML))
			checkError(t, err, tc.name, tc.want...)
		})
	}
}

// Variables other tools read share the prefix; config must not trip
// over them, nor over an empty variable (which viper ignores too).
func TestEnvOfOtherToolsIsIgnored(t *testing.T) {
	isolate(t)
	for _, name := range []string{"MESHD_E2E_LOGS", "MESHD_GOSSIP_MEMBERS", "MESHD_VAGRANT_LAYOUT", "MESHD_CHECK_ALL",
		"MESHD_LAB_FAKE_MESHD", "MESHD_VM_TIMEOUT", "MESHD_NODE_INDEX", "MESHD_SOCKET"} {
		t.Setenv(name, "1")
	}
	t.Setenv("MESHD_WIREGUARD_MTUU", "")
	t.Setenv("MESHD_WIREGUARD_MTU", "1300")
	if cfg := mustLoad(t, fullTOML); cfg.WireGuard.MTU != 1300 {
		t.Errorf("MTU %d, want 1300 from MESHD_WIREGUARD_MTU", cfg.WireGuard.MTU)
	}
}

// scriptOnly are variables of test/scenario/node.sh and the Vagrantfile
// that look like config keys. The scripts read them to render a config
// file; meshd never runs with them in its environment (systemd starts it
// in the VMs, node.sh only asks it for status through --socket), so
// config may refuse them.
var scriptOnly = []string{"MESHD_GOSSIP_KEY_FILE", "MESHD_JOIN", "MESHD_MODE", "MESHD_SITE_BLOCK",
	"MESHD_SITE_ENV", "MESHD_WAN_ADVERTISE", "MESHD_WAN_NET", "MESHD_WAN_VIA"}

// TestEnvNamesInTheRepository finds every MESHD_ name the repository's
// code and scripts use: each must set a key, or be one config leaves
// alone, or be listed in scriptOnly. A new tool variable that config
// would refuse fails here, not in someone's test run. Documents (Markdown,
// the example config) and package config are skipped: they spell typos
// on purpose.
func TestEnvNamesInTheRepository(t *testing.T) {
	name := regexp.MustCompile(`\bMESHD_[A-Z0-9_]*[A-Z0-9]\b`)
	found := map[string]string{}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".md") || strings.HasSuffix(path, ".toml") || filepath.Dir(path) == filepath.Join("..", "config") {
			return nil
		}
		if info, err := d.Info(); err != nil || info.Size() > 1<<20 {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, n := range name.FindAllString(string(raw), -1) {
			found[n] = path
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) < 10 {
		t.Fatalf("found only %d MESHD_ names; is the walk broken?", len(found))
	}
	for n, path := range found {
		if slices.Contains(scriptOnly, n) {
			if e := checkEnvName(n, envKeys()); e == nil {
				t.Errorf("%s is listed as script-only but config accepts it: drop it from scriptOnly", n)
			}
			continue
		}
		if e := checkEnvName(n, envKeys()); e != nil {
			t.Errorf("%s (used in %s) would be refused by config: %v; rename it, or list it in scriptOnly if meshd never runs with it", n, path, e)
		}
	}
}
