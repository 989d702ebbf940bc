package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/lab"
)

// IPv6 underlay carrying an IPv4 and an IPv6 segment: both families work
// over either underlay.
func TestIPv6UnderlayAndSegments(t *testing.T) {
	v6 := lab.SegmentSpec{Name: "six", CIDR: "fd42::/48", SliceBits: 64}
	l := newLab(t, lab.Spec{Hosts: 2, IPv6Underlay: true, Segments: []lab.SegmentSpec{blue, v6}})
	startAll(t, l, "")
	hosts := l.Hosts()
	waitFor(t, 60*time.Second, "IPv4 segment over IPv6 underlay", fullMesh(hosts, "blue"))
	waitFor(t, 30*time.Second, "IPv6 segment over IPv6 underlay", fullMesh(hosts, "six"))
	st, err := status(t, l.Host(1))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.Node.Endpoint, "[2001:db8::") {
		t.Errorf("endpoint %q; want the IPv6 underlay address", st.Node.Endpoint)
	}
	// 1500 underlay, IPv6 outer header: 1500 - 40 - 8 - 32.
	if st.Node.MTU != 1420 {
		t.Errorf("auto MTU %d over an IPv6 underlay, want 1420", st.Node.MTU)
	}
	for _, h := range hosts {
		if err := h.Stop(); err != nil {
			t.Errorf("stop %s: %v", h.Name(), err)
		}
		assertNothingLeft(t, h)
	}
}

// Bad input must exit 2 with one line naming the key, and leave the host
// exactly as it was: no interface, no rules, no routes.
func TestBadInputExitsTwoAndChangesNothing(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 1, Segments: []lab.SegmentSpec{blue}})
	h := l.Host(1)
	good := h.Config("")
	cases := []struct {
		name, config, wantKey string
	}{
		{"subnet outside segment", strings.Replace(good, `subnet = "10.42.1.0/24"`, `subnet = "10.99.1.0/24"`, 1), "segments[0].subnet"},
		{"unknown key", good + "\n[wireguard2]\nfoo = 1\n", "wireguard2"},
		{"port out of range", strings.Replace(good, "listen_port = 51820", "listen_port = 70000", 1), "wireguard.listen_port"},
		{"kernel mode without kernel WireGuard", strings.Replace(good, `mode = "auto"`, `mode = "kernel"`, 1), "kernel"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.wantKey == "kernel" && kernelHasWireGuard(t, l) {
				t.Skip("this kernel has WireGuard; kernel mode is valid here")
			}
			if err := os.WriteFile(h.ConfigPath(), []byte(tc.config), 0o644); err != nil {
				t.Fatal(err)
			}
			out, code := runMeshd(t, "ip", "netns", "exec", h.NS(), meshdBin, "run", "--config", h.ConfigPath())
			if code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			last := lines[len(lines)-1]
			if !strings.Contains(last, tc.wantKey) {
				t.Errorf("error line %q does not name %q", last, tc.wantKey)
			}
			assertNothingLeft(t, h)
		})
	}

	t.Run("world-readable private key", func(t *testing.T) {
		if _, err := h.WriteConfig(""); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(h.DataDir(), 0o700); err != nil {
			t.Fatal(err)
		}
		key := h.DataDir() + "/wireguard.key"
		if err := os.WriteFile(key, []byte("YNqHbfBQKaGvzefSSGs2qEkn8zFUXB2E9pGeMSWQsXs=\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// WriteFile keeps the mode of an existing file: set it explicitly.
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(key)
		out, code := runMeshd(t, "ip", "netns", "exec", h.NS(), meshdBin, "run", "--config", h.ConfigPath())
		if code != 2 || !strings.Contains(out, "0644") {
			t.Fatalf("exit %d, output %q; want exit 2 naming the mode", code, out)
		}
		assertNothingLeft(t, h)
	})

	t.Run("usage errors", func(t *testing.T) {
		for _, args := range [][]string{{"run", "--bogus"}, {"status", "extra-arg"}, {"frobnicate"}} {
			out, code := runMeshd(t, append([]string{meshdBin}, args...)...)
			if code != 2 {
				t.Errorf("meshd %v: exit %d, want 2; output %q", args, code, out)
			}
		}
	})

	t.Run("a second meshd in the same namespace leaves the first alone", func(t *testing.T) {
		start(t, h, "")
		defer h.Stop()
		waitFor(t, 20*time.Second, "first meshd up", func() error { _, err := status(t, h); return err })
		second := strings.NewReplacer(h.ControlSocket(), h.Dir()+"/second.sock", h.DataDir(), h.Dir()+"/second-data",
			`interface = "`+h.Interface()+`"`, `interface = "`+h.Interface()+`x"`).Replace(h.Config(""))
		path := h.Dir() + "/second.toml"
		if err := os.WriteFile(path, []byte(second), 0o644); err != nil {
			t.Fatal(err)
		}
		out, code := runMeshd(t, "ip", "netns", "exec", h.NS(), meshdBin, "run", "--config", path)
		if code != 1 || !strings.Contains(out, "already running in this network namespace") {
			t.Fatalf("second meshd: exit %d, %q", code, out)
		}
		if rules := run(t, h.NS(), "ip", "rule", "show"); !strings.Contains(rules, "proto 149") {
			t.Errorf("the second meshd removed the first one's rules:\n%s", rules)
		}
		if tables := run(t, h.NS(), "nft", "list", "tables"); !strings.Contains(tables, "meshd") {
			t.Errorf("the second meshd removed the first one's nftables table: %s", tables)
		}
		if _, err := status(t, h); err != nil {
			t.Errorf("the first meshd stopped answering: %v", err)
		}
	})

	t.Run("status without a daemon", func(t *testing.T) {
		out, code := runMeshd(t, meshdBin, "status", "--socket", h.ControlSocket())
		if code != 1 || !strings.Contains(out, "no meshd is running") {
			t.Errorf("exit %d, output %q; want exit 1 saying no meshd is running", code, out)
		}
	})
}

// runMeshd runs a command that is expected to exit on its own; a daemon
// that starts instead of refusing its input is killed after 30 s and
// reported, rather than hanging the suite.
func runMeshd(t *testing.T, argv ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, _ := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%v did not exit within 30 s (it should have refused its input):\n%s", argv, out)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

func kernelHasWireGuard(t *testing.T, l *lab.Lab) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ns := l.Host(1).NS()
	if _, err := lab.Exec(ctx, ns, "ip", "link", "add", "name", "wgprobe0", "type", "wireguard"); err != nil {
		return false
	}
	lab.Exec(ctx, ns, "ip", "link", "del", "wgprobe0")
	return true
}
