package config

import (
	"strings"
	"testing"
)

// opsTOML sets cni_conf_dir at the top level: it must precede the first
// table header, or TOML would file it under that table.
func opsTOML(cniLine, metrics string) string {
	return cniLine + "\n" + fullTOML + metrics
}

func TestOpsDefaults(t *testing.T) {
	isolate(t)
	cfg := mustLoad(t, fullTOML)
	if cfg.CNIConfDir != "/etc/cni/net.d" {
		t.Errorf("CNIConfDir = %q, want /etc/cni/net.d", cfg.CNIConfDir)
	}
	if cfg.Metrics.Listen != "" {
		t.Errorf("Metrics.Listen = %q, want disabled", cfg.Metrics.Listen)
	}
}

func TestOpsLoads(t *testing.T) {
	for _, tc := range []struct {
		name, cni, metrics  string
		wantDir, wantListen string
	}{
		{"custom", `cni_conf_dir = "/run/cni//net.d/"`, "\n[metrics]\nlisten = \"127.0.0.1:9474\"\n", "/run/cni/net.d", "127.0.0.1:9474"},
		{"disabled", `cni_conf_dir = ""`, "\n[metrics]\nlisten = \"\"\n", "", ""},
		{"ipv6", "", "\n[metrics]\nlisten = \"[::1]:9474\"\n", "/etc/cni/net.d", "[::1]:9474"},
		{"every address", "", "\n[metrics]\nlisten = \":9474\"\n", "/etc/cni/net.d", ":9474"},
		{"zone", "", "\n[metrics]\nlisten = \"[fe80::1%eth0]:9474\"\n", "/etc/cni/net.d", "[fe80::1%eth0]:9474"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			cfg := mustLoad(t, opsTOML(tc.cni, tc.metrics))
			if cfg.CNIConfDir != tc.wantDir || cfg.Metrics.Listen != tc.wantListen {
				t.Errorf("got (%q, %q), want (%q, %q)", cfg.CNIConfDir, cfg.Metrics.Listen, tc.wantDir, tc.wantListen)
			}
		})
	}
}

func TestOpsEnvOverrides(t *testing.T) {
	isolate(t)
	t.Setenv("MESHD_CNI_CONF_DIR", "/opt/cni/conf")
	t.Setenv("MESHD_METRICS_LISTEN", "0.0.0.0:9100")
	cfg := mustLoad(t, fullTOML)
	if cfg.CNIConfDir != "/opt/cni/conf" || cfg.Metrics.Listen != "0.0.0.0:9100" {
		t.Errorf("got (%q, %q)", cfg.CNIConfDir, cfg.Metrics.Listen)
	}
}

func TestOpsInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, cni, metrics string
		key                string
		want               []string
	}{
		{"relative cni dir", `cni_conf_dir = "cni/net.d"`, "", keyCNIConfDir, []string{"not an absolute path", "/etc/cni/net.d"}},
		{"cni dir not a string", `cni_conf_dir = 1`, "", keyCNIConfDir, []string{"must be a string"}},
		{"no port", "", "\n[metrics]\nlisten = \"127.0.0.1\"\n", keyMetricsListen, []string{"not host:port"}},
		{"port zero", "", "\n[metrics]\nlisten = \"127.0.0.1:0\"\n", keyMetricsListen, []string{`"0" is not a port`}},
		{"port too big", "", "\n[metrics]\nlisten = \"127.0.0.1:65536\"\n", keyMetricsListen, []string{"65536"}},
		{"named port", "", "\n[metrics]\nlisten = \"127.0.0.1:http\"\n", keyMetricsListen, []string{`"http"`}},
		{"hostname", "", "\n[metrics]\nlisten = \"localhost:9474\"\n", keyMetricsListen, []string{"hostnames are not accepted"}},
		{"unbracketed ipv6", "", "\n[metrics]\nlisten = \"::1:9474\"\n", keyMetricsListen, []string{"not host:port"}},
		{"listen not a string", "", "\n[metrics]\nlisten = 9474\n", keyMetricsListen, []string{"must be a string"}},
		{"metrics as value", "", "\nmetrics = \"127.0.0.1:9474\"\n", "metrics", []string{"must be a table"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			// A top-level "metrics = ..." must come before any table too.
			body := opsTOML(tc.cni, tc.metrics)
			if strings.HasPrefix(tc.metrics, "\nmetrics") {
				body = tc.metrics + fullTOML
			}
			_, err := Load(writeConfig(t, body))
			checkError(t, err, tc.key, tc.want...)
		})
	}
}

func TestOpsTypoSuggestion(t *testing.T) {
	isolate(t)
	_, err := Load(writeConfig(t, fullTOML+"\n[metrics]\nlisten_addr = \"127.0.0.1:9474\"\n"))
	checkError(t, err, "metrics.listen_addr", "unknown key")

	_, err = Load(writeConfig(t, "cni_confdir = \"/etc/cni/net.d\"\n"+fullTOML))
	checkError(t, err, "cni_confdir", `did you mean "cni_conf_dir"`)
}

func TestOpsEnvBadValueNamesVariable(t *testing.T) {
	isolate(t)
	t.Setenv("MESHD_METRICS_LISTEN", "nope")
	_, err := Load(writeConfig(t, fullTOML))
	checkError(t, err, keyMetricsListen, "MESHD_METRICS_LISTEN")
}

func TestContainerKeys(t *testing.T) {
	isolate(t)
	cfg := mustLoad(t, "cni_ipam_dir = \"/srv/leases/\"\ndocker_plugin_socket = \"/run/docker/plugins/mesh.sock\"\n"+fullTOML)
	if cfg.CNIIPAMDir != "/srv/leases" || cfg.DockerPluginSocket != "/run/docker/plugins/mesh.sock" {
		t.Errorf("got (%q, %q)", cfg.CNIIPAMDir, cfg.DockerPluginSocket)
	}
	if cfg := mustLoad(t, "docker_plugin_socket = \"\"\n"+fullTOML); cfg.DockerPluginSocket != "" {
		t.Errorf("docker_plugin_socket \"\" should disable the driver, got %q", cfg.DockerPluginSocket)
	}
	t.Setenv("MESHD_DOCKER_PLUGIN_SOCKET", "/tmp/p/meshd.sock")
	if cfg := mustLoad(t, fullTOML); cfg.DockerPluginSocket != "/tmp/p/meshd.sock" {
		t.Errorf("env override: %q", cfg.DockerPluginSocket)
	}
}

func TestContainerKeysInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, line, key string
		want            []string
	}{
		{"relative ipam dir", `cni_ipam_dir = "leases"`, keyCNIIPAMDir, []string{"not an absolute path", "/var/lib/cni/networks"}},
		{"empty ipam dir", `cni_ipam_dir = ""`, keyCNIIPAMDir, []string{"not an absolute path"}},
		{"relative socket", `docker_plugin_socket = "meshd.sock"`, keyDockerPluginSocket, []string{"not an absolute path"}},
		{"no .sock", `docker_plugin_socket = "/run/docker/plugins/meshd"`, keyDockerPluginSocket, []string{"NAME.sock", `"" to disable`}},
		{"only .sock", `docker_plugin_socket = "/run/docker/plugins/.sock"`, keyDockerPluginSocket, []string{"NAME.sock"}},
		{"too long", `docker_plugin_socket = "/` + strings.Repeat("p", 110) + `/meshd.sock"`, keyDockerPluginSocket, []string{"107"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			_, err := Load(writeConfig(t, tc.line+"\n"+fullTOML))
			checkError(t, err, tc.key, tc.want...)
		})
	}
}
