package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/daemon"
)

// execute runs the CLI in-process and returns stdout and the exit code.
func execute(t *testing.T, args ...string) (string, int) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	if err != nil {
		out.WriteString("meshd: " + err.Error() + "\n")
		return out.String(), exitCode(err)
	}
	return out.String(), exitOK
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "gossip.key")
	os.WriteFile(key, []byte("q7Hn3mXy8yYw0Fg4J1m9XQ==\n"), 0o600)
	badCfg := filepath.Join(dir, "bad.toml")
	os.WriteFile(badCfg, []byte("[cluster]\ngossip_key_file = \""+key+"\"\n[wireguard]\nlisten_port = 70000\n[[segments]]\nname = \"blue\"\ncidr = \"10.42.0.0/16\"\nsubnet = \"10.42.1.0/24\"\n"), 0o644)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"version"}, 0, "meshd "},
		{[]string{"--version"}, 0, "meshd " + version},
		{[]string{"gossip-key"}, 2, "usage: meshd gossip-key"},
		{[]string{"gossip-key", "bogus"}, 2, `unknown gossip-key operation "bogus"`},
		{[]string{"gossip-key", "install"}, 2, "takes one KEY"},
		{[]string{"gossip-key", "--socket", filepath.Join(dir, "none.sock"), "list"}, 1, "no meshd is running"},
		{[]string{"run", "--bogus"}, 2, "unknown flag"},
		{[]string{"nonsense"}, 2, "unknown command"},
		{[]string{"status", "extra"}, 2, "takes no arguments"},
		{[]string{"run", "--config", filepath.Join(dir, "missing.toml")}, 2, "missing.toml"},
		{[]string{"run", "--config", badCfg}, 2, "wireguard.listen_port"},
		{[]string{"policy", "explain", "--config", badCfg}, 2, "--from and --to"},
		{[]string{"policy", "explain", "--config", badCfg, "--from", "10.0.0.300", "--to", "10.0.0.1"}, 2, "--from"},
		{[]string{"policy", "explain", "--config", badCfg, "--from", "10.0.0.1", "--to", "10.0.0.2", "--port", "tcp/99999"}, 2, "--port"},
		{[]string{"status", "--socket", filepath.Join(dir, "none.sock")}, 1, "no meshd is running"},
		{[]string{"demo", "--hosts", "1"}, 2, "--hosts"},
	}
	for _, tc := range cases {
		out, code := execute(t, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("meshd %s: exit %d, output %q; want exit %d containing %q", strings.Join(tc.args, " "), code, out, tc.code, tc.want)
		}
	}
}

// Each gossip-key operation explains itself, not the whole family.
func TestGossipKeySubcommandsHaveTheirOwnHelp(t *testing.T) {
	parent, _ := execute(t, "gossip-key", "--help")
	for op, want := range map[string]string{"install": "Install adds KEY", "use": "Use makes KEY the primary", "remove": "Remove drops KEY", "list": "List asks every member"} {
		out, code := execute(t, "gossip-key", op, "--help")
		if code != 0 || !strings.Contains(out, want) || out == parent || !strings.Contains(out, "--socket") {
			t.Errorf("gossip-key %s --help: exit %d\n%s", op, code, out)
		}
	}
}

func TestKeygenGossipPrintsAUsableKey(t *testing.T) {
	out, code := execute(t, "keygen", "gossip")
	if code != 0 || len(strings.TrimSpace(out)) != 44 {
		t.Fatalf("keygen gossip: exit %d, %q", code, out)
	}
}

type fakeDaemon control.Status

func (f fakeDaemon) Status() control.Status { return control.Status(f) }

func TestStatusTableAndHealthCheck(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "meshd.sock")
	st := control.Status{
		Node: control.Node{Name: "h1", Fingerprint: "abcd1234", Mode: "userspace", Interface: "mesh0", MTU: 1440,
			Segments: []control.Segment{{Name: "blue", CIDR: "10.42.0.0/16", Subnet: "10.42.1.0/24", Table: 51800}}},
		Peers: []control.Peer{
			{Name: "h2", State: "alive", Configured: true, Endpoint: "192.0.2.2:51820", Slices: []string{"blue=10.42.2.0/24"}, HandshakeAgeSeconds: 12, RxBytes: 2048, TxBytes: 10},
			{Name: "h3", State: "failed", HandshakeAgeSeconds: -1},
		},
		Policy: []control.PolicyCounter{{Label: "default-deny", Action: "drop", Reason: "default-deny", Packets: 7, Bytes: 420}},
	}
	srv, err := control.Listen(sock, fakeDaemon(st))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	out, code := execute(t, "status", "--socket", sock)
	for _, want := range []string{"node h1", "segment blue 10.42.0.0/16  slice 10.42.1.0/24  table 51800", "h2", "alive", "192.0.2.2:51820", "12s ago", "2.0 KiB", "h3", "failed", "default-deny"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Fatalf("status exit %d", code)
	}
	if out, code := execute(t, "status", "--socket", sock, "--check"); code != 0 {
		t.Fatalf("healthy mesh: --check exit %d: %s", code, out)
	}

	srv.Close()
	st.Peers[0].HandshakeAgeSeconds = 400 // older than 3 minutes: tunnel dead
	srv, err = control.Listen(sock, fakeDaemon(st))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	out, code = execute(t, "status", "--socket", sock, "--check")
	if code != 1 || !strings.Contains(out, "h2: last handshake 6m40s ago") {
		t.Fatalf("stale handshake: --check exit %d, %q; want 1 naming h2", code, out)
	}
}

// A host that cannot run the config (IP forwarding off) is refused before
// anything is created, like a bad config: scripts see exit 2, not 1.
func TestHostErrorIsAUsageExit(t *testing.T) {
	err := fmt.Errorf("start: %w", &daemon.HostError{Problem: "net.ipv4.ip_forward is 0", Fix: "sysctl -w net.ipv4.ip_forward=1"})
	if got := exitCode(err); got != exitUsage {
		t.Fatalf("exitCode(%v) = %d, want %d", err, got, exitUsage)
	}
}

// A site's gateway and prober show, in the table, why the gateway drains
// and what the probes see.
func TestStatusShowsGatewayDrainingAndProbes(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "meshd.sock")
	st := control.Status{
		Node: control.Node{Name: "a2", Mode: "userspace", Interface: "mesh0", Site: "a", Gateway: true, Draining: true,
			DrainReason: "probes by a3, a4 found no forwarding through it; back in 25s"},
		Sites:  []control.Site{{Name: "b", Blocks: []string{"blue=10.42.16.0/20"}, Gateway: "a1", Remote: "b1"}},
		Probes: []control.GatewayProbe{{Gateway: "a1", Targets: 2}, {Gateway: "a2", Targets: 1, Failing: 6, Reported: true}, {Gateway: "a5", Targets: 1, Silent: true}},
	}
	srv, err := control.Listen(sock, fakeDaemon(st))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	out, _ := execute(t, "status", "--socket", sock)
	for _, want := range []string{
		"gateway (draining: probes by a3, a4 found no forwarding through it; back in 25s)",
		"a1 forwards (2 remote gateways probed)",
		"a2 forwarded nothing for 6 rounds, reported",
		"a5 no answer at all",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
