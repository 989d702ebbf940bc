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
	red   = Segment{Name: "red", CIDR: netip.MustParsePrefix("10.43.0.0/16"), Subnet: netip.MustParsePrefix("10.43.7.0/24")}
	amber = Segment{Name: "amber", CIDR: netip.MustParsePrefix("172.16.0.0/12"), Subnet: netip.MustParsePrefix("172.16.1.0/24")}
)

func opts(mtu int) Options { return Options{MTU: mtu} }

func TestRenderGolden(t *testing.T) {
	tiny := Segment{Name: "tiny", CIDR: netip.MustParsePrefix("10.9.0.0/24"), Subnet: netip.MustParsePrefix("10.9.0.16/28")}
	long := Segment{Name: "production-east", CIDR: netip.MustParsePrefix("172.20.0.0/14"), Subnet: netip.MustParsePrefix("172.21.4.0/22")}
	for _, tc := range []struct {
		golden string
		seg    Segment
		all    []Segment
		opts   Options
	}{
		{"blue-ipv4", blue, []Segment{blue}, opts(1420)},
		{"green-ipv6", green, []Segment{green}, opts(1420)},
		// Too small to skip the first addresses: the pool starts after
		// the gateway.
		{"small-ipv4", tiny, []Segment{tiny}, opts(1380)},
		// 15 characters: the bridge name needs the hashed form.
		{"long-name", long, []Segment{long}, opts(8920)},
		// Every IPv4 segment gets a route, sorted, the own one as halves;
		// the IPv6 segment none; host-local's directory is set.
		{"blue-with-others", blue, []Segment{red, green, blue, amber}, Options{MTU: 1420, IPAMDir: "/var/lib/cni/networks"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			got, err := Render(tc.seg, tc.all, tc.opts)
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
// inside the slice, and routes covering every segment of its family.
func TestRenderIsConflist(t *testing.T) {
	all := []Segment{blue, green, red}
	for _, seg := range all {
		doc, err := Render(seg, all, opts(1420))
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
		for _, other := range all {
			if other.CIDR.Addr().Is4() != seg.CIDR.Addr().Is4() {
				continue
			}
			covered := false
			for _, rt := range p.IPAM.Routes {
				if rt.GW != r.Gateway {
					t.Errorf("%s: route %+v not via the gateway %s", seg.Name, rt, r.Gateway)
				}
				covered = covered || other.CIDR.Contains(rt.Dst.Addr()) && rt.Dst.Bits() >= other.CIDR.Bits()
			}
			if !covered {
				t.Errorf("%s: no route into segment %s (%s): %+v", seg.Name, other.Name, other.CIDR, p.IPAM.Routes)
			}
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
			_, err := Render(tc.seg, []Segment{tc.seg}, opts(tc.mtu))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestWriteAndRemove(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d") // Write creates it
	paths, err := Write(dir, []Segment{blue, green}, opts(1420))
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
	if _, err := Write(dir, []Segment{blue, green}, opts(1420)); err != nil {
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
	if _, err := Write(dir, []Segment{blue, green}, opts(1420)); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(dir, []Segment{blue}, opts(1400)); err != nil {
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

	if _, err := Write(dir, []Segment{blue}, opts(1420)); err == nil || !strings.Contains(err.Error(), "not written by meshd") {
		t.Errorf("Write over a foreign file: %v", err)
	}
	if _, err := Write(dir, []Segment{green}, opts(1420)); err != nil {
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

// TestWriteUnclaimed: a segment still claiming its slice gets no file (an
// old one goes), but the others' containers get a route to it.
func TestWriteUnclaimed(t *testing.T) {
	dir := t.TempDir()
	if _, err := Write(dir, []Segment{blue, red}, opts(1420)); err != nil {
		t.Fatal(err)
	}
	unclaimed := Segment{Name: red.Name, CIDR: red.CIDR}
	paths, err := Write(dir, []Segment{blue, unclaimed}, opts(1420))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 1 || !slices.Equal(list(t, dir), []string{"10-meshd-blue.conflist"}) {
		t.Errorf("paths %v, files %v; want blue's only", paths, list(t, dir))
	}
	doc, _ := os.ReadFile(paths[0])
	if !strings.Contains(string(doc), `"dst": "10.43.0.0/16"`) {
		t.Errorf("blue's conflist lacks the route to the unclaimed segment:\n%s", doc)
	}
}

func TestWriteInvalidTouchesNothing(t *testing.T) {
	dir := t.TempDir()
	bad := Segment{Name: "bad", CIDR: blue.CIDR, Subnet: netip.MustParsePrefix("10.42.9.0/32")}
	if _, err := Write(dir, []Segment{blue, bad}, opts(1420)); err == nil {
		t.Fatal("Write accepted a /32 slice")
	}
	if _, err := Write(dir, []Segment{blue, blue}, opts(1420)); err == nil {
		t.Fatal("Write accepted a duplicate segment")
	}
	if got := list(t, dir); len(got) != 0 {
		t.Errorf("invalid input wrote %v", got)
	}
}

func TestDisabled(t *testing.T) {
	if paths, err := Write("", []Segment{blue}, opts(1420)); err != nil || paths != nil {
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

// TestPlanMultiAttach: a container on two segments gets no two routes to
// the same destination, and each segment's own routes are the more
// specific, whichever network attached first.
func TestPlanMultiAttach(t *testing.T) {
	all := []Segment{blue, red}
	pb, err := NewPlan(blue, all, 1420)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := NewPlan(red, all, 1420)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Prefix]string{}
	for _, p := range []Plan{pb, pr} {
		for _, r := range p.Routes {
			if other, dup := seen[r]; dup {
				t.Errorf("%s and %s both route %s", other, p.Segment, r)
			}
			seen[r] = p.Segment
		}
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.42.0.0/17"), netip.MustParsePrefix("10.42.128.0/17"), red.CIDR}
	if !slices.Equal(pb.Routes, want) {
		t.Errorf("blue routes %v, want %v", pb.Routes, want)
	}
	if pb.Gateway != netip.MustParseAddr("10.42.1.1") || pb.RangeStart != netip.MustParseAddr("10.42.1.10") || pb.RangeEnd != netip.MustParseAddr("10.42.1.254") {
		t.Errorf("blue plan %+v", pb)
	}
	pg, err := NewPlan(green, []Segment{green}, 1420)
	if err != nil {
		t.Fatal(err)
	}
	if pg.RangeEnd != netip.MustParseAddr("fd42:0:0:1:ffff:ffff:ffff:ffff") {
		t.Errorf("IPv6 range ends at %s, want the last address of the slice", pg.RangeEnd)
	}
}
