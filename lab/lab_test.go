package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/meshd/meshd/internal/testenv"
)

// fakeEnv turns the test binary into a stand-in for meshd, so Start/Stop
// and RunDemo can be exercised before (and independently of) the real
// daemon. Its value picks the behaviour: "ok" or "ignore-term".
const fakeEnv = "MESHD_LAB_FAKE_MESHD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeEnv); mode != "" {
		os.Exit(fakeMeshd(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

var (
	blue  = SegmentSpec{Name: "blue", CIDR: "10.42.0.0/16", SliceBits: 24}
	red6  = SegmentSpec{Name: "red", CIDR: "fd42::/48", SliceBits: 64}
	green = SegmentSpec{Name: "green", CIDR: "10.43.0.0/16", SliceBits: 24}
)

func TestSegmentSlice(t *testing.T) {
	cases := []struct {
		seg               SegmentSpec
		host              int
		subnet, gw, pod   string
		wantErrSubstrings string
	}{
		{seg: blue, host: 1, subnet: "10.42.1.0/24", gw: "10.42.1.1", pod: "10.42.1.10"},
		{seg: blue, host: 3, subnet: "10.42.3.0/24", gw: "10.42.3.1", pod: "10.42.3.10"},
		{seg: blue, host: 255, subnet: "10.42.255.0/24", gw: "10.42.255.1", pod: "10.42.255.10"},
		{seg: SegmentSpec{Name: "s", CIDR: "10.0.0.0/8", SliceBits: 26}, host: 5, subnet: "10.0.1.64/26", gw: "10.0.1.65", pod: "10.0.1.74"},
		{seg: red6, host: 1, subnet: "fd42:0:0:1::/64", gw: "fd42:0:0:1::1", pod: "fd42:0:0:1::a"},
		{seg: red6, host: 12, subnet: "fd42:0:0:c::/64", gw: "fd42:0:0:c::1", pod: "fd42:0:0:c::a"},
		{seg: SegmentSpec{Name: "w", CIDR: "fd00::/8", SliceBits: 120}, host: 2, subnet: "fd00::200/120", gw: "fd00::201", pod: "fd00::20a"},
		{seg: blue, host: 0, wantErrSubstrings: "no slice"},
		{seg: blue, host: 256, wantErrSubstrings: "no slice"},
		{seg: SegmentSpec{Name: "x", CIDR: "10.42.1.0/16", SliceBits: 24}, host: 1, wantErrSubstrings: "host bits"},
		{seg: SegmentSpec{Name: "x", CIDR: "10.42.0.0/16", SliceBits: 16}, host: 1, wantErrSubstrings: "slice bits"},
		{seg: SegmentSpec{Name: "x", CIDR: "10.42.0.0/16", SliceBits: 30}, host: 1, wantErrSubstrings: "slice bits"},
		{seg: SegmentSpec{Name: "x", CIDR: "bogus", SliceBits: 24}, host: 1, wantErrSubstrings: "bogus"},
	}
	for _, c := range cases {
		name := fmt.Sprintf("%s/%d", c.seg.CIDR, c.host)
		t.Run(name, func(t *testing.T) {
			s, err := SegmentSlice(c.seg, c.host)
			if !wantErr(t, err, c.wantErrSubstrings) {
				return
			}
			got := [3]string{s.Subnet.String(), s.Gateway.String(), s.Pod.String()}
			want := [3]string{c.subnet, c.gw, c.pod}
			if got != want {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
}

func TestUnderlayAddr(t *testing.T) {
	if got := UnderlayAddr(false, 7).String(); got != "192.0.2.7" {
		t.Errorf("v4: %s", got)
	}
	if got := UnderlayAddr(true, 10).String(); got != "2001:db8::a" {
		t.Errorf("v6: %s", got)
	}
}

func TestConfigRendering(t *testing.T) {
	l, err := plan(Spec{Prefix: "mdtest", Hosts: 3, Dir: "/srv/lab", Segments: []SegmentSpec{blue, red6}})
	if err != nil {
		t.Fatal(err)
	}
	want := `node_name = "h1"
data_dir = "/srv/lab/h1/data"
control_socket = "/srv/lab/h1/meshd.sock"
cni_conf_dir = "/srv/lab/h1/cni"
cni_ipam_dir = "/srv/lab/h1/ipam"
docker_plugin_socket = "/srv/lab/h1/plugins/meshd.sock"
log_level = "debug"

[cluster]
bind_addr = "192.0.2.1"
bind_port = 7946
join = ["192.0.2.2:7946", "192.0.2.3:7946"]
gossip_key_file = "/srv/lab/gossip.key"

[wireguard]
interface = "mdtesth1"
listen_port = 51820
mode = "auto"

[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
subnet = "10.42.1.0/24"

[[segments]]
name = "red"
cidr = "fd42::/48"
subnet = "fd42:0:0:1::/64"
`
	if got := l.Host(1).Config(""); got != want {
		t.Errorf("h1 config:\n%s\nwant:\n%s", got, want)
	}

	got := l.Host(2).Config("[[allow]]\nsegment = \"blue\"")
	for _, s := range []string{
		`node_name = "h2"`,
		`join = ["192.0.2.1:7946", "192.0.2.3:7946"]`,
		`interface = "mdtesth2"`,
		`subnet = "10.42.2.0/24"`,
		`subnet = "fd42:0:0:2::/64"`,
		"\n[[allow]]\nsegment = \"blue\"\n",
	} {
		if !strings.Contains(got, s) {
			t.Errorf("h2 config lacks %q:\n%s", s, got)
		}
	}
	if !strings.HasSuffix(got, "segment = \"blue\"\n") {
		t.Errorf("extra must come last:\n%s", got)
	}
}

func TestConfigIPv6UnderlayAndMode(t *testing.T) {
	l, err := plan(Spec{Prefix: "md6", Hosts: 2, Dir: "/d", IPv6Underlay: true, Mode: "userspace"})
	if err != nil {
		t.Fatal(err)
	}
	got := l.Host(2).Config("")
	for _, s := range []string{
		`bind_addr = "2001:db8::2"`,
		`join = ["[2001:db8::1]:7946"]`,
		`mode = "userspace"`,
	} {
		if !strings.Contains(got, s) {
			t.Errorf("config lacks %q:\n%s", s, got)
		}
	}
	if strings.Contains(got, "[[segments]]") {
		t.Errorf("no segments were asked for:\n%s", got)
	}
}

func TestTomlString(t *testing.T) {
	if got := tomlString("a\"b\\c\nd"); got != `"a\"b\\c\u000Ad"` {
		t.Errorf("got %s", got)
	}
}

func TestSpecValidation(t *testing.T) {
	cases := map[string]Spec{
		"prefix too long":  {Prefix: "abcdefghijklm", Hosts: 10},
		"prefix with dash": {Prefix: "md-x"},
		"prefix uppercase": {Prefix: "MD"},
		"too many hosts":   {Prefix: "md", Hosts: 100},
		"negative hosts":   {Prefix: "md", Hosts: -1},
		"duplicate":        {Prefix: "md", Segments: []SegmentSpec{blue, blue}},
		"truncation":       {Prefix: "md", Segments: []SegmentSpec{{Name: "abcdefghijklmnop", CIDR: "10.1.0.0/16", SliceBits: 24}, {Name: "abcdefghijklmnoq", CIDR: "10.2.0.0/16", SliceBits: 24}}},
		"bad segment name": {Prefix: "md", Segments: []SegmentSpec{{Name: "a b", CIDR: "10.1.0.0/16", SliceBits: 24}}},
		"slice too small":  {Prefix: "md", Hosts: 5, Segments: []SegmentSpec{{Name: "s", CIDR: "10.1.0.0/24", SliceBits: 26}}},
		"bad mtu":          {Prefix: "md", UnderlayMTU: 500},
	}
	for name, spec := range cases {
		if _, err := plan(spec); err == nil {
			t.Errorf("%s: plan(%+v) succeeded", name, spec)
		}
	}
	if _, err := plan(Spec{Prefix: "abcdefghijkl", Hosts: 10}); err != nil {
		t.Errorf("12-byte prefix with 10 hosts fits 15 bytes: %v", err)
	}
}

func TestDefaultPrefix(t *testing.T) {
	re := regexp.MustCompile(`^md[0-9a-z]{4}$`)
	seen := map[string]bool{}
	for range 50 {
		p := DefaultPrefix()
		if !re.MatchString(p) {
			t.Fatalf("DefaultPrefix() = %q", p)
		}
		if n := wgInterfaceName(p, 99); len(n) > ifnameMax {
			t.Fatalf("%q too long", n)
		}
		seen[p] = true
	}
	if len(seen) < 45 {
		t.Errorf("only %d distinct prefixes out of 50", len(seen))
	}
}

func TestCountPcap(t *testing.T) {
	var b bytes.Buffer
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr, 0xa1b2c3d4)
	b.Write(hdr)
	for _, n := range []int{60, 98, 1500} {
		rec := make([]byte, 16+n)
		binary.LittleEndian.PutUint32(rec[8:], uint32(n))
		b.Write(rec)
	}
	if n, err := countPcap(b.Bytes()); err != nil || n != 3 {
		t.Errorf("countPcap = %d, %v; want 3", n, err)
	}
	if n, err := countPcap(b.Bytes()[:b.Len()-1]); err != nil || n != 2 {
		t.Errorf("truncated: countPcap = %d, %v; want 2", n, err)
	}
	if _, err := countPcap([]byte("not a pcap file at all....")); err == nil {
		t.Error("garbage accepted")
	}
}

// newLab builds a lab for one test and guarantees its removal.
func newLab(t *testing.T, spec Spec) *Lab {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ip", "ping", "tcpdump")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := New(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestLabIPv4Underlay(t *testing.T) {
	testLab(t, false)
}

func TestLabIPv6Underlay(t *testing.T) {
	testLab(t, true)
}

func testLab(t *testing.T, v6 bool) {
	l := newLab(t, Spec{Hosts: 2, IPv6Underlay: v6, UnderlayMTU: 1400, Segments: []SegmentSpec{blue, red6}})
	ctx := testCtx(t)
	h1, h2 := l.Host(1), l.Host(2)

	capt, err := l.StartCapture(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := Ping(ctx, h1.NS(), h2.UnderlayAddr(), 3, 5*time.Second); err != nil {
		t.Fatalf("underlay: %v", err)
	}
	data, err := capt.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 24 {
		t.Fatalf("capture has %d bytes", len(data))
	}
	proto := "icmp"
	if v6 {
		proto = "icmp6 and ip6[40] == 128" // echo requests only, not neighbour discovery
	}
	if n, err := capt.Count(proto); err != nil || n < 3 {
		t.Errorf("capture saw %d %q packets (%v), want >= 3", n, proto, err)
	}
	if n, err := capt.Count("net 10.42.0.0/16 or net fd42::/48"); err != nil || n != 0 {
		t.Errorf("capture saw %d pod packets (%v), want 0", n, err)
	}

	out, err := Exec(ctx, h1.NS(), "ip", "link", "show", "dev", "u0")
	if err != nil || !strings.Contains(out, "mtu 1400") {
		t.Errorf("underlay MTU: %v %s", err, out)
	}

	for _, seg := range []string{"blue", "red"} {
		for _, h := range l.Hosts() {
			if err := Ping(ctx, h.PodNS(seg), h.Gateway(seg), 1, 3*time.Second); err != nil {
				t.Errorf("%s pod of %s cannot reach its gateway: %v", seg, h.Name(), err)
			}
		}
		// No overlay yet: a reply here would mean the test bed itself
		// leaks a path between hosts and e2e results would prove nothing.
		if err := Ping(ctx, h1.PodNS(seg), h2.PodAddr(seg), 1, time.Second); err == nil {
			t.Errorf("%s: pod h1 reaches pod h2 without any overlay", seg)
		}
		if err := Ping(ctx, h1.PodNS(seg), h2.Gateway(seg), 1, time.Second); err == nil {
			t.Errorf("%s: pod h1 reaches host h2 without any overlay", seg)
		}
		payload := bytes.Repeat([]byte("meshd-lab-"), 50000)
		srv := netip.AddrPortFrom(h1.Gateway(seg), 0)
		if err := TCPExchange(ctx, h1.NS(), srv, h1.PodNS(seg), payload); err != nil {
			t.Errorf("%s: TCP pod -> gateway: %v", seg, err)
		}
		srv = netip.AddrPortFrom(h2.PodAddr(seg), 8080)
		if err := TCPExchange(ctx, h2.PodNS(seg), srv, h2.NS(), []byte("x")); err != nil {
			t.Errorf("%s: TCP gateway -> pod: %v", seg, err)
		}
	}

	prefix := l.Prefix()
	if names, _ := ListNetns(prefix); len(names) != 1+2*3 {
		t.Errorf("namespaces: %v", names)
	}
	dir := l.Dir()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	assertNoNetns(t, prefix)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("working dir %s survived Close: %v", dir, err)
	}
}

func assertNoNetns(t *testing.T, prefix string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix+"-") {
			t.Errorf("namespace left behind: %s", line)
		}
	}
}

func TestTCPExchangeFailsWithoutPath(t *testing.T) {
	l := newLab(t, Spec{Hosts: 2, Segments: []SegmentSpec{blue}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv := netip.AddrPortFrom(l.Host(2).PodAddr("blue"), 9000)
	if err := TCPExchange(ctx, l.Host(2).PodNS("blue"), srv, l.Host(1).PodNS("blue"), []byte("x")); err == nil {
		t.Fatal("TCP across hosts worked without an overlay")
	}
}

func TestInNetns(t *testing.T) {
	l := newLab(t, Spec{Hosts: 1, Segments: []SegmentSpec{blue}})
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	var addrs []net.Addr
	err = InNetns(l.Host(1).PodNS("blue"), func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		addrs, err = ifc.Addrs()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) == 0 || !strings.HasPrefix(addrs[0].String(), "10.42.1.10/") {
		t.Errorf("eth0 addresses in pod: %v", addrs)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !before.Equal(after) {
		t.Error("caller's namespace changed")
	}

	err = InNetns(l.Host(1).PodNS("blue"), func() error { runtime.Goexit(); return nil })
	if err == nil || !strings.Contains(err.Error(), "Goexit") {
		t.Errorf("Goexit inside fn: %v", err)
	}
	if err := InNetns(l.Prefix()+"-nonexistent", func() error { return nil }); err == nil {
		t.Error("unknown namespace accepted")
	}
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want boom", r)
			}
		}()
		_ = InNetns(l.Host(1).NS(), func() error { panic("boom") })
	}()
}

func TestNewFailureCleansUp(t *testing.T) {
	testenv.RequireRoot(t)
	prefix := DefaultPrefix()
	// A segment name that ip rejects only at link creation would be ideal;
	// a context cancelled mid-way is the portable way to fail halfway.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for ctx.Err() == nil {
			if names, _ := ListNetns(prefix); len(names) >= 3 {
				cancel()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	l, err := New(ctx, Spec{Prefix: prefix, Hosts: 5, Segments: []SegmentSpec{blue, green}})
	cancel()
	if err == nil {
		l.Close()
		t.Fatal("New succeeded despite cancellation")
	}
	assertNoNetns(t, prefix)
	if dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempDirPattern(prefix)+"*")); len(dirs) > 0 {
		t.Errorf("dirs left: %v", dirs)
	}
}

func TestCleanupStale(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ip", "sleep")
	prefix := DefaultPrefix()
	ns := prefix + "-h1"
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	// A process left inside would keep the namespace alive unseen.
	sleeper := exec.Command("ip", "netns", "exec", ns, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	t.Cleanup(func() { _ = sleeper.Process.Kill() })
	err := WaitFor(testCtx(t), 10*time.Millisecond, func() error {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		if err != nil || !strings.Contains(string(out), fmt.Sprint(sleeper.Process.Pid)) {
			return fmt.Errorf("sleep not inside %s yet: %v %s", ns, err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	if err = os.MkdirAll(wgSocketDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(wgSocketDir, prefix+"h1.sock")
	other := filepath.Join(wgSocketDir, prefix+"hx.sock") // not "<prefix>h<digits>"
	for _, f := range []string{sock, other} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.Remove(sock); os.Remove(other) })
	// An "ip netns add" killed halfway leaves an unmounted placeholder.
	half := filepath.Join(netnsDir, prefix+"-h2")
	if err := os.WriteFile(half, nil, 0o000); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(half) })
	dir, err := os.MkdirTemp("", tempDirPattern(prefix))
	if err != nil {
		t.Fatal(err)
	}

	if err := CleanupStale(prefix); err != nil {
		t.Fatal(err)
	}
	assertNoNetns(t, prefix)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("process inside the stale namespace survived")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("%s survived: %v", sock, err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("%s is not ours but was removed: %v", other, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s survived: %v", dir, err)
	}
	if err := CleanupStale(""); err == nil {
		t.Error("empty prefix accepted: it would match every lab")
	}
}

func TestGossipKey(t *testing.T) {
	l := newLab(t, Spec{Hosts: 1, Dir: t.TempDir()})
	fi, err := os.Stat(l.GossipKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	b, _ := os.ReadFile(l.GossipKeyFile())
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != 32 {
		t.Errorf("key %q: %v", b, err)
	}
	dir := l.Dir()
	l.Close()
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("caller's Dir must survive Close: %v", err)
	}
}

func TestHostProcess(t *testing.T) {
	l := newLab(t, Spec{Hosts: 2, Segments: []SegmentSpec{blue}})
	ctx := testCtx(t)
	h := l.Host(1)
	t.Setenv(fakeEnv, "ok")
	if err := h.Stop(); err == nil {
		t.Error("Stop before Start succeeded")
	}
	if err := h.Start(os.Args[0], "--extra-flag"); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(os.Args[0]); err == nil {
		t.Error("second Start while running succeeded")
	}
	waitLog(t, h, "fake meshd up")
	if !h.Running() {
		t.Fatal("not running")
	}
	if !strings.Contains(h.Log(), "run --config "+h.ConfigPath()+" --extra-flag") {
		t.Errorf("log lacks the command line:\n%s", h.Log())
	}
	if _, err := Exec(ctx, h.NS(), "ip", "link", "show", "dev", h.Interface()); err != nil {
		t.Errorf("fake interface: %v", err)
	}
	if err := h.Stop(); err != nil {
		t.Fatalf("Stop: %v\n%s", err, h.Log())
	}
	if h.Running() {
		t.Error("running after Stop")
	}
	if _, err := Exec(ctx, h.NS(), "ip", "link", "show", "dev", h.Interface()); err == nil {
		t.Error("fake interface survived SIGTERM")
	}

	// Restart, then simulate a crash.
	if err := h.Start(os.Args[0]); err != nil {
		t.Fatal(err)
	}
	waitLog(t, h, "fake meshd up")
	if err := h.Kill(); err != nil || h.Running() {
		t.Errorf("Kill: %v, running %v", err, h.Running())
	}

	// A daemon ignoring SIGTERM gets killed, and Stop says so.
	t.Setenv(fakeEnv, "ignore-term")
	h2 := l.Host(2)
	h2.stopGrace = 500 * time.Millisecond
	if err := h2.Start(os.Args[0]); err != nil {
		t.Fatal(err)
	}
	waitLog(t, h2, "fake meshd up")
	if err := h2.Stop(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Stop of a SIGTERM-ignoring process: %v", err)
	}

	// Close must kill whatever still runs.
	if err := h2.Start(os.Args[0]); err != nil {
		t.Fatal(err)
	}
	waitLog(t, h2, "fake meshd up")
	pid := h2.Pid()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("pid %d survived Close", pid)
	}
}

// TestStartProcess: a helper process runs in the namespace it was given,
// logs there, and Stop ends it, killing it when it ignores SIGTERM.
func TestStartProcess(t *testing.T) {
	l := newLab(t, Spec{Hosts: 1})
	ns := l.Host(1).NS()
	logPath := filepath.Join(l.Dir(), "helper.log")
	var nsIno syscall.Stat_t
	if err := syscall.Stat(filepath.Join(netnsDir, ns), &nsIno); err != nil {
		t.Fatal(err)
	}
	p, err := StartProcess(ns, logPath, "sh", "-c", "echo helper up; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	waitFileContains(t, logPath, "helper up")
	// The pid is the command's own (ip netns exec execs it), in ns.
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", p.Pid()), &st); err != nil || st.Ino != nsIno.Ino {
		t.Errorf("pid %d is not in netns %s (%v)", p.Pid(), ns, err)
	}
	if p.Exited() || p.Err() != nil {
		t.Fatalf("exited early: %v", p.Err())
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Errorf("Stop of a process that exits on SIGTERM: %v", err)
	}
	if !p.Exited() || p.Err() == nil {
		t.Errorf("after Stop: exited %v, err %v; want the SIGTERM exit", p.Exited(), p.Err())
	}
	if err := p.Stop(time.Second); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	stubborn, err := StartProcess(ns, logPath, "sh", "-c", "trap '' TERM; echo stubborn up; while :; do sleep 0.1; done")
	if err != nil {
		t.Fatal(err)
	}
	waitFileContains(t, logPath, "stubborn up")
	if err := stubborn.Stop(300 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Stop of a SIGTERM-ignoring process: %v, want it killed", err)
	}
	if !stubborn.Exited() {
		t.Error("still running after Stop")
	}
}

func waitFileContains(t *testing.T, path, s string) {
	t.Helper()
	err := WaitFor(testCtx(t), 20*time.Millisecond, func() error {
		if b, _ := os.ReadFile(path); !strings.Contains(string(b), s) {
			return fmt.Errorf("no %q in %s yet", s, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestStartCaptureFiltered keeps only what the filter selects, cut to the
// snap length.
func TestStartCaptureFiltered(t *testing.T) {
	l := newLab(t, Spec{Hosts: 2})
	ctx := testCtx(t)
	h1, h2 := l.Host(1), l.Host(2)
	capt, err := l.StartCaptureFiltered(ctx, 96, "icmp and ip[6:2] & 0x3fff != 0")
	if err != nil {
		t.Fatal(err)
	}
	if err := Ping(ctx, h1.NS(), h2.UnderlayAddr(), 2, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// Too big for the underlay and without DF: crosses as 2 fragments.
	if _, err := h1.Exec(ctx, "ping", "-n", "-c", "1", "-W", "2", "-M", "dont", "-s", "2000", h2.UnderlayAddr().String()); err != nil {
		t.Fatal(err)
	}
	data, err := capt.Stop()
	if err != nil {
		t.Fatal(err)
	}
	// Request and reply, 2 fragments each; the small pings are not kept.
	if n, err := capt.Count(""); err != nil || n != 4 {
		t.Errorf("capture holds %d packets (%v), want the 4 fragments only", n, err)
	}
	if len(data) > 24+4*(16+96) {
		t.Errorf("capture is %d bytes: packets not cut to 96 bytes", len(data))
	}
}

func waitLog(t *testing.T, h *Host, marker string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := WaitFor(ctx, 20*time.Millisecond, func() error {
		if strings.Count(h.Log(), marker) < strings.Count(h.Log(), "=== lab ") {
			return fmt.Errorf("no %q yet", marker)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v\n%s", h.Name(), err, h.Log())
	}
}

func TestWaitFor(t *testing.T) {
	n := 0
	err := WaitFor(context.Background(), time.Millisecond, func() error {
		if n++; n < 3 {
			return fmt.Errorf("try %d", n)
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Errorf("err %v after %d calls", err, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err = WaitFor(ctx, 5*time.Millisecond, func() error { return fmt.Errorf("never") })
	if err == nil || !strings.Contains(err.Error(), "never") {
		t.Errorf("timeout error %v lacks the last error", err)
	}
}

func TestRunDemoWithFakeMeshd(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ip", "ping")
	t.Setenv(fakeEnv, "ok")
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := RunDemo(ctx, &out, os.Args[0], 3); err != nil {
		t.Fatalf("RunDemo: %v\n%s", err, out.String())
	}
	for _, s := range []string{"full connectivity after", "segment green", "fake status", "done: no namespaces"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out.String())
		}
	}
	t.Log(out.String())
}

// fakeMeshd imitates the parts of meshd the lab relies on: it reads the
// config, "meshes" by routing peer slices over the plaintext underlay,
// creates the WireGuard interface as a persistent TUN device, and removes it on
// SIGTERM.
func fakeMeshd(mode string, args []string) int {
	if len(args) < 3 || args[1] != "--config" {
		fmt.Fprintln(os.Stderr, "usage: fake run|status --config FILE")
		return 2
	}
	if args[0] == "status" {
		fmt.Println("fake status: ok")
		return 0
	}
	cfg, err := parseFakeConfig(args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	if mode == "ignore-term" {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(sigs, syscall.SIGTERM)
	}
	ipCmd := func(a ...string) error {
		out, err := exec.Command("ip", a...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %v: %v %s", a, err, out)
		}
		return nil
	}
	_ = ipCmd("link", "del", "dev", cfg.iface) // left over if a previous run was killed
	if err := ipCmd("tuntap", "add", "dev", cfg.iface, "mode", "tun"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, peer := range cfg.join {
		idx := int(peer.Addr().AsSlice()[len(peer.Addr().AsSlice())-1])
		for _, seg := range cfg.segments {
			s, err := SegmentSlice(seg, idx)
			if err == nil {
				err = ipCmd("route", "replace", s.Subnet.String(), "via", peer.Addr().String())
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
	}
	fmt.Println("fake meshd up")
	if mode == "ignore-term" {
		select {}
	}
	<-sigs
	if err := ipCmd("link", "del", "dev", cfg.iface); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("fake meshd down")
	return 0
}

type fakeConfig struct {
	iface    string
	join     []netip.AddrPort
	segments []SegmentSpec
}

func parseFakeConfig(path string) (fakeConfig, error) {
	var c fakeConfig
	f, err := os.Open(path)
	if err != nil {
		return c, err
	}
	defer f.Close()
	quoted := regexp.MustCompile(`"([^"]*)"`)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), " = ")
		if !ok {
			continue
		}
		vals := quoted.FindAllStringSubmatch(val, -1)
		switch key {
		case "interface":
			c.iface = vals[0][1]
		case "join":
			for _, v := range vals {
				ap, err := netip.ParseAddrPort(v[1])
				if err != nil {
					return c, err
				}
				c.join = append(c.join, ap)
			}
		case "cidr":
			c.segments = append(c.segments, SegmentSpec{CIDR: vals[0][1]})
		case "subnet":
			p, err := netip.ParsePrefix(vals[0][1])
			if err != nil {
				return c, err
			}
			c.segments[len(c.segments)-1].SliceBits = p.Bits()
		}
	}
	return c, sc.Err()
}
