package packaging

import (
	"bufio"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/testenv"
)

const unitPath = "meshd.service"

// unit maps "Section.Key" to every value assigned, in order; systemd
// accumulates list settings across repeated assignments.
type unit map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.HasSuffix(line, `\`) {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
			}
			key := section + "." + strings.TrimSpace(k)
			u[key] = append(u[key], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// words splits every assignment of key into its space-separated items.
func (u unit) words(key string) []string {
	var out []string
	for _, v := range u[key] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

func (u unit) one(t *testing.T, key string) string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Errorf("%s is set %d times, want once", key, len(u[key]))
		return ""
	}
	return u[key][0]
}

func TestUnitDirectives(t *testing.T) {
	u := parseUnit(t, unitPath)
	for key, want := range map[string]string{
		"Service.ExecStart":                "/usr/local/bin/meshd run --config /etc/meshd/meshd.toml",
		"Service.ExecReload":               "/bin/kill -HUP $MAINPID",
		"Service.Restart":                  "on-failure",
		"Service.RestartSec":               "2",
		"Service.RestartPreventExitStatus": "2",
		"Service.NoNewPrivileges":          "yes",
		"Service.ProtectSystem":            "strict",
		"Service.ProtectHome":              "yes",
		"Service.PrivateTmp":               "yes",
		"Service.LockPersonality":          "yes",
		"Service.DeviceAllow":              "/dev/net/tun rw",
		"Service.DevicePolicy":             "closed",
		"Service.StateDirectory":           "meshd",
		"Service.RuntimeDirectory":         "meshd",
		"Install.WantedBy":                 "multi-user.target",
	} {
		if got := u.one(t, key); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if _, ok := u["Service.User"]; ok {
		t.Error("User= is set: meshd needs root (netlink, nftables, /dev/net/tun)")
	}
	// PrivateDevices would hide /dev/net/tun, PrivateNetwork the host's
	// network: either breaks meshd outright.
	for _, key := range []string{"Service.PrivateDevices", "Service.PrivateNetwork", "Service.PrivateUsers"} {
		if v := u[key]; len(v) > 0 && v[len(v)-1] != "no" {
			t.Errorf("%s=%s breaks meshd", key, v[len(v)-1])
		}
	}
}

func TestUnitCapabilities(t *testing.T) {
	u := parseUnit(t, unitPath)
	caps := u.words("Service.CapabilityBoundingSet")
	used := []string{"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
	for _, need := range used {
		if !slices.Contains(caps, need) {
			t.Errorf("CapabilityBoundingSet lacks %s", need)
		}
	}
	for _, c := range caps {
		if !slices.Contains(used, c) {
			t.Errorf("CapabilityBoundingSet grants %s, which meshd does not use", c)
		}
	}
	families := u.words("Service.RestrictAddressFamilies")
	slices.Sort(families)
	if want := []string{"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}; !slices.Equal(families, want) {
		t.Errorf("RestrictAddressFamilies = %v, want %v", families, want)
	}
}

// TestUnitMatchesConfigDefaults: with the example config, every path
// meshd writes must be writable inside the sandbox, or the daemon would
// fail at startup under systemd only.
func TestUnitMatchesConfigDefaults(t *testing.T) {
	cfg := loadExample(t)
	u := parseUnit(t, unitPath)
	if got := "/var/lib/" + u.one(t, "Service.StateDirectory"); got != cfg.DataDir {
		t.Errorf("StateDirectory gives %s, data_dir is %s", got, cfg.DataDir)
	}
	if got := "/run/" + u.one(t, "Service.RuntimeDirectory"); got != filepath.Dir(cfg.ControlSocket) {
		t.Errorf("RuntimeDirectory gives %s, control_socket is in %s", got, filepath.Dir(cfg.ControlSocket))
	}
	rw := u.words("Service.ReadWritePaths")
	// wireguard-go serves its UAPI socket there, shared with wg(8).
	for _, dir := range []string{"/run/wireguard", cfg.CNIConfDir, cfg.CNIIPAMDir, filepath.Dir(cfg.DockerPluginSocket)} {
		if !slices.Contains(rw, dir) {
			t.Errorf("ReadWritePaths lacks %s", dir)
		}
		// Under ProtectSystem=strict a missing ReadWritePaths entry fails
		// the unit (and meshd could not create it), so ExecStartPre must.
		if !strings.Contains(strings.Join(u["Service.ExecStartPre"], "\n"), dir) {
			t.Errorf("no ExecStartPre creates %s", dir)
		}
	}
}

func loadExample(t *testing.T) *config.Config {
	t.Helper()
	key := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(key, []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MESHD_CLUSTER_GOSSIP_KEY_FILE", key)
	for _, k := range []string{"MESHD_DATA_DIR", "MESHD_CONTROL_SOCKET", "MESHD_CNI_CONF_DIR", "MESHD_CNI_IPAM_DIR", "MESHD_DOCKER_PLUGIN_SOCKET"} {
		t.Setenv(k, "")
	}
	cfg, err := config.Load("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestSystemdAnalyzeVerify runs systemd's own checker, which needs no
// running systemd. It insists that ExecStart's binary exists, so unless
// meshd is installed the check runs on a copy pointing at a stub.
func TestSystemdAnalyzeVerify(t *testing.T) {
	// Under CI a missing tool fails the test: make deps installs systemd.
	testenv.RequireTools(t, "systemd-analyze")
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal(err)
	}
	path := unitPath
	if _, err := os.Stat("/usr/local/bin/meshd"); err != nil {
		path = withStubBinary(t)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	// verify exits 0 after warnings such as unknown keys; any output is a
	// problem.
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", path, err, out)
	}
}

func withStubBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	stub := filepath.Join(dir, "meshd")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(dir, "meshd.service")
	text := strings.ReplaceAll(string(raw), "/usr/local/bin/meshd", stub)
	if err := os.WriteFile(copyPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return copyPath
}
