package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/lab"
)

// pki creates a cluster CA (and a second, foreign one) and host
// certificates with the real CLI, the way an operator would.
type pki struct {
	t   *testing.T
	dir string
}

func newPKI(t *testing.T) *pki {
	p := &pki{t: t, dir: t.TempDir()}
	for _, ca := range []string{"ca", "other-ca"} {
		if out, code := runMeshd(t, meshdBin, "ca", "init", "--out", filepath.Join(p.dir, ca)); code != 0 {
			t.Fatalf("ca init: %s", out)
		}
	}
	return p
}

// sign issues a certificate from ca ("ca" or "other-ca") into dir/<out>.
func (p *pki) sign(ca, out, name string, extra ...string) string {
	dst := filepath.Join(p.dir, out)
	args := append([]string{"ca", "sign", "--ca", filepath.Join(p.dir, ca), "--name", name, "--segments", "blue", "--out", dst}, extra...)
	if o, code := runMeshd(p.t, append([]string{meshdBin}, args...)...); code != 0 {
		p.t.Fatalf("ca sign %s: %s", out, o)
	}
	return dst
}

func (p *pki) identityTOML(certDir string) string {
	return fmt.Sprintf("\n[identity]\nca_file = %q\ncert_file = %q\nkey_file = %q\n",
		filepath.Join(p.dir, "ca", "ca.crt"), filepath.Join(certDir, "host.crt"), filepath.Join(certDir, "host.key"))
}

// forger runs the hostile member in a host's namespace until stopped.
func startForger(t *testing.T, l *lab.Lab, h *lab.Host, args ...string) func() {
	t.Helper()
	argv := append([]string{"netns", "exec", h.NS(), forgerBin, "--name", h.Name(), "--bind", h.UnderlayAddr().String(),
		"--join", netip.AddrPortFrom(l.Host(1).UnderlayAddr(), 7946).String(), "--gossip-key-file", l.GossipKeyFile()}, args...)
	cmd := exec.Command("ip", argv...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	joined := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "forger joined" {
				joined <- true
			}
		}
	}()
	select {
	case <-joined:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatal("forger did not join")
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}

func rejectedFor(t *testing.T, h *lab.Host, member string) (string, bool) {
	st, err := status(t, h)
	if err != nil {
		return "", false
	}
	for _, r := range st.Rejected {
		if r.Member == member {
			return r.Reason, true
		}
	}
	return "", false
}

func TestCertificatesGateTheMesh(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 3, Segments: []lab.SegmentSpec{blue}})
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	p := newPKI(t)
	for _, h := range []*lab.Host{h1, h2} {
		start(t, h, p.identityTOML(p.sign("ca", h.Name(), h.Name())))
	}
	waitFor(t, 60*time.Second, "signed mesh h1<->h2", fullMesh([]*lab.Host{h1, h2}, "blue"))

	stolen := p.sign("ca", "h3-stolen", "h9")
	cases := []struct {
		name, reason string
		args         []string
	}{
		{"unsigned", "unsigned announcement", []string{"--slices", "blue=10.42.3.0/24", "--unsigned"}},
		{"another CA", "not signed by this cluster's CA", []string{"--slices", "blue=10.42.3.0/24",
			"--cert", p.sign("other-ca", "h3-foreign", "h3") + "/host.crt", "--key", filepath.Join(p.dir, "h3-foreign", "host.key")}},
		{"certificate for another name", `certificate is for "h9"`, []string{"--slices", "blue=10.42.3.0/24",
			"--cert", stolen + "/host.crt", "--key", stolen + "/host.key"}},
		{"expired", "expired", []string{"--slices", "blue=10.42.3.0/24",
			"--cert", p.sign("ca", "h3-expired", "h3", "--not-before", "2020-01-01T00:00:00Z", "--not-after", "2020-01-02T00:00:00Z") + "/host.crt",
			"--key", filepath.Join(p.dir, "h3-expired", "host.key")}},
		{"slice outside the certificate", "not allowed", []string{"--slices", "blue=10.42.4.0/24",
			"--cert", p.sign("ca", "h3-pinned", "h3", "--subnets", "blue=10.42.3.0/24") + "/host.crt",
			"--key", filepath.Join(p.dir, "h3-pinned", "host.key")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stop := startForger(t, l, h3, tc.args...)
			defer stop()
			for _, h := range []*lab.Host{h1, h2} {
				waitFor(t, 15*time.Second, h.Name()+" refuses h3", func() error {
					reason, ok := rejectedFor(t, h, "h3")
					if !ok {
						return errors.New("h3 not rejected yet")
					}
					if !strings.Contains(reason, tc.reason) {
						t.Fatalf("%s rejected h3 for %q, want %q", h.Name(), reason, tc.reason)
					}
					return nil
				})
				if _, configured, _ := peerState(t, h, "h3"); configured {
					t.Errorf("%s configured the refused h3 as a peer", h.Name())
				}
				if slices.Contains(tunnelRoutes(t, h), "10.42.3.0/24") || slices.Contains(tunnelRoutes(t, h), "10.42.4.0/24") {
					t.Errorf("%s routes a slice to the refused h3", h.Name())
				}
			}
			if err := pingPod(h1, h2, "blue"); err != nil {
				t.Errorf("the honest hosts lost each other: %v", err)
			}
		})
	}

	t.Run("a valid certificate is accepted", func(t *testing.T) {
		good := p.sign("ca", "h3-good", "h3")
		stop := startForger(t, l, h3, "--slices", "blue=10.42.3.0/24", "--cert", good+"/host.crt", "--key", good+"/host.key")
		defer stop()
		waitFor(t, 15*time.Second, "h1 accepts h3", func() error {
			if _, configured, _ := peerState(t, h1, "h3"); !configured {
				return errors.New("h3 not configured")
			}
			if !slices.Contains(tunnelRoutes(t, h1), "10.42.3.0/24") {
				return errors.New("no route to h3's slice")
			}
			return nil
		})
	})

	t.Run("a host refuses to start with a certificate for another name", func(t *testing.T) {
		if _, err := h3.WriteConfig(p.identityTOML(stolen)); err != nil {
			t.Fatal(err)
		}
		out, code := runMeshd(t, "ip", "netns", "exec", h3.NS(), meshdBin, "run", "--config", h3.ConfigPath())
		if code != 2 || !strings.Contains(out, "identity.cert_file") {
			t.Fatalf("exit %d, %q; want exit 2 naming identity.cert_file", code, out)
		}
		assertNothingLeft(t, h3)
	})
}

// configWithoutSubnet renders a host's config with its subnets removed,
// so meshd claims them.
func configWithoutSubnet(t *testing.T, h *lab.Host, extra string) {
	t.Helper()
	var kept []string
	for _, line := range strings.Split(h.Config(extra), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "subnet") {
			kept = append(kept, line)
		}
	}
	if err := os.MkdirAll(h.Dir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.ConfigPath(), []byte(strings.Join(kept, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
}

func claimedSlice(t *testing.T, h *lab.Host) (netip.Prefix, error) {
	st, err := status(t, h)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.ParsePrefix(st.Node.Segments[0].Subnet)
}

// readdress moves a host's pod and gateway into the slice meshd claimed,
// as a CNI plugin would have from the start.
func readdress(t *testing.T, h *lab.Host, slice netip.Prefix) netip.Addr {
	gw := slice.Addr().Next()
	pod := netip.AddrFrom4(func() [4]byte { b := slice.Addr().As4(); b[3] = 10; return b }())
	run(t, h.NS(), "ip", "addr", "flush", "dev", "p-blue")
	run(t, h.NS(), "ip", "addr", "add", netip.PrefixFrom(gw, slice.Bits()).String(), "dev", "p-blue")
	run(t, h.PodNS("blue"), "ip", "addr", "flush", "dev", "eth0")
	run(t, h.PodNS("blue"), "ip", "addr", "add", netip.PrefixFrom(pod, slice.Bits()).String(), "dev", "eth0")
	run(t, h.PodNS("blue"), "ip", "route", "replace", "default", "via", gw.String())
	return pod
}

func TestClaimedSlices(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 3, Segments: []lab.SegmentSpec{blue}})
	hosts := l.Hosts()
	for _, h := range hosts {
		configWithoutSubnet(t, h, "")
		if err := h.Start(meshdBin); err != nil {
			t.Fatal(err)
		}
	}
	claims := map[string]netip.Prefix{}
	waitFor(t, 30*time.Second, "every host claims a distinct slice and sees the others", func() error {
		seen := map[netip.Prefix]string{}
		for _, h := range hosts {
			p, err := claimedSlice(t, h)
			if err != nil {
				return err
			}
			if other, dup := seen[p]; dup {
				return fmt.Errorf("%s and %s both hold %s", other, h.Name(), p)
			}
			seen[p] = h.Name()
			claims[h.Name()] = p
			if len(tunnelRoutes(t, h)) != 2 {
				return fmt.Errorf("%s routes %v", h.Name(), tunnelRoutes(t, h))
			}
		}
		return nil
	})
	pods := map[string]netip.Addr{}
	for _, h := range hosts {
		pods[h.Name()] = readdress(t, h, claims[h.Name()])
	}
	waitFor(t, 20*time.Second, "pods in claimed slices reach each other", func() error {
		for _, a := range hosts {
			for _, b := range hosts {
				if a != b {
					if err := lab.Ping(context.Background(), a.PodNS("blue"), pods[b.Name()], 1, 2*time.Second); err != nil {
						return fmt.Errorf("%s -> %s: %w", a.Name(), b.Name(), err)
					}
				}
			}
		}
		return nil
	})

	t.Run("claims survive a restart", func(t *testing.T) {
		h := l.Host(3)
		if err := h.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := h.Start(meshdBin); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "h3 back", func() error {
			p, err := claimedSlice(t, h)
			if err != nil {
				return err
			}
			if p != claims["h3"] {
				t.Fatalf("h3 came back with %s, had %s", p, claims["h3"])
			}
			return nil
		})
	})

	t.Run("a forced conflict resolves to one owner everywhere", func(t *testing.T) {
		h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
		if err := h2.Stop(); err != nil {
			t.Fatal(err)
		}
		// h2 comes back claiming h1's slice with an earlier Lamport time:
		// h1 must yield and move.
		contested := claims["h1"]
		forced := fmt.Sprintf(`{"blue": {"prefix": %q, "claimed_at": 1}}`, contested)
		if err := os.WriteFile(filepath.Join(h2.DataDir(), "claims.json"), []byte(forced), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := h2.Start(meshdBin); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "one owner of the contested slice", func() error {
			p1, err := claimedSlice(t, h1)
			if err != nil {
				return err
			}
			p2, err := claimedSlice(t, h2)
			if err != nil {
				return err
			}
			if p2 != contested {
				return fmt.Errorf("h2 holds %s, want the contested %s", p2, contested)
			}
			if p1 == contested || p1.Overlaps(contested) {
				return fmt.Errorf("h1 still holds %s", p1)
			}
			// Every host routes the contested slice to h2 only.
			for _, h := range []*lab.Host{h1, h3} {
				out := run(t, h.NS(), "ip", "route", "show", "table", "51800", contested.String())
				if !strings.Contains(out, "dev "+h.Interface()) {
					return fmt.Errorf("%s: %q", h.Name(), out)
				}
			}
			ips := run(t, h3.NS(), "wg", "show", h3.Interface(), "allowed-ips")
			if strings.Count(ips, contested.String()) != 1 {
				return fmt.Errorf("h3 has %d peers for %s", strings.Count(ips, contested.String()), contested)
			}
			return nil
		})
	})
}

func TestKeyRotationKeepsConnections(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 2, Segments: []lab.SegmentSpec{blue}})
	h1, h2 := l.Host(1), l.Host(2)
	p := newPKI(t)
	for _, h := range l.Hosts() {
		start(t, h, p.identityTOML(p.sign("ca", h.Name(), h.Name())))
	}
	waitFor(t, 60*time.Second, "mesh", fullMesh(l.Hosts(), "blue"))
	oldKey := publicKey(t, h1)

	conn := openEcho(t, h1, h2, "blue", "blue", 7070)
	defer conn.Close()
	stopStream := make(chan struct{})
	streamErr := make(chan error, 1)
	var sent int
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stopStream:
				streamErr <- nil
				return
			case <-time.After(100 * time.Millisecond):
			}
			conn.SetDeadline(time.Now().Add(20 * time.Second))
			if err := echoLong(conn, fmt.Sprintf("msg-%06d", i)); err != nil {
				streamErr <- fmt.Errorf("message %d: %w", i, err)
				return
			}
			sent = i + 1
		}
	}()
	time.Sleep(time.Second)
	out, code := runMeshd(t, meshdBin, "rotate-key", "--socket", h1.ControlSocket())
	if code != 0 {
		t.Fatalf("rotate-key: exit %d: %s", code, out)
	}
	newKey := publicKey(t, h1)
	if newKey == oldKey {
		t.Fatal("rotate-key did not change the key")
	}
	waitFor(t, 15*time.Second, "h2 swaps h1's key", func() error {
		peers := run(t, h2.NS(), "wg", "show", h2.Interface(), "peers")
		if strings.Contains(peers, oldKey) || !strings.Contains(peers, newKey) {
			return fmt.Errorf("h2 peers:\n%s", peers)
		}
		return nil
	})
	time.Sleep(8 * time.Second) // long enough for a stalled stream to time out
	close(stopStream)
	if err := <-streamErr; err != nil {
		t.Fatalf("the TCP stream broke across the rotation: %v", err)
	}
	if sent < 50 {
		t.Fatalf("only %d messages crossed in ~10 s", sent)
	}
	t.Logf("MEASURE %d echo round trips across a key rotation, none lost", sent)
	raw, err := os.ReadFile(filepath.Join(h1.DataDir(), "wireguard.key"))
	if err != nil {
		t.Fatal(err)
	}
	// After a restart h1 must come back with the rotated key.
	if err := h1.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := h1.Start(meshdBin); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "h1 back", fullMesh(l.Hosts(), "blue"))
	if k := publicKey(t, h1); k != newKey {
		t.Fatalf("after restart h1 has key %s, want the rotated %s (file %q)", k, newKey, raw)
	}
}

// echoLong is echo with the deadline already set by the caller.
func echoLong(c interface {
	Write([]byte) (int, error)
	Read([]byte) (int, error)
}, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		if err != nil {
			return err
		}
		n += m
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

func TestGossipKeyRotation(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 3, Segments: []lab.SegmentSpec{blue}})
	startAll(t, l, "")
	hosts := l.Hosts()
	waitFor(t, 60*time.Second, "mesh", fullMesh(hosts, "blue"))
	oldKey, err := os.ReadFile(l.GossipKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	newKey, code := runMeshd(t, meshdBin, "keygen", "gossip")
	if code != 0 {
		t.Fatal(newKey)
	}
	newKey, old := strings.TrimSpace(newKey), strings.TrimSpace(string(oldKey))
	sock := l.Host(1).ControlSocket()
	for _, step := range [][]string{{"install", newKey}, {"use", newKey}, {"remove", old}} {
		out, code := runMeshd(t, append([]string{meshdBin, "gossip-key", "--socket", sock}, step...)...)
		if code != 0 || !strings.Contains(out, "3 of 3 members answered, 0 failed") {
			t.Fatalf("gossip-key %s: exit %d: %s", step[0], code, out)
		}
	}
	out, _ := runMeshd(t, meshdBin, "gossip-key", "--socket", sock, "list")
	if !strings.Contains(out, cluster.KeyFingerprint(newKey)+"  installed on 3  primary on 3") ||
		strings.Contains(out, cluster.KeyFingerprint(old)) || strings.Contains(out, newKey) {
		t.Fatalf("keyring after rotation (by fingerprint, the old key gone, no key printed):\n%s", out)
	}
	for _, h := range hosts {
		st, err := status(t, h)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Peers {
			if p.State != "alive" {
				t.Errorf("%s sees %s %s after the rotation: the cluster partitioned", h.Name(), p.Name, p.State)
			}
		}
	}
	// A restarted host must use the saved keyring, not the old key file.
	h2 := l.Host(2)
	if err := h2.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := h2.Start(meshdBin); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "h2 rejoins with the rotated key", func() error {
		if state, _, err := peerState(t, l.Host(1), "h2"); err != nil || state != "alive" {
			return fmt.Errorf("h1 sees h2 %q (%v)", state, err)
		}
		return fullMesh(hosts, "blue")()
	})
}
