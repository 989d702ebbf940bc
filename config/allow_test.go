package config

import (
	"os"
	"reflect"
	"testing"

	"github.com/meshd/meshd/policy"
	"github.com/pelletier/go-toml/v2"
)

// allowTOML goes after fullTOML, whose segments are blue (10.42.0.0/16)
// and green-6 (fd42::/48).
const allowTOML = `
[[allow]]
from = "blue"
to = "10.42.3.0/24"
ports = ["tcp/8080", "udp/53"]

[[allow]]
from = "green-6"
to = "fd42:0:0:9::/64"

[[allow]]
from = "10.42.1.0/24"
to = "blue"
ports = ["tcp/8000-8100", "icmp"]
`

func TestAllowLoads(t *testing.T) {
	isolate(t)
	cfg := mustLoad(t, fullTOML+allowTOML)
	want := []policy.Rule{
		{From: "blue", To: "10.42.3.0/24", Ports: []string{"tcp/8080", "udp/53"}},
		{From: "green-6", To: "fd42:0:0:9::/64"},
		{From: "10.42.1.0/24", To: "blue", Ports: []string{"tcp/8000-8100", "icmp"}},
	}
	if !reflect.DeepEqual(cfg.Allow, want) {
		t.Errorf("Allow = %#v\nwant %#v", cfg.Allow, want)
	}
	if _, err := policy.Compile(policySegments(cfg.Segments), cfg.Allow); err != nil {
		t.Errorf("loaded rules do not compile: %v", err)
	}
}

func TestAllowAbsent(t *testing.T) {
	isolate(t)
	if cfg := mustLoad(t, fullTOML); cfg.Allow != nil {
		t.Errorf("Allow = %#v, want nil", cfg.Allow)
	}
}

func TestAllowInvalid(t *testing.T) {
	type edit struct{ old, new string }
	rule0 := "[[allow]]\nfrom = \"blue\"\nto = \"10.42.3.0/24\"\nports = [\"tcp/8080\", \"udp/53\"]\n"
	for _, tc := range []struct {
		name  string
		edits []edit
		key   string
		want  []string
	}{
		{"unknown segment", []edit{{`to = "fd42:0:0:9::/64"`, `to = "purple"`}}, "allow[1].to", []string{`"purple" is not a defined segment`, "blue, green-6"}},
		{"misspelt segment", []edit{{`from = "green-6"`, `from = "gren-6"`}}, "allow[1].from", []string{`did you mean "green-6"?`}},
		{"malformed port", []edit{{`"tcp/8000-8100", "icmp"`, `"tcp/8000-8100", "tcp/x"`}}, "allow[2].ports[1]", []string{`"x" is not a port number`}},
		{"port out of range", []edit{{`"udp/53"`, `"udp/70000"`}}, "allow[0].ports[1]", []string{"out of range"}},
		{"inverted range", []edit{{`"tcp/8000-8100"`, `"tcp/8100-8000"`}}, "allow[2].ports[0]", []string{"inverted", `did you mean "tcp/8000-8100"?`}},
		{"icmp with a port", []edit{{`"tcp/8000-8100", "icmp"`, `"tcp/8000-8100", "icmp/8"`}}, "allow[2].ports[1]", []string{"icmp has no ports"}},
		{"unknown protocol", []edit{{`"udp/53"`, `"sctp/53"`}}, "allow[0].ports[1]", []string{"unknown protocol"}},
		{"cidr outside every segment", []edit{{`from = "10.42.1.0/24"`, `from = "192.168.1.0/24"`}}, "allow[2].from", []string{"not inside any segment", "blue (10.42.0.0/16)"}},
		{"cidr larger than segment", []edit{{`from = "10.42.1.0/24"`, `from = "10.0.0.0/8"`}}, "allow[2].from", []string{`larger than segment "blue"`}},
		{"cidr not canonical", []edit{{`to = "10.42.3.0/24"`, `to = "10.42.3.1/24"`}}, "allow[0].to", []string{"did you mean 10.42.3.0/24?"}},
		{"bare address", []edit{{`to = "10.42.3.0/24"`, `to = "10.42.3.1"`}}, "allow[0].to", []string{"write 10.42.3.1/32"}},
		{"mixed families", []edit{{`to = "10.42.3.0/24"`, `to = "green-6"`}}, "allow[0].to", []string{"different address families"}},
		{"from missing", []edit{{`from = "green-6"`, ``}}, "allow[1].from", []string{"is missing"}},
		{"to missing", []edit{{`to = "blue"`, ``}}, "allow[2].to", []string{"is missing"}},
		{"from not a string", []edit{{`from = "blue"`, `from = 5`}}, "allow[0].from", []string{"integer 5"}},
		{"ports not an array", []edit{{`ports = ["tcp/8080", "udp/53"]`, `ports = "tcp/8080"`}}, "allow[0].ports", []string{"array of strings"}},
		{"port not a string", []edit{{`ports = ["tcp/8080", "udp/53"]`, `ports = ["tcp/8080", 53]`}}, "allow[0].ports[1]", []string{"integer 53"}},
		{"unknown key", []edit{{`ports = ["tcp/8080", "udp/53"]`, `port = ["tcp/8080"]`}}, "allow[0].port", []string{`did you mean "ports"?`}},
		{"far unknown key", []edit{{`from = "green-6"`, "from = \"green-6\"\naction = \"drop\""}}, "allow[1].action", []string{"from, to, ports"}},
		{"single table", []edit{{allowTOML, "[allow]\nfrom = \"blue\"\nto = \"blue\"\n"}}, "allow", []string{"[[allow]]"}},
		{"scalar", []edit{{allowTOML, ""}, {`node_name = "h7"`, "node_name = \"h7\"\nallow = 3"}}, "allow", []string{"array of tables"}},
		{"not a table", []edit{{allowTOML, ""}, {`node_name = "h7"`, "node_name = \"h7\"\nallow = [1]"}}, "allow[0]", []string{"must be a table"}},
		{"misspelt header", []edit{{rule0, "[[alow]]\nfrom = \"blue\"\n"}}, "alow", []string{`did you mean "allow"?`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			body := fullTOML + allowTOML
			for _, ed := range tc.edits {
				body = mustReplace(t, body, ed.old, ed.new)
			}
			_, err := Load(writeConfig(t, body))
			checkError(t, err, tc.key, tc.want...)
		})
	}
}

// TestExampleDocumentsAllow keeps the example's [[allow]] complete, like
// TestExampleDocumentsEveryKey does for segments.
func TestExampleDocumentsAllow(t *testing.T) {
	raw, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := toml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	rules, _ := doc[keyAllow].([]any)
	if len(rules) == 0 {
		t.Fatal("config.example.toml has no [[allow]] rule")
	}
	for _, r := range rules {
		for _, k := range allowKeys {
			if r.(map[string]any)[k] == nil {
				t.Errorf("config.example.toml allow rule does not set %q", k)
			}
		}
	}

	isolate(t)
	t.Setenv("MESHD_CLUSTER_GOSSIP_KEY_FILE", writeKey(t, 32))
	cfg, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Allow) != len(rules) {
		t.Errorf("example loaded %d allow rules, want %d", len(cfg.Allow), len(rules))
	}
}
