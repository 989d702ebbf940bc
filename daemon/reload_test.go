package daemon

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/policy"
)

// reloadable starts host i with Options that reload its own meshd.toml,
// as 'meshd run --config' does.
func (c *cluster3) reloadable(t *testing.T, i int, extra string) *running {
	h := c.hosts[i-1]
	path := filepath.Join(h.dir, "meshd.toml")
	return startDaemon(t, h, c.config(i, extra), Options{Reload: func() (*config.Config, error) { return config.Load(path) }, ConfigPath: path})
}

// edit writes host i's meshd.toml as an operator would before a reload.
func (c *cluster3) edit(t *testing.T, i int, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(c.hosts[i-1].dir, "meshd.toml"), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reloadHost is 'meshd reload --socket'.
func reloadHost(t *testing.T, h *testHost, body string) (control.ReloadResult, error) {
	t.Helper()
	var res control.ReloadResult
	err := control.NewClient(filepath.Join(h.dir, "meshd.sock")).PostJSON("/v1/reload", body, &res)
	return res, err
}

func TestReloadAppliesWhatItCanAndNamesTheRest(t *testing.T) {
	c := newCluster3(t)
	h1 := c.hosts[0]
	r1 := c.reloadable(t, 1, "")
	text := c.text(1, "\n[[allow]]\nfrom = \"green\"\nto = \"blue\"\nports = [\"tcp/8080\"]\n")
	text = strings.Replace(text, `mode = "userspace"`, "mode = \"userspace\"\nlisten_port = 51999", 1)
	text = strings.ReplaceAll(text, "10.43.", "10.44.")
	c.edit(t, 1, text)

	res, err := reloadHost(t, h1, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"1 allow rule"}; !slices.Equal(res.Applied, want) {
		t.Errorf("applied %q, want %q", res.Applied, want)
	}
	if want := []string{"wireguard.listen_port", "segments[1].cidr", "segments[1].subnet"}; !slices.Equal(res.Restart, want) {
		t.Errorf("restart %q, want %q", res.Restart, want)
	}
	if !slices.ContainsFunc(r1.d.Status().Policy, func(p control.PolicyCounter) bool { return p.Label == "allow[0]" }) {
		t.Error("the allow rule was not applied along with the report")
	}
	if st := r1.d.Status(); st.Node.ListenPort != 51820 || st.Node.Segments[1].CIDR != "10.43.0.0/16" {
		t.Errorf("a setting that needs a restart changed the running daemon: port %d, green %s", st.Node.ListenPort, st.Node.Segments[1].CIDR)
	}

	// Only the rules changed: nothing waits for a restart.
	c.edit(t, 1, c.text(1, ""))
	if res, err := reloadHost(t, h1, ""); err != nil || len(res.Restart) != 0 || len(res.Applied) != 1 {
		t.Errorf("reload of the rules alone: %+v, %v", res, err)
	}

	// The same-segment fast path is applied by reload, with the rules.
	c.edit(t, 1, c.text(1, "\n[policy]\nuntracked_same_segment = true\n"))
	res, err = reloadHost(t, h1, "")
	if err != nil || len(res.Restart) != 0 || !slices.Contains(res.Applied, "policy.untracked_same_segment = true") {
		t.Errorf("reload turning the fast path on: %+v, %v", res, err)
	}
	if !slices.Contains(h1.nft.Chains("meshd"), policy.NotrackPrerouting) {
		t.Errorf("the fast path's chains are not in the table: %v", h1.nft.Chains("meshd"))
	}
	c.edit(t, 1, c.text(1, ""))
	if _, err := reloadHost(t, h1, ""); err != nil || slices.Contains(h1.nft.Chains("meshd"), policy.NotrackPrerouting) {
		t.Errorf("reload turning the fast path off: %v; chains %v", err, h1.nft.Chains("meshd"))
	}

	// A reload asked for with another file than the daemon's is refused.
	other := filepath.Join(t.TempDir(), "meshd.toml")
	os.WriteFile(other, []byte(c.text(1, "")), 0o600)
	_, err = reloadHost(t, h1, fmt.Sprintf(`{"config": %q}`, other))
	var re *control.RemoteError
	if !errors.As(err, &re) || !re.BadInput() || !strings.Contains(re.Message, "this meshd reads "+filepath.Join(h1.dir, "meshd.toml")) {
		t.Errorf("reload naming another file: %v", err)
	}
	if _, err := reloadHost(t, h1, fmt.Sprintf(`{"config": %q}`, filepath.Join(h1.dir, "meshd.toml"))); err != nil {
		t.Errorf("reload naming the daemon's own file: %v", err)
	}
}

// testCA issues host certificates the way 'meshd ca sign' does.
type testCA struct {
	t   *testing.T
	dir string
	ca  *identity.CA
	n   int
}

func newTestCA(t *testing.T) *testCA {
	dir := t.TempDir()
	ca, err := identity.InitCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{t: t, dir: dir, ca: ca}
}

// issue signs a fresh key for name, valid for d from now, and returns
// the [identity] table naming it, with mode.
func (c *testCA) issue(name string, d time.Duration, mode string) (string, *identity.Cert) {
	return c.issueIn(name, "", false, d, mode)
}

// issueIn is issue for a host of site that may be its gateway.
func (c *testCA) issueIn(name, site string, gateway bool, d time.Duration, mode string) (string, *identity.Cert) {
	c.t.Helper()
	c.n++
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	cert, err := c.ca.Sign(identity.Cert{Name: name, Segments: []string{"blue", "green"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(d), PublicKey: pub,
		Site: site, Gateway: gateway})
	if err != nil {
		c.t.Fatal(err)
	}
	dir := filepath.Join(c.dir, fmt.Sprintf("%s-%d", name, c.n))
	if err := identity.WriteHost(dir, cert, key, false); err != nil {
		c.t.Fatal(err)
	}
	return fmt.Sprintf("\n[identity]\nca_file = %q\ncert_file = %q\nkey_file = %q\nmode = %q\n",
		filepath.Join(c.dir, "ca", "ca.crt"), filepath.Join(dir, "host.crt"), filepath.Join(dir, "host.key"), mode), cert
}

// A running cluster turns its CA on host by host in transitional mode,
// then strict, renews a certificate and refuses a CA swap, all by
// reload: no host restarts, and the mesh never loses a peer.
func TestCARolloutAndRenewalByReload(t *testing.T) {
	c := newCluster3(t)
	ca := newTestCA(t)
	var rs []*running
	for i := 1; i <= 3; i++ {
		rs = append(rs, c.reloadable(t, i, ""))
	}
	h1, h2, h3 := c.hosts[0], c.hosts[1], c.hosts[2]
	all := func() error { return errors.Join(meshed(h1, h2, h3), meshed(h2, h1, h3), meshed(h3, h1, h2)) }
	eventually(t, 15*time.Second, "three hosts meshed", all)
	unsigned := func(r *running) []string {
		if id := r.d.Status().Identity; id != nil {
			return id.Unsigned
		}
		return nil
	}

	for i, want := range [][]string{{"h2", "h3"}, {"h3"}, {}} {
		extra, _ := ca.issue(c.hosts[i].name, 365*24*time.Hour, "transitional")
		c.edit(t, i+1, c.text(i+1, extra))
		res, err := reloadHost(t, c.hosts[i], "")
		if err != nil || len(res.Restart) != 0 || !strings.Contains(strings.Join(res.Applied, ";"), "the cluster CA in transitional mode, signing with certificate "+c.hosts[i].name) {
			t.Fatalf("%s to transitional: %+v, %v", c.hosts[i].name, res, err)
		}
		eventually(t, 10*time.Second, c.hosts[i].name+" converted, mesh intact", func() error {
			if got := unsigned(rs[0]); !slices.Equal(got, want) {
				return fmt.Errorf("h1 accepts unsigned %q, want %q", got, want)
			}
			return all()
		})
	}
	if id := rs[0].d.Status().Identity; id == nil || id.Mode != "transitional" || id.ExpirySeconds < 364*24*3600 {
		t.Fatalf("h1 identity status %+v", id)
	}

	renewed := ""
	for i := 1; i <= 3; i++ {
		text := strings.Replace(readFile(t, filepath.Join(c.hosts[i-1].dir, "meshd.toml")), `mode = "transitional"`, `mode = "strict"`, 1)
		c.edit(t, i, text)
		if res, err := reloadHost(t, c.hosts[i-1], ""); err != nil || !slices.Equal(res.Applied, []string{"0 allow rules", "identity.mode strict"}) {
			t.Fatalf("h%d to strict: %+v, %v", i, res, err)
		}
	}
	eventually(t, 10*time.Second, "strict everywhere, mesh intact", all)

	t.Run("renewal", func(t *testing.T) {
		extra, cert := ca.issue("h2", 30*24*time.Hour, "strict")
		renewed = identity.EncodeTag(cert.Marshal())
		c.edit(t, 2, c.text(2, extra))
		res, err := reloadHost(t, h2, "")
		if err != nil || len(res.Restart) != 0 || !strings.HasPrefix(res.Applied[1], "certificate h2 (") {
			t.Fatalf("renewal: %+v, %v", res, err)
		}
		eventually(t, 10*time.Second, "h1 and h3 verify h2's new certificate", func() error {
			for _, r := range []*running{rs[0], rs[2]} {
				if got := tagsOf(r, "h2")["c"]; got != renewed {
					return errors.New("h2's old certificate is still announced")
				}
				if rej := r.d.Status().Rejected; len(rej) > 0 {
					return fmt.Errorf("rejected %+v", rej)
				}
			}
			return all()
		})
		if days := rs[1].d.Status().Identity.ExpirySeconds / 86400; days > 30 || days < 29 {
			t.Errorf("h2's status still shows the old certificate: %.1f days left", days)
		}
	})

	t.Run("another CA takes a restart", func(t *testing.T) {
		extra, _ := newTestCA(t).issue("h3", 365*24*time.Hour, "strict")
		c.edit(t, 3, c.text(3, extra))
		res, err := reloadHost(t, h3, "")
		if err != nil || !slices.Equal(res.Restart, []string{"identity.ca_file", "identity.cert_file", "identity.key_file"}) {
			t.Fatalf("CA swap: %+v, %v", res, err)
		}
		time.Sleep(500 * time.Millisecond)
		if err := all(); err != nil {
			t.Fatalf("a refused CA swap disturbed the mesh: %v", err)
		}
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func tagsOf(r *running, name string) map[string]string {
	for _, m := range r.d.members.Members() {
		if m.Name == name {
			return m.Tags
		}
	}
	return nil
}

// Each threshold is logged once, as it is crossed, and a new certificate
// starts over.
func TestCertificateExpiryIsWarnedOncePerThreshold(t *testing.T) {
	ca := newTestCA(t)
	_, cert := ca.issue("h1", 40*24*time.Hour, "strict")
	var buf bytes.Buffer
	d := &Daemon{log: slog.New(slog.NewTextHandler(&buf, nil)), ann: &announcer{}}
	d.ann.setIdentity(config.Identity{CA: ca.ca.Public, Cert: cert, CertFile: "/etc/meshd/host.crt", Mode: config.TrustStrict})
	day := 24 * time.Hour
	for _, left := range []time.Duration{40 * day, 31 * day, 29 * day, 20 * day, 6 * day, 5 * day, 23 * time.Hour, time.Hour, -time.Second, -day} {
		d.warnExpiry(cert.NotAfter.Add(-left))
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{"level=WARN msg=\"this host's certificate expires soon\" in=696h0m0s", "level=WARN msg=\"this host's certificate expires soon\" in=144h0m0s",
		"level=WARN msg=\"this host's certificate expires soon\" in=23h0m0s", "level=ERROR msg=\"this host's certificate has expired: every other host refuses its announcements\""}
	if len(lines) != len(want) {
		t.Fatalf("logged %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) || !strings.Contains(lines[i], "meshd reload") {
			t.Errorf("line %d: %s\nwant %s ... meshd reload", i, lines[i], w)
		}
	}
}

// A reload's transaction spares this host's slices in the no-plaintext
// guard, and the loop's record says so: a record left behind (here one
// that an earlier failed apply kept) made the next pass apply the whole
// table again, resetting every counter.
func TestReloadRecordsTheGuardedSlices(t *testing.T) {
	c := newCluster3(t)
	h1 := c.hosts[0]
	r1 := c.reloadable(t, 1, "")
	eventually(t, 5*time.Second, "a first pass", func() error {
		if r1.d.Status().Reconciles == 0 {
			return errors.New("no pass yet")
		}
		return nil
	})
	// On the loop, so that no pass comes in between.
	var before int
	req := request{fn: func() error {
		r1.d.guarded = nil
		before = h1.nft.Flushes()
		_, err := r1.d.reload()
		return err
	}, answer: make(chan error, 1)}
	r1.d.requests <- req
	if err := <-req.answer; err != nil {
		t.Fatal(err)
	}
	passes := r1.d.Status().Reconciles
	r1.d.Kick()
	eventually(t, 5*time.Second, "a pass after the reload", func() error {
		if r1.d.Status().Reconciles == passes {
			return errors.New("no pass yet")
		}
		return nil
	})
	if n := h1.nft.Flushes() - before; n != 1 {
		t.Errorf("%d nftables transactions for one reload and a pass, want 1", n)
	}
}
