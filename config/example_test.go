package config

import (
	"bufio"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

const examplePath = "../config.example.toml"

func TestExampleLoads(t *testing.T) {
	isolate(t)
	t.Setenv("MESHD_CLUSTER_GOSSIP_KEY_FILE", writeKey(t, 32))
	cfg, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "h1" || cfg.WireGuard.Interface != "mesh0" || len(cfg.Segments) != 1 || cfg.Segments[0].Name != "blue" {
		t.Errorf("example loaded unexpectedly: %+v", cfg)
	}
}

// TestExampleDocumentsEveryKey keeps the example from drifting: every known
// key must be set in it (not merely mentioned in a comment) and every
// assignment must sit under a comment explaining it.
func TestExampleDocumentsEveryKey(t *testing.T) {
	raw, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := toml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range knownKeys() {
		if lookup(doc, k) == nil {
			t.Errorf("config.example.toml does not set %q", k)
		}
	}
	segs, _ := doc[keySegments].([]any)
	for _, s := range segs {
		for _, k := range segmentKeys {
			if s.(map[string]any)[k] == nil {
				t.Errorf("config.example.toml segment does not set %q", k)
			}
		}
	}

	assignment := regexp.MustCompile(`^\s*([a-z_]+)\s*=`)
	prev := ""
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := assignment.FindStringSubmatch(line); m != nil && !strings.HasPrefix(strings.TrimSpace(prev), "#") {
			t.Errorf("config.example.toml:%d: %q has no comment above it", n, m[1])
		}
		prev = line
	}
}

func lookup(doc map[string]any, key string) any {
	var cur any = doc
	for _, part := range strings.Split(key, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}
