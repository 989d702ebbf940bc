package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/lab"
)

// TestWireguardGoGetsMeshdsRouting: the wggorules and wggofull modes
// charge standalone wireguard-go with exactly the ip rules and routing
// tables meshd sets up, so what they cost is what meshd's routing costs.
// Both are read back from the kernel on the same lab host and compared
// line by line, with only the interface name and the protocol, metric
// and scope attributes set aside.
func TestWireguardGoGetsMeshdsRouting(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ip", "go")
	dir := t.TempDir()
	meshdBin, wggoBin := filepath.Join(dir, "meshd"), filepath.Join(dir, "wireguard-go")
	for bin, pkg := range map[string]string{meshdBin: "github.com/meshd/meshd/cmd/meshd", wggoBin: "golang.zx2c4.com/wireguard"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Spec{Hosts: 2, Mode: "userspace", Segments: benchSegments})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	h := l.Host(1)

	md := &meshdTunnel{l: l, bin: meshdBin, path: "pod", wg: wg}
	if err := md.setup(ctx); err != nil {
		_ = md.teardown()
		t.Fatal(err)
	}
	want := routingOf(ctx, t, h, h.Interface())
	if err := md.teardown(); err != nil {
		t.Fatal(err)
	}

	wt := &wggoTunnel{l: l, bin: wggoBin, path: "pod", mtuVal: 1420, wg: wg, ipRules: true}
	if err := wt.setup(ctx); err != nil {
		_ = wt.teardown()
		t.Fatal(err)
	}
	got := routingOf(ctx, t, h, wt.ifnames[0])
	if err := wt.teardown(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("wireguard-go's routing differs from meshd's\n got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	pristine := []string{"show: 0:\tfrom all lookup local", "show: 32766:\tfrom all lookup main", "show: 32767:\tfrom all lookup default"}
	if after := routingOf(ctx, t, h, wt.ifnames[0]); !slices.Equal(after, pristine) {
		t.Errorf("teardown left routing behind:\n  %s", strings.Join(after, "\n  "))
	}
	// A teardown after a setup that never got to routing finds nothing
	// to remove, and says nothing.
	if err := removeMeshdRouting(l, h); err != nil {
		t.Errorf("removing routing that is not there: %v", err)
	}
}

var routeNoise = regexp.MustCompile(` proto \S+| metric \d+| scope \S+`)

// routingOf lists h's ip rules and the routes of meshd's tables, with
// the tunnel's name replaced by TUN.
func routingOf(ctx context.Context, t *testing.T, h *lab.Host, tun string) []string {
	t.Helper()
	var lines []string
	cmds := [][]string{{"ip", "-4", "rule", "show"}}
	for i := range benchSegments {
		cmds = append(cmds, []string{"ip", "-4", "route", "show", "table", strconv.Itoa(meshdTableBase + i)})
	}
	for _, argv := range cmds {
		out, err := h.Exec(ctx, argv...)
		if err != nil && strings.Contains(out, "table does not exist") {
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
		for line := range strings.Lines(out) {
			line = strings.TrimSpace(routeNoise.ReplaceAllString(line, ""))
			if line != "" {
				lines = append(lines, argv[len(argv)-1]+": "+strings.ReplaceAll(line, tun, "TUN"))
			}
		}
	}
	return lines
}
