package cni

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.conflist from the current output")

var (
	blue  = Segment{Name: "blue", CIDR: netip.MustParsePrefix("10.42.0.0/16"), Subnet: netip.MustParsePrefix("10.42.1.0/24")}
	green = Segment{Name: "green-6", CIDR: netip.MustParsePrefix("fd42::/48"), Subnet: netip.MustParsePrefix("fd42:0:0:1::/64")}
)

func TestRenderGolden(t *testing.T) {
	for _, tc := range []struct {
		golden string
		seg    Segment
		mtu    int
	}{
		{"blue-ipv4", blue, 1420},
		{"green-ipv6", green, 1420},
		// Too small to skip the first addresses: the pool starts after
		// the gateway.
		{"small-ipv4", Segment{Name: "tiny", CIDR: netip.MustParsePrefix("10.9.0.0/24"), Subnet: netip.MustParsePrefix("10.9.0.16/28")}, 1380},
		// 15 characters: the bridge name needs the hashed form.
		{"long-name", Segment{Name: "production-east", CIDR: netip.MustParsePrefix("172.20.0.0/14"), Subnet: netip.MustParsePrefix("172.21.4.0/22")}, 8920},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			got, err := Render(tc.seg, tc.mtu)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.golden+".conflist")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./cni -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs (go test ./cni -update rewrites it)\ngot:\n%s", path, got)
			}
		})
	}
}

// TestRenderIsConflist checks what runtimes rely on rather than bytes: a
// spec 1.0.0 list whose plugin has type, bridge, MTU and a host-local pool
// inside the slice.
func TestRenderIsConflist(t *testing.T) {
	for _, seg := range []Segment{blue, green} {
		doc, err := Render(seg, 1420)
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			CNIVersion string `json:"cniVersion"`
			Name       string `json:"name"`
			Plugins    []struct {
				Type      string `json:"type"`
				Bridge    string `json:"bridge"`
				IsGateway bool   `json:"isGateway"`
				IPMasq    bool   `json:"ipMasq"`
				MTU       int    `json:"mtu"`
				IPAM      struct {
					Type   string `json:"type"`
					Ranges [][]struct {
						Subnet     netip.Prefix `json:"subnet"`
						RangeStart netip.Addr   `json:"rangeStart"`
						Gateway    netip.Addr   `json:"gateway"`
					} `json:"ranges"`
					Routes []struct {
						Dst netip.Prefix `json:"dst"`
						GW  netip.Addr   `json:"gw"`
					} `json:"routes"`
				} `json:"ipam"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(doc, &list); err != nil {
			t.Fatal(err)
		}
		if list.CNIVersion != "1.0.0" || list.Name != "meshd-"+seg.Name || len(list.Plugins) != 1 {
			t.Fatalf("%s: header %+v", seg.Name, list)
		}
		p := list.Plugins[0]
		if p.Type != "bridge" || p.Bridge != "mbr-"+seg.Name || !p.IsGateway || p.IPMasq || p.MTU != 1420 || p.IPAM.Type != "host-local" {
			t.Errorf("%s: plugin %+v", seg.Name, p)
		}
		r := p.IPAM.Ranges[0][0]
		if r.Subnet != seg.Subnet || !seg.Subnet.Contains(r.Gateway) || !seg.Subnet.Contains(r.RangeStart) || !r.Gateway.Less(r.RangeStart) {
			t.Errorf("%s: range %+v outside slice %s", seg.Name, r, seg.Subnet)
		}
		if len(p.IPAM.Routes) != 1 || p.IPAM.Routes[0].Dst != seg.CIDR || p.IPAM.Routes[0].GW != r.Gateway {
			t.Errorf("%s: routes %+v, want only %s via %s", seg.Name, p.IPAM.Routes, seg.CIDR, r.Gateway)
		}
	}
}

func TestBridgeName(t *testing.T) {
	for seg, want := range map[string]string{
		"blue":        "mbr-blue",
		"abcdefghijk": "mbr-abcdefghijk", // exactly 15 bytes
	} {
		if got := BridgeName(seg); got != want {
			t.Errorf("BridgeName(%q) = %q, want %q", seg, got, want)
		}
	}
	a, b := BridgeName("production-east"), BridgeName("production-west")
	if a == b || len(a) > 15 || len(b) > 15 || !strings.HasPrefix(a, "mbr-prod-") {
		t.Errorf("long names: %q and %q must differ, fit 15 bytes and stay readable", a, b)
	}
}

func TestRenderRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		seg  Segment
		mtu  int
		want string
	}{
		"bad name":       {Segment{Name: "Blue/x", CIDR: blue.CIDR, Subnet: blue.Subnet}, 1420, "segment name"},
		"outside cidr":   {Segment{Name: "x", CIDR: blue.CIDR, Subnet: netip.MustParsePrefix("10.43.1.0/24")}, 1420, "not inside"},
		"mixed families": {Segment{Name: "x", CIDR: blue.CIDR, Subnet: green.Subnet}, 1420, "not inside"},
		"host bits":      {Segment{Name: "x", CIDR: blue.CIDR, Subnet: netip.MustParsePrefix("10.42.1.1/24")}, 1420, "host bits"},
		"slash 31":       {Segment{Name: "x", CIDR: blue.CIDR, Subnet: netip.MustParsePrefix("10.42.1.0/31")}, 1420, "too small"},
		"slash 128":      {Segment{Name: "x", CIDR: green.CIDR, Subnet: netip.MustParsePrefix("fd42::1/128")}, 1420, "too small"},
		"ipv6 small mtu": {green, 1279, "mtu 1279"},
		"zero mtu":       {blue, 0, "mtu 0"},
		"invalid prefix": {Segment{Name: "x"}, 1420, "valid prefixes"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Render(tc.seg, tc.mtu)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestWriteAndRemove(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d") // Write creates it
	paths, err := Write(dir, []Segment{blue, green}, 1420)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "10-meshd-blue.conflist"), filepath.Join(dir, "10-meshd-green-6.conflist")}
	if !slices.Equal(paths, want) {
		t.Fatalf("paths %v, want %v", paths, want)
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("%s mode %v, want 0644", p, fi.Mode().Perm())
		}
	}
	foreign := filepath.Join(dir, "99-loopback.conflist")
	writeTestFile(t, foreign, `{"cniVersion":"1.0.0","name":"lo","plugins":[{"type":"loopback"}]}`)

	// A second Write with the same input changes nothing, not even mtimes.
	before, _ := os.Stat(paths[0])
	if _, err := Write(dir, []Segment{blue, green}, 1420); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(paths[0]); !after.ModTime().Equal(before.ModTime()) {
		t.Error("an unchanged conflist was rewritten")
	}

	if err := Remove(dir, []Segment{blue, green}); err != nil {
		t.Fatal(err)
	}
	if got := list(t, dir); !slices.Equal(got, []string{"99-loopback.conflist"}) {
		t.Errorf("after Remove: %v, want only the foreign file", got)
	}
	if err := Remove(dir, []Segment{blue}); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

func TestWritePrunesStaleSegments(t *testing.T) {
	dir := t.TempDir()
	if _, err := Write(dir, []Segment{blue, green}, 1420); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(dir, []Segment{blue}, 1400); err != nil {
		t.Fatal(err)
	}
	if got := list(t, dir); !slices.Equal(got, []string{"10-meshd-blue.conflist"}) {
		t.Errorf("files %v, want only blue's", got)
	}
	doc, _ := os.ReadFile(filepath.Join(dir, "10-meshd-blue.conflist"))
	if !strings.Contains(string(doc), `"mtu": 1400`) {
		t.Errorf("blue was not rewritten with the new MTU:\n%s", doc)
	}
}

// TestForeignFilesSurvive: a file carrying meshd's name but not its
// marker belongs to someone else; Write refuses to replace it and neither
// Remove nor pruning deletes it.
func TestForeignFilesSurvive(t *testing.T) {
	dir := t.TempDir()
	hand := filepath.Join(dir, "10-meshd-blue.conflist")
	stale := filepath.Join(dir, "10-meshd-old.conflist")
	content := `{"cniVersion":"1.0.0","name":"mine","plugins":[{"type":"bridge"}]}`
	writeTestFile(t, hand, content)
	writeTestFile(t, stale, content)

	if _, err := Write(dir, []Segment{blue}, 1420); err == nil || !strings.Contains(err.Error(), "not written by meshd") {
		t.Errorf("Write over a foreign file: %v", err)
	}
	if _, err := Write(dir, []Segment{green}, 1420); err != nil {
		t.Fatal(err)
	}
	if err := Remove(dir, []Segment{blue, green}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{hand, stale} {
		if got, _ := os.ReadFile(p); string(got) != content {
			t.Errorf("%s was changed or removed", p)
		}
	}
	if got := list(t, dir); len(got) != 2 {
		t.Errorf("files %v: temp files or meshd's own file left behind", got)
	}
}

func TestWriteInvalidTouchesNothing(t *testing.T) {
	dir := t.TempDir()
	bad := Segment{Name: "bad", CIDR: blue.CIDR, Subnet: netip.MustParsePrefix("10.42.9.0/32")}
	if _, err := Write(dir, []Segment{blue, bad}, 1420); err == nil {
		t.Fatal("Write accepted a /32 slice")
	}
	if _, err := Write(dir, []Segment{blue, blue}, 1420); err == nil {
		t.Fatal("Write accepted a duplicate segment")
	}
	if got := list(t, dir); len(got) != 0 {
		t.Errorf("invalid input wrote %v", got)
	}
}

func TestDisabled(t *testing.T) {
	if paths, err := Write("", []Segment{blue}, 1420); err != nil || paths != nil {
		t.Errorf("Write(\"\") = %v, %v; want nothing", paths, err)
	}
	if err := Remove("", []Segment{blue}); err != nil {
		t.Errorf("Remove(\"\") = %v", err)
	}
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func list(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
