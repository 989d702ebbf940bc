package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fullTOML sets every key to a non-default value, so a key that is read
// from the wrong place (or not at all) shows up as a struct mismatch.
const fullTOML = `
node_name = "h7"
data_dir = "/srv/meshd"
control_socket = "/run/m.sock"
log_level = "debug"
log_format = "json"

[cluster]
bind_addr = "192.0.2.1"
bind_port = 7947
advertise_addr = "198.51.100.1"
join = ["192.0.2.2:7946", "192.0.2.3"]
gossip_key_file = "KEYFILE"
profile = "local"
probe_interval = "500ms"

[wireguard]
interface = "wg-mesh"
listen_port = 51821
mode = "kernel"
mtu = 1420
endpoint = "203.0.113.9:51999"
persistent_keepalive = 10

[routing]
table_base = 1000
rule_priority = 20000

[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
subnet = "10.42.1.0/24"

[[segments]]
name = "green-6"
cidr = "fd42::/48"
subnet = "fd42:0:0:1::/64"
`

const minimalTOML = `
[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
subnet = "10.42.1.0/24"
`

func testKey(n int) []byte {
	k := make([]byte, n)
	for i := range k {
		k[i] = byte(i + 1)
	}
	return k
}

// isolate blanks every MESHD_* variable so the developer's environment
// cannot leak into a test; viper ignores empty variables.
func isolate(t *testing.T) {
	t.Helper()
	for _, k := range knownKeys() {
		t.Setenv(envName(k), "")
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeKey(t *testing.T, n int) string {
	t.Helper()
	return writeFile(t, "gossip.key", "  "+base64.StdEncoding.EncodeToString(testKey(n))+"\n")
}

// writeConfig writes body with KEYFILE replaced by a valid 32-byte key file.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	return writeFile(t, "meshd.toml", strings.ReplaceAll(body, "KEYFILE", writeKey(t, 32)))
}

func mustLoad(t *testing.T, body string) *Config {
	t.Helper()
	cfg, err := Load(writeConfig(t, body))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return cfg
}

func TestLoadFull(t *testing.T) {
	isolate(t)
	path := writeConfig(t, fullTOML)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		NodeName:      "h7",
		DataDir:       "/srv/meshd",
		ControlSocket: "/run/m.sock",
		LogLevel:      "debug",
		LogFormat:     "json",
		Site:          Site{Name: "default"},
		Cluster: Cluster{
			BindAddr:      netip.MustParseAddr("192.0.2.1"),
			BindPort:      7947,
			AdvertiseAddr: netip.MustParseAddr("198.51.100.1"),
			Join:          []string{"192.0.2.2:7946", "192.0.2.3:7946"},
			GossipKeyFile: cfg.Cluster.GossipKeyFile, // a temp path, checked below
			GossipKey:     testKey(32),
			GossipKeyring: "/srv/meshd/gossip.keyring",
			Profile:       ProfileLocal,
			ProbeInterval: 500 * time.Millisecond,
		},
		WireGuard: WireGuard{
			Interface:           "wg-mesh",
			ListenPort:          51821,
			Mode:                ModeKernel,
			MTU:                 1420,
			Endpoint:            netip.MustParseAddrPort("203.0.113.9:51999"),
			PersistentKeepalive: 10,
		},
		Routing:            Routing{TableBase: 1000, RulePriority: 20000},
		CNIConfDir:         "/etc/cni/net.d",
		CNIIPAMDir:         "/var/lib/cni/networks",
		DockerPluginSocket: "/run/docker/plugins/meshd.sock",
		Segments: []Segment{
			{Name: "blue", CIDR: netip.MustParsePrefix("10.42.0.0/16"), Subnet: netip.MustParsePrefix("10.42.1.0/24"), HostPrefix: 24},
			{Name: "green-6", CIDR: netip.MustParsePrefix("fd42::/48"), Subnet: netip.MustParsePrefix("fd42:0:0:1::/64"), HostPrefix: 64},
		},
	}
	if filepath.Base(cfg.Cluster.GossipKeyFile) != "gossip.key" {
		t.Errorf("GossipKeyFile = %q", cfg.Cluster.GossipKeyFile)
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestSubnetIsOptional(t *testing.T) {
	key := writeKey(t, 16)
	cfg, err := Parse(strings.NewReader(fmt.Sprintf("[cluster]\ngossip_key_file = %q\n[[segments]]\nname = \"blue\"\ncidr = \"10.42.0.0/16\"\n[[segments]]\nname = \"six\"\ncidr = \"fd42::/48\"\nhost_prefix = 56\n", key)))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Segments[0]; s.Subnet.IsValid() || s.HostPrefix != 24 {
		t.Fatalf("segment without subnet: %+v; want no subnet and a /24 claim", s)
	}
	if s := cfg.Segments[1]; s.HostPrefix != 56 {
		t.Fatalf("IPv6 host_prefix %d, want 56", s.HostPrefix)
	}
}

func TestDefaults(t *testing.T) {
	isolate(t)
	key := writeKey(t, 16)
	t.Setenv("MESHD_CLUSTER_GOSSIP_KEY_FILE", key)
	host, err := os.Hostname()
	if err != nil {
		t.Skip("no hostname:", err)
	}
	cfg, err := Load(writeFile(t, "meshd.toml", minimalTOML))
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		NodeName:      host,
		DataDir:       "/var/lib/meshd",
		ControlSocket: "/run/meshd/meshd.sock",
		LogLevel:      "info",
		LogFormat:     "text",
		Site:          Site{Name: "default"},
		Cluster: Cluster{
			BindAddr:      netip.MustParseAddr("0.0.0.0"),
			BindPort:      7946,
			GossipKeyFile: key,
			GossipKey:     testKey(16),
			GossipKeyring: "/var/lib/meshd/gossip.keyring",
			Profile:       ProfileLAN,
		},
		WireGuard: WireGuard{
			Interface:           "mesh0",
			ListenPort:          51820,
			Mode:                ModeAuto,
			PersistentKeepalive: 0, // "0s": meshd keeps NATed tunnels open itself
		},
		Routing:            Routing{TableBase: 51800, RulePriority: 31000},
		CNIConfDir:         "/etc/cni/net.d",
		CNIIPAMDir:         "/var/lib/cni/networks",
		DockerPluginSocket: "/run/docker/plugins/meshd.sock",
		Segments: []Segment{
			{Name: "blue", CIDR: netip.MustParsePrefix("10.42.0.0/16"), Subnet: netip.MustParsePrefix("10.42.1.0/24"), HostPrefix: 24},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestDefaultGossipKeyFile(t *testing.T) {
	isolate(t)
	_, err := Load(writeFile(t, "meshd.toml", minimalTOML))
	var e *Error
	if !errors.As(err, &e) || e.Key != keyGossipKeyFile || !strings.Contains(e.Problem, "/etc/meshd/gossip.key") {
		t.Fatalf("want error about /etc/meshd/gossip.key, got %v", err)
	}
}

func TestEnvOverrides(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
	}{
		{"keys present in file", fullTOML},
		{"keys absent from file", minimalTOML},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			t.Setenv("MESHD_NODE_NAME", "h9")
			t.Setenv("MESHD_LOG_LEVEL", "warn")
			t.Setenv("MESHD_CLUSTER_BIND_ADDR", "2001:db8::9")
			t.Setenv("MESHD_CLUSTER_BIND_PORT", "8000")
			t.Setenv("MESHD_CLUSTER_JOIN", " 192.0.2.5, [2001:db8::6]:8000 ,")
			t.Setenv("MESHD_CLUSTER_GOSSIP_KEY_FILE", writeKey(t, 24))
			t.Setenv("MESHD_WIREGUARD_LISTEN_PORT", "51999")
			t.Setenv("MESHD_WIREGUARD_MODE", "userspace")
			t.Setenv("MESHD_ROUTING_TABLE_BASE", "300")
			cfg := mustLoad(t, tc.body)
			got := []any{cfg.NodeName, cfg.LogLevel, cfg.Cluster.BindAddr, cfg.Cluster.BindPort,
				cfg.Cluster.Join, cfg.Cluster.GossipKey, cfg.WireGuard.ListenPort, cfg.WireGuard.Mode, cfg.Routing.TableBase}
			want := []any{"h9", "warn", netip.MustParseAddr("2001:db8::9"), 8000,
				[]string{"192.0.2.5:7946", "[2001:db8::6]:8000"}, testKey(24), 51999, ModeUserspace, 300}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %v\nwant %v", got, want)
			}
		})
	}
}

func TestEnvBadValueNamesVariable(t *testing.T) {
	isolate(t)
	t.Setenv("MESHD_WIREGUARD_LISTEN_PORT", "abc")
	_, err := Load(writeConfig(t, fullTOML))
	checkError(t, err, keyListenPort, "MESHD_WIREGUARD_LISTEN_PORT")
}

func TestNormalisation(t *testing.T) {
	for _, tc := range []struct {
		name      string
		old, new  string
		check     func(*Config) any
		want      any
		extraBody string
	}{
		{
			name: "join forms", old: `join = ["192.0.2.2:7946", "192.0.2.3"]`,
			new:   `join = ["192.0.2.2", "[2001:db8::2]", "2001:db8::3", "h2.example:8000", "[2001:db8::4]:9"]`,
			check: func(c *Config) any { return c.Cluster.Join },
			want:  []string{"192.0.2.2:7946", "[2001:db8::2]:7946", "[2001:db8::3]:7946", "h2.example:8000", "[2001:db8::4]:9"},
		},
		{
			name: "join empty", old: `join = ["192.0.2.2:7946", "192.0.2.3"]`, new: `join = []`,
			check: func(c *Config) any { return c.Cluster.Join }, want: []string(nil),
		},
		{
			name: "endpoint empty", old: `endpoint = "203.0.113.9:51999"`, new: `endpoint = ""`,
			check: func(c *Config) any { return c.WireGuard.Endpoint }, want: netip.AddrPort{},
		},
		{
			name: "endpoint bare IPv4 takes listen_port", old: `endpoint = "203.0.113.9:51999"`, new: `endpoint = "203.0.113.9"`,
			check: func(c *Config) any { return c.WireGuard.Endpoint }, want: netip.MustParseAddrPort("203.0.113.9:51821"),
		},
		{
			name: "endpoint bare IPv6 takes listen_port", old: `endpoint = "203.0.113.9:51999"`, new: `endpoint = "2001:db8::1"`,
			check: func(c *Config) any { return c.WireGuard.Endpoint }, want: netip.MustParseAddrPort("[2001:db8::1]:51821"),
		},
		{
			name: "endpoint IPv6 with port", old: `endpoint = "203.0.113.9:51999"`, new: `endpoint = "[2001:db8::1]:4000"`,
			check: func(c *Config) any { return c.WireGuard.Endpoint }, want: netip.MustParseAddrPort("[2001:db8::1]:4000"),
		},
		{
			name: "advertise defaults to bind_addr", old: `advertise_addr = "198.51.100.1"`, new: `advertise_addr = ""`,
			check: func(c *Config) any { return c.Cluster.AdvertiseAddr }, want: netip.MustParseAddr("192.0.2.1"),
		},
		{
			name: "advertise left zero for IPv4 wildcard", old: `advertise_addr = "198.51.100.1"`, new: `advertise_addr = ""`,
			extraBody: "0.0.0.0",
			check:     func(c *Config) any { return c.Cluster.AdvertiseAddr }, want: netip.Addr{},
		},
		{
			name: "advertise left zero for IPv6 wildcard", old: `advertise_addr = "198.51.100.1"`, new: `advertise_addr = ""`,
			extraBody: "::",
			check:     func(c *Config) any { return c.Cluster.AdvertiseAddr }, want: netip.Addr{},
		},
		{
			name: "table range just below reserved", old: `table_base = 1000`, new: `table_base = 251`,
			check: func(c *Config) any { return c.Routing.TableBase }, want: 251,
		},
		{
			name: "table range just above reserved", old: `table_base = 1000`, new: `table_base = 256`,
			check: func(c *Config) any { return c.Routing.TableBase }, want: 256,
		},
		{
			name: "table range up to 2^31-1", old: `table_base = 1000`, new: `table_base = 2147483646`,
			check: func(c *Config) any { return c.Routing.TableBase }, want: 2147483646,
		},
		{
			name: "subnet may be the largest proper slice", old: `subnet = "10.42.1.0/24"`, new: `subnet = "10.42.128.0/17"`,
			check: func(c *Config) any { return c.Segments[0].Subnet }, want: netip.MustParsePrefix("10.42.128.0/17"),
		},
		{
			name: "mtu minimum", old: `mtu = 1420`, new: `mtu = 1280`,
			check: func(c *Config) any { return c.WireGuard.MTU }, want: 1280,
		},
		{
			name: "keepalive off", old: `persistent_keepalive = 10`, new: `persistent_keepalive = 0`,
			check: func(c *Config) any { return c.WireGuard.PersistentKeepalive }, want: 0,
		},
		{
			name: "empty node_name means hostname", old: `node_name = "h7"`, new: `node_name = ""`,
			check: func(c *Config) any { h, _ := os.Hostname(); return c.NodeName == h }, want: true,
		},
		{
			name: "paths are cleaned", old: `data_dir = "/srv/meshd"`, new: `data_dir = "/srv//meshd/"`,
			check: func(c *Config) any { return c.DataDir }, want: "/srv/meshd",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			body := mustReplace(t, fullTOML, tc.old, tc.new)
			if tc.extraBody != "" {
				body = mustReplace(t, body, `bind_addr = "192.0.2.1"`, fmt.Sprintf("bind_addr = %q", tc.extraBody))
			}
			if got := tc.check(mustLoad(t, body)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %#v, want %#v", got, tc.want)
			}
		})
	}
}

func mustReplace(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("test bug: %q not in config", old)
	}
	return strings.Replace(s, old, new, 1)
}

// checkError asserts the contract every caller relies on: a *Error with the
// right Key, rendered on one line that names the key.
func checkError(t *testing.T, err error, key string, substrs ...string) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("want error for %q, got nil", key)
	}
	var e *Error
	if !errors.As(err, &e) || !IsConfigError(err) {
		t.Fatalf("error is %T, not *config.Error: %v", err, err)
	}
	msg := err.Error()
	t.Log(msg)
	if e.Key != key {
		t.Errorf("Key = %q, want %q (%s)", e.Key, key, msg)
	}
	if strings.ContainsAny(msg, "\r\n") {
		t.Errorf("Error() is not one line: %q", msg)
	}
	if !strings.HasPrefix(msg, "config") {
		t.Errorf("Error() does not start with %q: %s", "config", msg)
	}
	if key != "" && !strings.Contains(msg, " "+key+": ") {
		t.Errorf("Error() does not name key %q: %s", key, msg)
	}
	if e.Problem == "" || e.Fix == "" {
		t.Errorf("Problem and Fix must both be set: %#v", e)
	}
	for _, s := range substrs {
		if !strings.Contains(msg, s) {
			t.Errorf("Error() lacks %q: %s", s, msg)
		}
	}
	return e
}

func TestInvalid(t *testing.T) {
	type edit struct{ old, new string }
	addSegment := func(name, cidr, subnet string) edit {
		return edit{`subnet = "fd42:0:0:1::/64"`, fmt.Sprintf("subnet = \"fd42:0:0:1::/64\"\n\n[[segments]]\nname = %q\ncidr = %q\nsubnet = %q\n", name, cidr, subnet)}
	}
	for _, tc := range []struct {
		name  string
		edits []edit
		key   string
		want  []string // substrings of Error()
	}{
		// Unknown keys, with and without suggestions.
		{"unknown top-level key", []edit{{`node_name = "h7"`, `nod_name = "h7"`}}, "nod_name", []string{`did you mean "node_name"`}},
		{"unknown key in section", []edit{{`listen_port = 51821`, `listen_prot = 51821`}}, "wireguard.listen_prot", []string{`did you mean "listen_port"?`}},
		{"unknown key far from any", []edit{{`mtu = 1420`, "mtu = 1420\nbananas = 1"}}, "wireguard.bananas", []string{"unknown key", "listen_port"}},
		{"key in wrong section", []edit{{`log_format = "json"`, "log_format = \"json\"\nbind_port = 1"}}, "bind_port", []string{`"bind_port" under [cluster]`}},
		{"misspelt section", []edit{{`[wireguard]`, `[wireguad]`}}, "wireguad.endpoint", []string{`under [wireguard]`}},
		{"unknown key in segment", []edit{{`name = "blue"`, `nmae = "blue"`}}, "segments[0].nmae", []string{`did you mean "name"`}},
		{"unknown far key in segment", []edit{{`name = "green-6"`, "name = \"green-6\"\ncolour = 1"}}, "segments[1].colour", []string{"name, cidr, subnet"}},
		{"unknown section", []edit{{`log_format = "json"`, "log_format = \"json\"\n\n[bogus]\nzzz = 1\n"}}, "bogus", []string{"unknown section [bogus]", "[cluster]", "[[segments]]"}},
		{"section as scalar", []edit{{`log_format = "json"`, "log_format = \"json\"\nrouting = 5"}, {"[routing]\ntable_base = 1000\nrule_priority = 20000", ""}}, "routing", []string{"table"}},

		// Segments.
		{"segments missing", []edit{{fullTOML[strings.Index(fullTOML, "[[segments]]"):], ""}}, "segments", []string{"no segments"}},
		{"segments as single table", []edit{{fullTOML[strings.Index(fullTOML, "[[segments]]"):], "[segments]\nname = \"blue\"\n"}}, "segments", []string{"[[segments]]"}},
		{"segments as scalar", []edit{{fullTOML[strings.Index(fullTOML, "[[segments]]"):], ""}, {`node_name = "h7"`, "node_name = \"h7\"\nsegments = 3"}}, "segments", []string{"array of tables"}},
		{"subnet outside cidr", []edit{{`subnet = "10.42.1.0/24"`, `subnet = "10.43.1.0/24"`}}, "segments[0].subnet", []string{"not inside", "10.42.0.0/16"}},
		{"subnet larger than cidr", []edit{{`subnet = "10.42.1.0/24"`, `subnet = "10.0.0.0/8"`}}, "segments[0].subnet", []string{"not inside"}},
		{"subnet other family", []edit{{`subnet = "10.42.1.0/24"`, `subnet = "fd00::/64"`}}, "segments[0].subnet", []string{"family"}},
		{"subnet not canonical", []edit{{`subnet = "10.42.1.0/24"`, `subnet = "10.42.1.7/24"`}}, "segments[0].subnet", []string{"did you mean 10.42.1.0/24?"}},
		{"cidr not canonical", []edit{{`cidr = "10.42.0.0/16"`, `cidr = "10.42.1.0/16"`}}, "segments[0].cidr", []string{"host bits", "did you mean 10.42.0.0/16?"}},
		{"cidr without length", []edit{{`cidr = "10.42.0.0/16"`, `cidr = "10.42.0.0"`}}, "segments[0].cidr", []string{"no prefix length"}},
		{"cidr garbage", []edit{{`cidr = "fd42::/48"`, `cidr = "fd42::/129"`}}, "segments[1].cidr", []string{"not a valid CIDR"}},
		{"host_prefix wider than cidr", []edit{{`subnet = "10.42.1.0/24"`, `host_prefix = 8`}}, "segments[0].host_prefix", []string{"does not fit"}},
		{"host_prefix past the address", []edit{{`subnet = "10.42.1.0/24"`, `host_prefix = 33`}}, "segments[0].host_prefix", []string{"does not fit"}},
		{"host_prefix equal to cidr", []edit{{`subnet = "10.42.1.0/24"`, `host_prefix = 16`}}, "segments[0].host_prefix", []string{"smaller than its segment"}},
		{"subnet is the whole segment", []edit{{`subnet = "10.42.1.0/24"`, `subnet = "10.42.0.0/16"`}}, "segments[0].subnet", []string{"whole segment"}},
		{"host_prefix not a number", []edit{{`subnet = "10.42.1.0/24"`, `host_prefix = "24"`}}, "segments[0].host_prefix", []string{"whole number"}},
		{"name missing", []edit{{`name = "blue"`, ``}}, "segments[0].name", []string{"missing"}},
		{"name wrong type", []edit{{`name = "blue"`, `name = 5`}}, "segments[0].name", []string{"integer 5"}},
		{"name uppercase", []edit{{`name = "blue"`, `name = "Blue"`}}, "segments[0].name", []string{"not a valid segment name"}},
		{"name too long", []edit{{`name = "blue"`, `name = "abcdefghijklmnop"`}}, "segments[0].name", nil},
		{"name leading dash", []edit{{`name = "blue"`, `name = "-blue"`}}, "segments[0].name", nil},
		{"duplicate names", []edit{addSegment("blue", "10.99.0.0/16", "10.99.1.0/24")}, "segments[2].name", []string{"already used by segments[0]"}},
		{"cidr is a default route", []edit{{`cidr = "10.42.0.0/16"`, `cidr = "0.0.0.0/0"`}, {`subnet = "10.42.1.0/24"`, `subnet = "10.42.1.0/24"`}}, "segments[0].cidr", []string{"default route", "cut it off"}},
		{"v6 cidr is a default route", []edit{{`cidr = "fd42::/48"`, `cidr = "::/0"`}}, "segments[1].cidr", []string{"default route"}},
		{"cidr is IPv4-mapped", []edit{{`cidr = "fd42::/48"`, `cidr = "::ffff:10.44.0.0/112"`}}, "segments[1].cidr", []string{"IPv4-mapped", "10.44.0.0/16"}},
		{"overlapping cidrs", []edit{addSegment("red", "10.42.128.0/17", "10.42.129.0/24")}, "segments[2].cidr", []string{"overlaps 10.42.0.0/16", `"blue"`}},
		{"overlapping v6 cidrs", []edit{addSegment("red", "fd42::/32", "fd42:0:5::/64")}, "segments[2].cidr", []string{"overlaps fd42::/48"}},

		// Gossip key.
		{"key file missing", []edit{{`"KEYFILE"`, `"/nonexistent/meshd/gossip.key"`}}, "cluster.gossip_key_file", []string{"does not exist", "meshd keygen gossip"}},
		{"key file empty path", []edit{{`"KEYFILE"`, `""`}}, "cluster.gossip_key_file", []string{"empty"}},
		{"key file is a directory", []edit{{`"KEYFILE"`, `"/"`}}, "cluster.gossip_key_file", []string{"is a directory"}},
		{"key file is a device", []edit{{`"KEYFILE"`, `"/dev/zero"`}}, "cluster.gossip_key_file", []string{"is a device"}},

		// Ports and integers.
		{"listen_port too big", []edit{{`listen_port = 51821`, `listen_port = 70000`}}, "wireguard.listen_port", []string{"wireguard.listen_port: 70000 is out of range; use a port between 1 and 65535"}},
		{"listen_port is the gossip port", []edit{{`listen_port = 51821`, `listen_port = 7947`}}, "wireguard.listen_port", []string{"cluster.bind_port", "UDP"}},
		{"node name with a zero-width space", []edit{{`node_name = "h7"`, "node_name = \"h\u200b7\"\n"}}, "node_name", []string{"U+200B", "invisible"}},
		{"node name with a bidi override", []edit{{`node_name = "h7"`, "node_name = \"h\u202e7\"\n"}}, "node_name", []string{"U+202E"}},
		{"listen_port zero", []edit{{`listen_port = 51821`, `listen_port = 0`}}, "wireguard.listen_port", []string{"out of range"}},
		{"bind_port negative", []edit{{`bind_port = 7947`, `bind_port = -1`}}, "cluster.bind_port", []string{"-1 is out of range"}},
		{"bind_port huge", []edit{{`bind_port = 7947`, `bind_port = 9223372036854775807`}}, "cluster.bind_port", []string{"out of range"}},
		{"mtu too small", []edit{{`mtu = 1420`, `mtu = 1000`}}, "wireguard.mtu", []string{"1000 is out of range", "1280"}},
		{"mtu too big", []edit{{`mtu = 1420`, `mtu = 65536`}}, "wireguard.mtu", nil},
		{"mtu negative", []edit{{`mtu = 1420`, `mtu = -1`}}, "wireguard.mtu", nil},
		{"keepalive negative", []edit{{`persistent_keepalive = 10`, `persistent_keepalive = -1`}}, "wireguard.persistent_keepalive", nil},
		{"keepalive too big", []edit{{`persistent_keepalive = 10`, `persistent_keepalive = 65536`}}, "wireguard.persistent_keepalive", nil},

		// Wrong types.
		{"port is a string", []edit{{`listen_port = 51821`, `listen_port = "abc"`}}, "wireguard.listen_port", []string{`"abc" is not a whole number`}},
		{"port is a float", []edit{{`listen_port = 51821`, `listen_port = 5.5`}}, "wireguard.listen_port", []string{"float 5.5"}},
		{"port is a bool", []edit{{`listen_port = 51821`, `listen_port = true`}}, "wireguard.listen_port", []string{"boolean"}},
		{"port is an array", []edit{{`listen_port = 51821`, `listen_port = [1]`}}, "wireguard.listen_port", []string{"array"}},
		{"string is an int", []edit{{`node_name = "h7"`, `node_name = 7`}}, "node_name", []string{"must be a string", "integer 7"}},
		{"string is a date", []edit{{`log_level = "debug"`, `log_level = 2024-01-01`}}, "log_level", []string{"date"}},
		{"join is an int", []edit{{`join = ["192.0.2.2:7946", "192.0.2.3"]`, `join = 5`}}, "cluster.join", []string{"array of strings"}},
		{"join entry is an int", []edit{{`join = ["192.0.2.2:7946", "192.0.2.3"]`, `join = ["192.0.2.2", 5]`}}, "cluster.join[1]", []string{"integer 5"}},
		{"segment is not a table", []edit{{fullTOML[strings.Index(fullTOML, "[[segments]]"):], ""}, {`node_name = "h7"`, "node_name = \"h7\"\nsegments = [1]"}}, "segments[0]", []string{"must be a table"}},

		// Enumerations.
		{"bad mode", []edit{{`mode = "kernel"`, `mode = "fast"`}}, "wireguard.mode", []string{"auto, kernel, userspace"}},
		{"bad log level", []edit{{`log_level = "debug"`, `log_level = "verbose"`}}, "log_level", []string{"debug, info, warn, error"}},
		{"log level is case-sensitive", []edit{{`log_level = "debug"`, `log_level = "DEBUG"`}}, "log_level", nil},
		{"bad log format", []edit{{`log_format = "json"`, `log_format = "xml"`}}, "log_format", []string{"text, json"}},

		// Addresses.
		{"bad bind_addr", []edit{{`bind_addr = "192.0.2.1"`, `bind_addr = "192.0.2.300"`}}, "cluster.bind_addr", []string{"not a valid IP"}},
		{"bind_addr hostname", []edit{{`bind_addr = "192.0.2.1"`, `bind_addr = "h1.example"`}}, "cluster.bind_addr", []string{"not a valid IP"}},
		{"bind_addr with port", []edit{{`bind_addr = "192.0.2.1"`, `bind_addr = "192.0.2.1:7946"`}}, "cluster.bind_addr", []string{"includes a port", "cluster.bind_port"}},
		{"bind_addr empty", []edit{{`bind_addr = "192.0.2.1"`, `bind_addr = ""`}}, "cluster.bind_addr", nil},
		{"bad advertise_addr", []edit{{`advertise_addr = "198.51.100.1"`, `advertise_addr = "nope"`}}, "cluster.advertise_addr", []string{"not a valid IP"}},
		{"wildcard advertise_addr", []edit{{`advertise_addr = "198.51.100.1"`, `advertise_addr = "::"`}}, "cluster.advertise_addr", []string{"wildcard"}},
		{"zoned advertise_addr", []edit{{`advertise_addr = "198.51.100.1"`, `advertise_addr = "fe80::1%eth0"`}}, "cluster.advertise_addr", []string{"zone"}},
		{"endpoint hostname", []edit{{`endpoint = "203.0.113.9:51999"`, `endpoint = "vpn.example.com"`}}, "wireguard.endpoint", []string{"is a hostname"}},
		{"endpoint hostname with port", []edit{{`endpoint = "203.0.113.9:51999"`, `endpoint = "vpn.example.com:51820"`}}, "wireguard.endpoint", []string{"is a hostname"}},
		{"endpoint garbage", []edit{{`endpoint = "203.0.113.9:51999"`, `endpoint = "1.2.3.4:x:y"`}}, "wireguard.endpoint", []string{"not a valid IP"}},
		{"endpoint port zero", []edit{{`endpoint = "203.0.113.9:51999"`, `endpoint = "203.0.113.9:0"`}}, "wireguard.endpoint", []string{"port 0"}},
		{"endpoint port too big", []edit{{`endpoint = "203.0.113.9:51999"`, `endpoint = "203.0.113.9:65536"`}}, "wireguard.endpoint", []string{`invalid port "65536"`}},
		{"endpoint wildcard", []edit{{`endpoint = "203.0.113.9:51999"`, `endpoint = "0.0.0.0"`}}, "wireguard.endpoint", []string{"wildcard"}},
		{"join bad port", []edit{{`"192.0.2.3"]`, `"192.0.2.3:70000"]`}}, "cluster.join[1]", []string{"invalid port"}},
		{"join empty port", []edit{{`"192.0.2.3"]`, `"192.0.2.3:"]`}}, "cluster.join[1]", []string{"invalid port"}},
		{"join bad host", []edit{{`"192.0.2.3"]`, `"bad host!:7946"]`}}, "cluster.join[1]", []string{"not a valid IP address or hostname"}},
		{"join empty entry", []edit{{`"192.0.2.3"]`, `""]`}}, "cluster.join[1]", []string{"empty"}},
		{"join too many colons", []edit{{`"192.0.2.3"]`, `"a:b:c"]`}}, "cluster.join[1]", []string{"not host:port"}},

		// Names and paths.
		{"interface empty", []edit{{`interface = "wg-mesh"`, `interface = ""`}}, "wireguard.interface", nil},
		{"interface too long", []edit{{`interface = "wg-mesh"`, `interface = "abcdefghijklmnop"`}}, "wireguard.interface", []string{"16 bytes"}},
		{"interface slash", []edit{{`interface = "wg-mesh"`, `interface = "wg/0"`}}, "wireguard.interface", []string{"forbidden"}},
		{"interface colon", []edit{{`interface = "wg-mesh"`, `interface = "wg:0"`}}, "wireguard.interface", nil},
		{"interface space", []edit{{`interface = "wg-mesh"`, `interface = "wg 0"`}}, "wireguard.interface", nil},
		{"interface dot", []edit{{`interface = "wg-mesh"`, `interface = "."`}}, "wireguard.interface", nil},
		{"interface dotdot", []edit{{`interface = "wg-mesh"`, `interface = ".."`}}, "wireguard.interface", nil},
		{"node_name with space", []edit{{`node_name = "h7"`, `node_name = "h 7"`}}, "node_name", []string{"whitespace"}},
		{"node_name too long", []edit{{`node_name = "h7"`, `node_name = "` + strings.Repeat("h", 129) + `"`}}, "node_name", nil},
		{"relative data_dir", []edit{{`data_dir = "/srv/meshd"`, `data_dir = "var/lib/meshd"`}}, "data_dir", []string{"absolute"}},
		{"control_socket too long", []edit{{`control_socket = "/run/m.sock"`, `control_socket = "/` + strings.Repeat("s", 107) + `"`}}, "control_socket", []string{"107"}},

		// Routing ranges.
		{"table_base zero", []edit{{`table_base = 1000`, `table_base = 0`}}, "routing.table_base", []string{"out of range"}},
		{"table_base negative", []edit{{`table_base = 1000`, `table_base = -5`}}, "routing.table_base", nil},
		{"table_base is main", []edit{{`table_base = 1000`, `table_base = 254`}}, "routing.table_base", []string{"253..255"}},
		{"table range reaches default", []edit{{`table_base = 1000`, `table_base = 252`}}, "routing.table_base", []string{"tables 252..253"}},
		{"table_base too big", []edit{{`table_base = 1000`, `table_base = 2147483648`}}, "routing.table_base", nil},
		{"table range past 2^31", []edit{{`table_base = 1000`, `table_base = 2147483647`}}, "routing.table_base", []string{"2147483647..2147483648"}},
		{"rule_priority zero", []edit{{`rule_priority = 20000`, `rule_priority = 0`}}, "routing.rule_priority", nil},
		{"rule_priority too big", []edit{{`rule_priority = 20000`, `rule_priority = 32766`}}, "routing.rule_priority", []string{"32764"}},
		{"rule_priority reaching main", []edit{{`rule_priority = 20000`, `rule_priority = 32765`}}, "routing.rule_priority", []string{"32764", "32766"}},

		// The file itself.
		{"bad TOML", []edit{{`mtu = 1420`, `mtu = `}}, "", []string{"invalid TOML at line"}},
		{"duplicate TOML key", []edit{{`mtu = 1420`, "mtu = 1420\nmtu = 1500"}}, "", []string{"invalid TOML"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			body := fullTOML
			for _, ed := range tc.edits {
				body = mustReplace(t, body, ed.old, ed.new)
			}
			path := writeConfig(t, body)
			_, err := Load(path)
			checkError(t, err, tc.key, tc.want...)
			if !strings.HasPrefix(err.Error(), "config "+path+": ") {
				t.Errorf("Error() does not start with the path: %s", err)
			}
		})
	}
}

func TestGossipKeyContent(t *testing.T) {
	for _, tc := range []struct {
		name, content, want string
	}{
		{"not base64", "this is not base64!!\n", "not valid base64"},
		{"url alphabet", base64.URLEncoding.EncodeToString([]byte{0xfb, 0xff, 0xfe, 0xfb, 0xff, 0xfe, 0xfb, 0xff, 0xfe, 0xfb, 0xff, 0xfe, 0xfb, 0xff, 0xfe, 0xfb}), "not valid base64"},
		{"too short", base64.StdEncoding.EncodeToString(testKey(15)), "decodes to 15 bytes"},
		{"between sizes", base64.StdEncoding.EncodeToString(testKey(20)), "decodes to 20 bytes"},
		{"too long", base64.StdEncoding.EncodeToString(testKey(33)), "decodes to 33 bytes"},
		{"empty", "\n", "decodes to 0 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			t.Setenv("MESHD_CLUSTER_GOSSIP_KEY_FILE", writeFile(t, "k", tc.content))
			_, err := Load(writeConfig(t, fullTOML))
			e := checkError(t, err, keyGossipKeyFile, tc.want)
			if strings.Contains(err.Error(), strings.TrimSpace(tc.content)) && strings.TrimSpace(tc.content) != "" {
				t.Errorf("error leaks the key file content: %s", e)
			}
		})
	}
}

func TestGossipKeySizes(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		isolate(t)
		t.Setenv("MESHD_CLUSTER_GOSSIP_KEY_FILE", writeKey(t, n))
		if cfg := mustLoad(t, fullTOML); !reflect.DeepEqual(cfg.Cluster.GossipKey, testKey(n)) {
			t.Errorf("%d-byte key decoded wrongly", n)
		}
	}
}

func TestMissingConfigFile(t *testing.T) {
	isolate(t)
	path := filepath.Join(t.TempDir(), "nope.toml")
	_, err := Load(path)
	e := checkError(t, err, "", path, "--config", "does not exist")
	if !errors.Is(e, os.ErrNotExist) {
		t.Errorf("cause not wrapped: %v", e.Err)
	}
}

func TestConfigFileUnreadable(t *testing.T) {
	isolate(t)
	_, err := Load(t.TempDir())
	checkError(t, err, "", "--config")
	_, err = Load("")
	checkError(t, err, "", "--config")
}

func TestLoadOnlyReads(t *testing.T) {
	isolate(t)
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	runDir := filepath.Join(dir, "run")
	body := mustReplace(t, fullTOML, `data_dir = "/srv/meshd"`, fmt.Sprintf("data_dir = %q", dataDir))
	body = mustReplace(t, body, `control_socket = "/run/m.sock"`, fmt.Sprintf("control_socket = %q", filepath.Join(runDir, "m.sock")))
	mustLoad(t, body)
	for _, p := range []string{dataDir, runDir} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Load created %s", p)
		}
	}
}

func TestParse(t *testing.T) {
	isolate(t)
	t.Setenv("MESHD_CLUSTER_GOSSIP_KEY_FILE", writeKey(t, 32))
	cfg, err := Parse(strings.NewReader(fullTOML))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "h7" || len(cfg.Segments) != 2 {
		t.Errorf("unexpected config %+v", cfg)
	}
	_, err = Parse(strings.NewReader(`[wireguard]` + "\nlisten_port = 70000\n" + minimalTOML))
	if err == nil || err.Error() != "config: wireguard.listen_port: 70000 is out of range; use a port between 1 and 65535" {
		t.Errorf("Parse error = %v", err)
	}
}

func TestIsConfigError(t *testing.T) {
	wrapped := fmt.Errorf("starting: %w", &Error{Key: "x", Problem: "p", Fix: "f"})
	if !IsConfigError(wrapped) {
		t.Error("wrapped *Error not recognised")
	}
	if IsConfigError(errors.New("other")) || IsConfigError(nil) {
		t.Error("non-config error recognised")
	}
}

func TestErrorIsOneLine(t *testing.T) {
	e := &Error{Path: "/etc/meshd.toml", Key: "k", Problem: "bad\nthing", Fix: "do\r\nthat"}
	if got, want := e.Error(), "config /etc/meshd.toml: k: bad thing; do that"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
