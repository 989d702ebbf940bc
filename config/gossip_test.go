package config

import (
	"strings"
	"testing"
	"time"
)

func TestFailureDetection(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		profile    Profile
		interval   time.Duration
	}{
		{"defaults", "", ProfileLAN, 0},
		{"wan", `profile = "wan"`, ProfileWAN, 0},
		{"faster probes", `probe_interval = "250ms"`, ProfileLAN, 250 * time.Millisecond},
		{"empty interval is the profile's", `probe_interval = ""`, ProfileLAN, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			cfg := mustLoad(t, strings.Replace(fullTOML, "profile = \"local\"\nprobe_interval = \"500ms\"\n", tc.toml+"\n", 1))
			if cfg.Cluster.Profile != tc.profile || cfg.Cluster.ProbeInterval != tc.interval {
				t.Errorf("got %q %s, want %q %s", cfg.Cluster.Profile, cfg.Cluster.ProbeInterval, tc.profile, tc.interval)
			}
		})
	}
}

func TestFailureDetectionEnv(t *testing.T) {
	isolate(t)
	t.Setenv("MESHD_CLUSTER_PROFILE", "wan")
	t.Setenv("MESHD_CLUSTER_PROBE_INTERVAL", "3s")
	cfg := mustLoad(t, fullTOML)
	if cfg.Cluster.Profile != ProfileWAN || cfg.Cluster.ProbeInterval != 3*time.Second {
		t.Errorf("got %q %s", cfg.Cluster.Profile, cfg.Cluster.ProbeInterval)
	}
}

func TestFailureDetectionInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, toml, key string
		want            []string
	}{
		{"unknown profile", `profile = "fast"`, keyProfile, []string{`"fast" is not a valid value`, "lan, wan, local"}},
		{"profile not a string", `profile = 1`, keyProfile, []string{"must be a string"}},
		{"no unit", `probe_interval = "500"`, keyProbeInterval, []string{`"500" is not a duration`, `"500ms"`}},
		{"too short", `probe_interval = "10ms"`, keyProbeInterval, []string{"10ms is out of range", "100ms and 1m"}},
		{"too long", `probe_interval = "2m"`, keyProbeInterval, []string{"2m0s is out of range"}},
		{"a number", `probe_interval = 1`, keyProbeInterval, []string{"must be a string"}},
		{"typo", `probe_intervall = "1s"`, "cluster.probe_intervall", []string{`did you mean "probe_interval"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			_, err := Load(writeConfig(t, strings.Replace(fullTOML, "profile = \"local\"\nprobe_interval = \"500ms\"\n", tc.toml+"\n", 1)))
			checkError(t, err, tc.key, tc.want...)
		})
	}
}
