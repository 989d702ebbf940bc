package config

import (
	"encoding/base64"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const diffAllow = `
[[allow]]
from = "blue"
to = "blue"
ports = ["tcp/80"]
`

func TestDiffNamesTheKeys(t *testing.T) {
	isolate(t)
	key := writeKey(t, 32)
	body := strings.ReplaceAll(fullTOML, "KEYFILE", key) + testIdentity(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	load := func(old, new string) *Config {
		t.Helper()
		edited := strings.Replace(body, old, new, 1)
		if old != "" && edited == body {
			t.Fatalf("%q is not in the config", old)
		}
		cfg, err := Load(writeFile(t, "meshd.toml", edited))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	base := load("", "")
	for _, tc := range []struct {
		name string
		next func() *Config
		want []string
	}{
		{"nothing", func() *Config { return load("", "") }, nil},
		{"a port", func() *Config { return load("listen_port = 51821", "listen_port = 51822") }, []string{"wireguard.listen_port"}},
		{"a segment's cidr and subnet", func() *Config {
			return load(`cidr = "fd42::/48"`+"\n"+`subnet = "fd42:0:0:1::/64"`, `cidr = "fd43::/48"`+"\n"+`subnet = "fd43:0:0:1::/64"`)
		}, []string{"segments[1].cidr", "segments[1].subnet"}},
		{"a segment less", func() *Config {
			return load("[[segments]]\nname = \"green-6\"\ncidr = \"fd42::/48\"\nsubnet = \"fd42:0:0:1::/64\"", "")
		}, []string{"segments"}},
		{"the allow rules", func() *Config { return load("[identity]", diffAllow+"\n[identity]") }, []string{"allow"}},
		{"the trust mode", func() *Config { return load("[identity]", "[identity]\nmode = \"transitional\"") }, []string{"identity.mode"}},
		{"the gossip key's content", func() *Config {
			if err := os.WriteFile(key, []byte(base64.StdEncoding.EncodeToString(testKey(16))), 0o600); err != nil {
				t.Fatal(err)
			}
			return load("", "")
		}, []string{"cluster.gossip_key_file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Diff(base, tc.next()); !slices.Equal(got, tc.want) {
				t.Errorf("Diff = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestDiffNoticesEveryField changes each field of a loaded Config in turn
// (and each field of a segment): Diff must name a key for every one, or
// a reload would call a changed setting applied when it is not.
func TestDiffNoticesEveryField(t *testing.T) {
	isolate(t)
	body := fullTOML + testIdentity(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)) + diffAllow
	path := writeConfig(t, body)
	load := func() *Config {
		cfg, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	base := load()
	var walk func(v reflect.Value, name string, visit func(name string, leaf reflect.Value))
	walk = func(v reflect.Value, name string, visit func(string, reflect.Value)) {
		switch {
		case v.Kind() == reflect.Struct && !strings.HasPrefix(v.Type().PkgPath(), "net/netip"):
			for i := range v.NumField() {
				walk(v.Field(i), name+"."+v.Type().Field(i).Name, visit)
			}
		case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct && v.Type().Elem().Name() == "Segment":
			walk(v.Index(0), name+"[0]", visit)
		default:
			visit(name, v)
		}
	}
	var names []string
	walk(reflect.ValueOf(base).Elem(), "Config", func(name string, _ reflect.Value) { names = append(names, name) })
	if len(names) < 40 {
		t.Fatalf("walked only %d fields: %q", len(names), names)
	}
	for _, target := range names {
		next := load()
		walk(reflect.ValueOf(next).Elem(), "Config", func(name string, leaf reflect.Value) {
			if name == target {
				change(t, name, leaf)
			}
		})
		if got := Diff(base, next); len(got) == 0 {
			t.Errorf("changing %s: Diff names no key", target)
		}
	}
}

// change gives a field another value of its type.
func change(t *testing.T, name string, v reflect.Value) {
	switch x := v.Addr().Interface().(type) {
	case *netip.Addr:
		*x = netip.MustParseAddr("192.0.2.250")
	case *netip.Prefix:
		*x = netip.MustParsePrefix("192.0.2.0/28")
	case *netip.AddrPort:
		*x = netip.MustParseAddrPort("192.0.2.250:1")
	default:
		switch v.Kind() {
		case reflect.String:
			v.SetString(v.String() + "x")
		case reflect.Int, reflect.Int64:
			v.SetInt(v.Int() + 1)
		case reflect.Bool:
			v.SetBool(!v.Bool())
		case reflect.Slice:
			v.Set(reflect.Append(reflect.AppendSlice(reflect.MakeSlice(v.Type(), 0, v.Len()+1), v), reflect.New(v.Type().Elem()).Elem()))
		case reflect.Pointer:
			c := reflect.New(v.Type().Elem())
			c.Elem().Set(v.Elem())
			change(t, name, c.Elem().Field(0))
			v.Set(c)
		default:
			t.Fatalf("%s: no way to change a %s", name, v.Type())
		}
	}
}
