package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/bits"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshd/meshd/cni"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/lab"
)

// cniPath is where Debian's containernetworking-plugins installs them.
const cniPath = "/usr/lib/cni"

// TestCNIBridgeAcrossMesh attaches a container to a segment with the
// standard bridge plugin and the conflist meshd generates, and checks the
// container reaches a pod on another host through the mesh.
func TestCNIBridgeAcrossMesh(t *testing.T) {
	for _, seg := range []lab.SegmentSpec{
		{Name: "cni", CIDR: "10.44.0.0/16", SliceBits: 24},
		{Name: "cni6", CIDR: "fd44::/48", SliceBits: 64},
	} {
		t.Run(seg.Name, func(t *testing.T) { testCNISegment(t, seg) })
	}
}

func testCNISegment(t *testing.T, seg lab.SegmentSpec) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, filepath.Join(cniPath, "bridge"), filepath.Join(cniPath, "host-local"))
	l := newLab(t, lab.Spec{Hosts: 2, Segments: []lab.SegmentSpec{seg}})
	h1, h2 := l.Host(1), l.Host(2)
	for _, h := range l.Hosts() {
		startWithCNIDir(t, h, "")
	}
	st := waitStatus(t, h1)
	conf := readConflist(t, h1, seg.Name)
	checkConflist(t, conf, h1.Subnet(seg.Name), st.Node.MTU)

	// The lab wires its own pod to every host with a veth holding the
	// slice's gateway address (x.1). The bridge plugin must own that
	// address, so h1's lab pod link goes; h2 keeps its pod as the target.
	run(t, h1.NS(), "ip", "link", "del", "p-"+seg.Name)

	ctr := newContainerNS(t, l)
	c := &cniRun{t: t, hostNS: h1.NS(), conf: conf, ipamDir: t.TempDir(), containerID: "meshd-e2e-" + seg.Name, netns: ctr}
	result := c.add()
	addr := containerAddr(t, result)
	if !h1.Subnet(seg.Name).Contains(addr.Addr()) {
		t.Fatalf("container got %s, outside h1's slice %s", addr, h1.Subnet(seg.Name))
	}
	checkContainerLink(t, ctr, seg, st.Node.MTU)

	target := h2.PodAddr(seg.Name)
	waitFor(t, 60*time.Second, "container on h1 -> pod on h2", func() error {
		return lab.Ping(context.Background(), ctr, target, 1, 2*time.Second)
	})
	if err := lab.Ping(context.Background(), h2.PodNS(seg.Name), addr.Addr(), 2, 0); err != nil {
		t.Errorf("pod on h2 -> container on h1: %v", err)
	}
	// A packet as large as the container's MTU, never fragmented, crosses
	// the tunnel: the conflist's MTU is the WireGuard MTU.
	if err := pingDF(ctr, target, st.Node.MTU); err != nil {
		t.Errorf("full-MTU packet from the container: %v", err)
	}

	c.del(result)
	if out, err := lab.Exec(context.Background(), ctr, "ip", "link", "show", "eth0"); err == nil {
		t.Errorf("eth0 still in the container after DEL:\n%s", out)
	}
	if leases := ipamLeases(t, c.ipamDir); len(leases) != 0 {
		t.Errorf("host-local still holds %v after DEL", leases)
	}

	// The conflist outlives meshd: a runtime needs it to detach the
	// containers still running on it.
	if err := h1.Stop(); err != nil {
		t.Fatal(err)
	}
	if after, err := os.ReadFile(filepath.Join(cniDir(h1), cni.FileName(seg.Name))); err != nil || !bytes.Equal(after, conf) {
		t.Errorf("meshd's shutdown removed or changed the conflist (%v)", err)
	}
}

func cniDir(h *lab.Host) string { return filepath.Join(h.Dir(), "cni") }

// writeOpsConfig gives the host a private cni_conf_dir, so no test writes
// into the machine's /etc/cni/net.d. A top-level TOML key must come before
// the first table, and Config's extra text is appended after them; a
// cni_conf_dir the lab may set itself is replaced.
func writeOpsConfig(t *testing.T, h *lab.Host, extra string) {
	t.Helper()
	lines := []string{fmt.Sprintf("cni_conf_dir = %q", cniDir(h))}
	for _, line := range strings.Split(h.Config(extra), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "cni_conf_dir") {
			lines = append(lines, line)
		}
	}
	if err := os.WriteFile(h.ConfigPath(), []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
}

func startWithCNIDir(t *testing.T, h *lab.Host, extra string) {
	t.Helper()
	writeOpsConfig(t, h, extra)
	if err := h.Start(meshdBin); err != nil {
		t.Fatal(err)
	}
}

func waitStatus(t *testing.T, h *lab.Host) *control.Status {
	t.Helper()
	var st *control.Status
	waitFor(t, 30*time.Second, h.Name()+" answering status", func() (err error) {
		st, err = status(t, h)
		return err
	})
	return st
}

// readConflist returns the conflist meshd wrote for segment on its first
// reconcile pass.
func readConflist(t *testing.T, h *lab.Host, segment string) []byte {
	t.Helper()
	path := filepath.Join(cniDir(h), cni.FileName(segment))
	waitFor(t, 30*time.Second, "meshd writing "+path, func() error {
		_, err := os.Stat(path)
		return err
	})
	conf, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s:\n%s", path, conf)
	return conf
}

func checkConflist(t *testing.T, conf []byte, slice netip.Prefix, mtu int) {
	t.Helper()
	var list struct {
		Plugins []struct {
			MTU  int `json:"mtu"`
			IPAM struct {
				Ranges [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(conf, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Plugins) == 0 || len(list.Plugins[0].IPAM.Ranges) == 0 || len(list.Plugins[0].IPAM.Ranges[0]) == 0 {
		t.Fatalf("conflist lacks a bridge plugin with a range")
	}
	p := list.Plugins[0]
	if p.MTU != mtu || p.IPAM.Ranges[0][0].Subnet != slice.String() {
		t.Errorf("conflist has mtu %d, subnet %s; want the WireGuard MTU %d and the host's slice %s",
			p.MTU, p.IPAM.Ranges[0][0].Subnet, mtu, slice)
	}
}

// newContainerNS is a bare namespace standing in for a container. Its name
// carries the lab prefix, so the lab removes it even if the test dies.
func newContainerNS(t *testing.T, l *lab.Lab) string {
	t.Helper()
	name := l.Prefix() + "-ctr"
	run(t, "", "ip", "netns", "add", name)
	t.Cleanup(func() { lab.Exec(context.Background(), "", "ip", "netns", "del", name) })
	return name
}

// cniRun executes a conflist's plugins the way a runtime (libcni) does:
// each plugin gets its own object plus the list's name and cniVersion,
// ADD runs in order with the previous result, DEL in reverse with the
// final ADD result. The plugins run in the host's network namespace, as
// a runtime on that host would.
type cniRun struct {
	t           *testing.T
	hostNS      string
	conf        []byte
	ipamDir     string
	containerID string
	netns       string
}

func (c *cniRun) plugins() []map[string]any {
	c.t.Helper()
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(c.conf, &list); err != nil {
		c.t.Fatal(err)
	}
	for _, p := range list.Plugins {
		p["cniVersion"], p["name"] = list.CNIVersion, list.Name
		// host-local's leases go to a test directory instead of the
		// machine's /var/lib/cni; nothing else in the file changes.
		if ipam, ok := p["ipam"].(map[string]any); ok && ipam["type"] == "host-local" {
			ipam["dataDir"] = c.ipamDir
		}
	}
	return list.Plugins
}

func (c *cniRun) add() json.RawMessage {
	var prev json.RawMessage
	for _, p := range c.plugins() {
		if prev != nil {
			p["prevResult"] = prev
		}
		prev = c.exec("ADD", p)
	}
	return prev
}

func (c *cniRun) del(result json.RawMessage) {
	plugins := c.plugins()
	for i := len(plugins) - 1; i >= 0; i-- {
		plugins[i]["prevResult"] = result
		c.exec("DEL", plugins[i])
	}
}

func (c *cniRun) exec(command string, plugin map[string]any) json.RawMessage {
	c.t.Helper()
	stdin, err := json.Marshal(plugin)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", c.hostNS, filepath.Join(cniPath, plugin["type"].(string)))
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command,
		"CNI_CONTAINERID="+c.containerID,
		"CNI_NETNS=/var/run/netns/"+c.netns,
		"CNI_IFNAME=eth0",
		"CNI_PATH="+cniPath,
	)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("CNI %s %s: %v\nconfig: %s\nstdout: %s\nstderr: %s", command, plugin["type"], err, stdin, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}

func containerAddr(t *testing.T, result json.RawMessage) netip.Prefix {
	t.Helper()
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(result, &r); err != nil || len(r.IPs) != 1 {
		t.Fatalf("CNI result %s: want exactly one address (%v)", result, err)
	}
	p, err := netip.ParsePrefix(r.IPs[0].Address)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// checkContainerLink checks what the conflist promised the container: the
// tunnel's MTU, routes covering the segment through the bridge and no
// default route.
func checkContainerLink(t *testing.T, ns string, seg lab.SegmentSpec, mtu int) {
	t.Helper()
	link := run(t, ns, "ip", "-o", "link", "show", "eth0")
	if !strings.Contains(link, " mtu "+strconv.Itoa(mtu)+" ") {
		t.Errorf("container eth0 should have mtu %d: %s", mtu, link)
	}
	fam := "-4"
	if strings.Contains(seg.CIDR, ":") {
		fam = "-6"
	}
	routes := run(t, ns, "ip", fam, "route", "show")
	cidr := netip.MustParsePrefix(seg.CIDR)
	covered := 0
	for _, line := range strings.Split(routes, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[1] != "via" {
			continue
		}
		if p, err := netip.ParsePrefix(f[0]); err == nil && cidr.Contains(p.Addr()) && p.Bits() == cidr.Bits()+1 {
			covered++
		}
	}
	if covered != 2 {
		t.Errorf("container lacks the two halves of %s via the bridge:\n%s", seg.CIDR, routes)
	}
	if strings.Contains(routes, "default") {
		t.Errorf("container got a default route; meshd's conflist should add only the segments:\n%s", routes)
	}
}

// pingDF sends one echo request exactly mtu bytes long with fragmentation
// forbidden.
func pingDF(ns string, to netip.Addr, mtu int) error {
	header, fam := 28, "-4" // IPv4 + ICMP
	if to.Is6() {
		header, fam = 48, "-6" // IPv6 + ICMPv6
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := lab.Exec(ctx, ns, "ping", fam, "-n", "-q", "-c", "1", "-w", "5", "-M", "do", "-s", strconv.Itoa(mtu-header), to.String())
	return err
}

// ipamLeases lists host-local's reservations: files named after addresses.
func ipamLeases(t *testing.T, dir string) []string {
	t.Helper()
	var leases []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if _, perr := netip.ParseAddr(d.Name()); perr == nil {
				leases = append(leases, d.Name())
			}
		}
		return nil
	})
	return leases
}

const metricsListen = "127.0.0.1:9474"

// TestMetricsEndpoint scrapes a running mesh the way Prometheus would.
func TestMetricsEndpoint(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 2, Segments: []lab.SegmentSpec{blue}})
	h1, h2 := l.Host(1), l.Host(2)
	for _, h := range l.Hosts() {
		startWithCNIDir(t, h, "[metrics]\nlisten = \""+metricsListen+"\"\n")
	}
	waitFor(t, 60*time.Second, "pods ping across", fullMesh(l.Hosts(), "blue"))

	var fams map[string]*dto.MetricFamily
	waitFor(t, 30*time.Second, "a handshake visible in the metrics", func() (err error) {
		if fams, err = scrapeIn(h1.NS()); err != nil {
			return err
		}
		if v, ok := sample(fams, "meshd_peer_handshake_age_seconds", "peer", h2.Name()); !ok || v < 0 {
			return fmt.Errorf("no handshake age for %s", h2.Name())
		}
		return nil
	})
	for _, c := range []struct {
		name, label, value string
		check              func(float64) bool
		want               string
	}{
		{"meshd_info", "node", h1.Name(), func(v float64) bool { return v == 1 }, "1"},
		{"meshd_serf_members", "", "", func(v float64) bool { return v == 2 }, "2"},
		{"meshd_peers", "state", "alive", func(v float64) bool { return v == 1 }, "1"},
		{"meshd_peers", "state", "failed", func(v float64) bool { return v == 0 }, "0"},
		{"meshd_rejected_announcements", "", "", func(v float64) bool { return v == 0 }, "0"},
		{"meshd_peer_receive_bytes_total", "peer", h2.Name(), func(v float64) bool { return v > 0 }, "> 0"},
		{"meshd_peer_transmit_bytes_total", "peer", h2.Name(), func(v float64) bool { return v > 0 }, "> 0"},
		{"meshd_reconciles_total", "result", "ok", func(v float64) bool { return v >= 1 }, ">= 1"},
		{"meshd_reconcile_duration_seconds", "", "", func(v float64) bool { return v >= 1 }, ">= 1 observation"},
		{"go_goroutines", "", "", func(v float64) bool { return v > 0 }, "> 0"},
	} {
		v, ok := sample(fams, c.name, c.label, c.value)
		if !ok || !c.check(v) {
			t.Errorf("%s{%s=%q} = %v (present %v), want %s", c.name, c.label, c.value, v, ok, c.want)
		}
	}
	if _, ok := fams["meshd_policy_packets_total"]; !ok {
		t.Error("meshd_policy_packets_total missing")
	}
}

// TestMetricsPortTakenFailsStartup: a taken metrics port is a runtime
// failure (exit 1) that leaves nothing behind, not a daemon running
// without the metrics its operator asked for.
func TestMetricsPortTakenFailsStartup(t *testing.T) {
	l := newLab(t, lab.Spec{Hosts: 1, Segments: []lab.SegmentSpec{blue}})
	h := l.Host(1)
	var squatter net.Listener
	if err := lab.InNetns(h.NS(), func() (err error) {
		squatter, err = net.Listen("tcp", metricsListen)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	writeOpsConfig(t, h, "[metrics]\nlisten = \""+metricsListen+"\"\n")
	out, code := runMeshd(t, "ip", "netns", "exec", h.NS(), meshdBin, "run", "--config", h.ConfigPath())
	if code != 1 {
		t.Fatalf("exit code %d, want 1; output:\n%s", code, out)
	}
	if !strings.Contains(out, metricsListen) || !strings.Contains(out, "[metrics] listen") {
		t.Errorf("the error should name the address and the setting:\n%s", out)
	}
	assertNothingLeft(t, h)
}

// scrapeIn fetches /metrics over a connection opened inside ns, where
// the daemon's loopback listener lives.
func scrapeIn(ns string) (map[string]*dto.MetricFamily, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = lab.InNetns(ns, func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	resp, err := client.Get("http://" + metricsListen + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// sample returns the value of the series of name whose label equals value
// (any series when label is empty); histograms yield their sample count.
func sample(fams map[string]*dto.MetricFamily, name, label, value string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		if label != "" && !hasLabel(m, label, value) {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// TestMeshWithUnitCapabilities runs meshd with only the capabilities
// packaging/meshd.service grants (and no_new_privs, as the unit sets), so
// trimming the unit's CapabilityBoundingSet cannot silently break
// startup, the data plane or teardown.
func TestMeshWithUnitCapabilities(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "setpriv")
	caps := unitCapabilities(t)
	l := newLab(t, lab.Spec{Hosts: 2, Segments: []lab.SegmentSpec{blue}})
	wrapper := unitCapsWrapper(t)
	for _, h := range l.Hosts() {
		writeOpsConfig(t, h, "")
		if err := h.Start(wrapper); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 60*time.Second, "pods ping across with the unit's capabilities", fullMesh(l.Hosts(), "blue"))
	checkRestricted(t, l.Host(1).Pid(), strings.Count(caps, "+"))
	for _, h := range l.Hosts() {
		if err := h.Stop(); err != nil {
			t.Errorf("stop %s: %v", h.Name(), err)
		}
		assertNothingLeft(t, h)
	}
}

// unitCapsWrapper writes a script that runs meshd as the unit does: with
// only its capabilities and no_new_privs.
func unitCapsWrapper(t *testing.T) string {
	t.Helper()
	testenv.RequireTools(t, "setpriv")
	wrapper := filepath.Join(t.TempDir(), "meshd-unit-caps")
	script := fmt.Sprintf("#!/bin/sh\nexec setpriv --bounding-set -all,%s --inh-caps -all --no-new-privs %s \"$@\"\n", unitCapabilities(t), meshdBin)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return wrapper
}

// unitCapabilities reads CapabilityBoundingSet from the unit as setpriv
// wants it: "+net_admin,+net_bind_service".
func unitCapabilities(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../../packaging/meshd.service")
	if err != nil {
		t.Fatal(err)
	}
	var caps []string
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "CapabilityBoundingSet="); ok {
			for _, c := range strings.Fields(v) {
				caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
		}
	}
	if len(caps) == 0 {
		t.Fatal("packaging/meshd.service sets no CapabilityBoundingSet")
	}
	return strings.Join(caps, ",")
}

// checkRestricted proves the wrapper took effect: the daemon holds
// exactly n capabilities and runs with no_new_privs.
func checkRestricted(t *testing.T, pid, n int) {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	eff, err := strconv.ParseUint(fields["CapEff"], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	if got := bits.OnesCount64(eff); got != n || fields["NoNewPrivs"] != "1" {
		t.Errorf("meshd (pid %d, %s) has %d capabilities (CapEff %s), NoNewPrivs %s; want %d and 1",
			pid, fields["Name"], got, fields["CapEff"], fields["NoNewPrivs"], n)
	}
}
