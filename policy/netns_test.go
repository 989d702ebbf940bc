package policy_test

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/policy"
	"golang.org/x/sys/unix"
)

// The topology: pod ──veth── router ──veth "mesh-t0"── remote.
//
// "mesh-t0" stands in for the WireGuard interface: the policy only looks
// at iifname/oifname, so a veth filters the same. The remote namespace
// plays every host and pod beyond the tunnel.
const tunIface = "mesh-t0"

var segs = []policy.Segment{
	{Name: "blue", CIDR: netip.MustParsePrefix("10.42.0.0/16")},
	{Name: "green", CIDR: netip.MustParsePrefix("10.43.0.0/16")},
	{Name: "blue6", CIDR: netip.MustParsePrefix("fd42::/48")},
	{Name: "green6", CIDR: netip.MustParsePrefix("fd43::/48")},
}

const (
	podBlue     = "10.42.1.2"
	podGreen    = "10.43.1.2"
	routerBlue  = "10.42.1.1"
	routerGreen = "10.43.1.1"
	farBlue     = "10.42.2.2"
	farGreen    = "10.43.2.2"
	podBlue6    = "fd42:0:0:1::2"
	farBlue6    = "fd42:0:0:2::2"
	farGreen6   = "fd43:0:0:2::2"
)

type topo struct {
	router, pod, remote string
	conn                *nftables.Conn // nftables in the router namespace
}

var nsSeq atomic.Int32

func newNetns(t *testing.T, role string) string {
	t.Helper()
	name := fmt.Sprintf("meshd-policy-%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	// DAD would leave addresses tentative for a second; ND is avoided on
	// the fake tunnel with permanent neighbours, as a WireGuard link is L3.
	for _, s := range []string{"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"} {
		ns(t, name, "sysctl", "-qw", s)
	}
	ns(t, name, "ip", "link", "set", "lo", "up")
	return name
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func ns(t *testing.T, name string, args ...string) {
	t.Helper()
	run(t, append([]string{"ip", "netns", "exec", name}, args...)...)
}

func setup(t *testing.T) *topo {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ip", "ping", "nft", "sysctl")
	tp := &topo{router: newNetns(t, "router"), pod: newNetns(t, "pod"), remote: newNetns(t, "remote")}
	r, p, x := tp.router, tp.pod, tp.remote

	run(t, "ip", "-n", r, "link", "add", tunIface, "address", "02:00:00:00:00:01", "type", "veth",
		"peer", "name", "tun0", "address", "02:00:00:00:00:02", "netns", x)
	run(t, "ip", "-n", r, "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", p)
	addrs := func(n, dev string, as ...string) {
		for _, a := range as {
			run(t, "ip", "-n", n, "addr", "add", a, "dev", dev, "nodad")
		}
		run(t, "ip", "-n", n, "link", "set", dev, "up")
	}
	routes := func(n, via string, dsts ...string) {
		for _, d := range dsts {
			run(t, "ip", "-n", n, "route", "add", d, "via", via)
		}
	}
	addrs(r, "pod0", routerBlue+"/24", routerGreen+"/24", "fd42:0:0:1::1/64", "fd43:0:0:1::1/64")
	addrs(r, tunIface, "192.0.2.1/30", "fd00:77::1/64")
	addrs(p, "eth0", podBlue+"/24", podGreen+"/24", podBlue6+"/64", "fd43:0:0:1::2/64")
	addrs(x, "tun0", "192.0.2.2/30", "fd00:77::2/64", farBlue+"/32", farGreen+"/32", farBlue6+"/128", farGreen6+"/128")
	routes(r, "192.0.2.2", "10.42.2.0/24", "10.43.2.0/24")
	routes(r, "fd00:77::2", "fd42:0:0:2::/64", "fd43:0:0:2::/64")
	routes(x, "192.0.2.1", "10.42.1.0/24", "10.43.1.0/24")
	routes(x, "fd00:77::1", "fd42:0:0:1::/64", "fd43:0:0:1::/64")
	routes(p, routerBlue, "default")
	routes(p, "fd42:0:0:1::1", "default")
	run(t, "ip", "-n", r, "neigh", "add", "fd00:77::2", "lladdr", "02:00:00:00:00:02", "dev", tunIface, "nud", "permanent")
	run(t, "ip", "-n", x, "neigh", "add", "fd00:77::1", "lladdr", "02:00:00:00:00:01", "dev", "tun0", "nud", "permanent")
	ns(t, r, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

	f, err := os.Open("/run/netns/" + r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if tp.conn, err = nftables.New(nftables.WithNetNSFd(int(f.Fd()))); err != nil {
		t.Fatal(err)
	}
	return tp
}

// inNetns runs fn on a thread switched into the namespace. The thread is
// never unlocked, so the runtime discards it afterwards instead of
// reusing a thread in the wrong namespace. Sockets keep the namespace
// they were created in, so they can be used from anywhere afterwards.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + name)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// probeTimeout bounds every expected failure; successes return at once.
const probeTimeout = time.Second

func echoTCP(t *testing.T, name, addr string) {
	t.Helper()
	var ln net.Listener
	err := inNetns(name, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				c.Close()
			}
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(c, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

func echoUDP(t *testing.T, name, addr string) {
	t.Helper()
	var pc net.PacketConn
	err := inNetns(name, func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
}

func dialTCP(name, src, dst string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(name, func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: probeTimeout}
		c, err = d.Dial("tcp", dst)
		return err
	})
	return c, err
}

// roundTrip proves data flows both ways on c, i.e. replies pass too.
func roundTrip(c net.Conn, msg string) error {
	if err := c.SetDeadline(time.Now().Add(probeTimeout)); err != nil {
		return err
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo returned %q, want %q", buf, msg)
	}
	return nil
}

func tcpOK(name, src, dst string) bool {
	c, err := dialTCP(name, src, dst)
	if err != nil {
		return false
	}
	defer c.Close()
	return roundTrip(c, "hello\n") == nil
}

func udpOK(name, src, dst string) bool {
	var c net.Conn
	err := inNetns(name, func() (err error) {
		c, err = net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
		return err
	})
	if err != nil {
		return false
	}
	defer c.Close()
	return roundTrip(c, "dns?") == nil
}

func pingOK(name, src, dst string) bool {
	return exec.Command("ip", "netns", "exec", name, "ping", "-q", "-c1", "-W1", "-I", src, dst).Run() == nil
}

// expect runs all probes (each costs up to a second when it fails) and
// reports every mismatch, so one run shows the whole picture.
func expect(t *testing.T, phase string, probes map[string]struct{ got, want bool }) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(probes)) {
		if p := probes[name]; p.got != p.want {
			t.Errorf("%s: %s: passed=%v, want %v", phase, name, p.got, p.want)
		}
	}
}

type probe = struct{ got, want bool }

func counter(t *testing.T, e *policy.Enforcer, label string) policy.Counter {
	t.Helper()
	cs, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Label == label {
			return c
		}
	}
	t.Fatalf("no counter %q in %+v", label, cs)
	return policy.Counter{}
}

// kernelRules reads every chain of meshd's table back and formats it
// like Plan.String's rule lines, to show the kernel holds exactly what
// Render produced.
func kernelRules(t *testing.T, c *nftables.Conn) []string {
	t.Helper()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	var out []string
	for _, chain := range chains {
		if chain.Table.Name != policy.TableName {
			continue
		}
		rules, err := c.GetRules(chain.Table, chain)
		if err != nil {
			t.Fatalf("read chain %s: %v", chain.Name, err)
		}
		for _, r := range rules {
			r.Chain = &nftables.Chain{Name: chain.Name}
			out = append(out, policy.FormatRule(r))
		}
	}
	slices.Sort(out)
	return out
}

func planRules(t *testing.T, rs *policy.Ruleset) []string {
	t.Helper()
	plan, err := policy.Render(rs, tunIface)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range plan.Rules {
		// google/nftables v0.3.0 skips rt and byteorder when reading rules
		// back; TestClampNetns compares those with nft's own decoding.
		read := *r
		read.Exprs = slices.DeleteFunc(slices.Clone(r.Exprs), func(x expr.Any) bool {
			switch x.(type) {
			case *expr.Rt, *expr.Byteorder:
				return true
			}
			return false
		})
		out = append(out, policy.FormatRule(&read))
	}
	slices.Sort(out)
	return out
}

func hasMeshdTable(t *testing.T, tp *topo) bool {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", tp.router, "nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables: %v: %s", err, out)
	}
	return strings.Contains(string(out), "inet "+policy.TableName)
}

// routerSlices are the router's own slices, where its pods live.
var routerSlices = []netip.Prefix{
	netip.MustParsePrefix("10.42.1.0/24"), netip.MustParsePrefix("10.43.1.0/24"),
	netip.MustParsePrefix("fd42:0:0:1::/64"), netip.MustParsePrefix("fd43:0:0:1::/64"),
}

func compile(t *testing.T, rules ...policy.Rule) *policy.Ruleset {
	t.Helper()
	rs, err := policy.Compile(segs, rules)
	if err != nil {
		t.Fatal(err)
	}
	rs.Local = routerSlices
	return rs
}

// TestEnforcerNetns sends real packets through a router namespace and
// checks the policy does what Explain says, across reloads, shutdown and
// a crash.
func TestEnforcerNetns(t *testing.T) {
	tp := setup(t)
	for _, a := range []string{farGreen + ":8080", farGreen + ":8081", farBlue + ":8080", "[" + farGreen6 + "]:8080"} {
		echoTCP(t, tp.remote, a)
	}
	echoTCP(t, tp.pod, podBlue+":8080")
	echoUDP(t, tp.remote, farGreen+":53")
	echoUDP(t, tp.remote, farGreen+":8080")
	p, x, r := tp.pod, tp.remote, tp.router
	crossTCP := func() bool { return tcpOK(p, podBlue, farGreen+":8080") }

	// Without a policy everything flows: this is what makes every "denied"
	// below mean the policy, not a broken topology.
	expect(t, "no policy", map[string]probe{
		"blue->green tcp/8080": {crossTCP(), true},
		"blue->green icmp":     {pingOK(p, podBlue, farGreen), true},
		"blue6->green6 icmp":   {pingOK(p, podBlue6, farGreen6), true},
	})

	e := policy.NewEnforcer(tp.conn, tunIface, nil)
	base := compile(t)
	if err := e.Apply(base); err != nil {
		t.Fatal(err)
	}
	expect(t, "defaults", map[string]probe{
		"forward same segment tcp":        {tcpOK(p, podBlue, farBlue+":8080"), true},
		"forward same segment icmp":       {pingOK(p, podBlue, farBlue), true},
		"forward cross segment tcp":       {crossTCP(), false},
		"forward cross segment icmp":      {pingOK(p, podBlue, farGreen), false},
		"forward cross segment udp":       {udpOK(p, podBlue, farGreen+":53"), false},
		"tunnel -> pod cross segment":     {tcpOK(x, farGreen, podBlue+":8080"), false},
		"tunnel -> pod same segment":      {tcpOK(x, farBlue, podBlue+":8080"), true},
		"output cross segment":            {pingOK(r, routerBlue, farGreen), false},
		"output same segment":             {pingOK(r, routerGreen, farGreen), true},
		"input cross segment":             {pingOK(x, farGreen, routerBlue), false},
		"non-tunnel traffic is untouched": {pingOK(r, routerGreen, podBlue), true},
	})
	if c := counter(t, e, policy.LabelDefaultDeny); c.Packets == 0 || c.Action != "drop" || c.Reason != "default-deny" {
		t.Errorf("default-deny counter after denied traffic: %+v", c)
	}
	if c := counter(t, e, "segment:blue"); c.Packets == 0 || c.Action != "accept" {
		t.Errorf("segment:blue counter after same-segment traffic: %+v", c)
	}

	withRule := compile(t,
		policy.Rule{From: "blue", To: "green", Ports: []string{"tcp/8080", "udp/53"}},
		policy.Rule{From: "blue6", To: "green6", Ports: []string{"icmp"}})
	if err := e.Apply(withRule); err != nil {
		t.Fatal(err)
	}
	if got, want := kernelRules(t, tp.conn), planRules(t, withRule); !slices.Equal(got, want) {
		t.Errorf("kernel rules differ from the plan:\n got  %q\n want %q", got, want)
	}
	long, err := dialTCP(p, podBlue, farGreen+":8080")
	if err != nil {
		t.Fatalf("allowed connection failed: %v", err)
	}
	defer long.Close()
	expect(t, "blue->green tcp/8080, udp/53; blue6->green6 icmp", map[string]probe{
		"tcp/8080 (replies included)": {roundTrip(long, "first\n") == nil, true},
		"tcp/8081":                    {tcpOK(p, podBlue, farGreen+":8081"), false},
		"udp/53":                      {udpOK(p, podBlue, farGreen+":53"), true},
		"udp/8080":                    {udpOK(p, podBlue, farGreen+":8080"), false},
		"icmp":                        {pingOK(p, podBlue, farGreen), false},
		"green->blue tcp/8080":        {tcpOK(x, farGreen, podBlue+":8080"), false},
		"icmpv6":                      {pingOK(p, podBlue6, farGreen6), true},
		"ipv6 tcp/8080":               {tcpOK(p, podBlue6, "["+farGreen6+"]:8080"), false},
	})
	for _, q := range []struct {
		proto string
		port  uint16
		want  bool
	}{{"tcp", 8080, true}, {"tcp", 8081, false}, {"udp", 53, true}, {"icmp", 0, false}} {
		if v := withRule.Explain(netip.MustParseAddr(podBlue), netip.MustParseAddr(farGreen), q.proto, q.port); v.Allowed != q.want {
			t.Errorf("Explain %s/%d = %s, disagreeing with the packets above", q.proto, q.port, v)
		}
	}
	if c := counter(t, e, "allow[0]"); c.Packets == 0 || c.Action != "accept" || c.Reason != "rule" {
		t.Errorf("allow[0] counter after allowed connections: %+v", c)
	}
	if c := counter(t, e, "allow[1]"); c.Packets == 0 {
		t.Errorf("allow[1] counter after an allowed ping: %+v", c)
	}
	if c := counter(t, e, policy.LabelDefaultDeny); c.Packets == 0 {
		t.Errorf("default-deny counter after denied tcp/8081: %+v", c)
	}

	// Reload without the rule: new connections fail, the established one
	// keeps working because conntrack state outlives the table.
	for range 2 { // twice: Apply is idempotent
		if err := e.Apply(base); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := kernelRules(t, tp.conn), planRules(t, base); !slices.Equal(got, want) {
		t.Errorf("kernel rules after a repeated Apply:\n got  %q\n want %q", got, want)
	}
	expect(t, "reloaded without the rule", map[string]probe{
		"new tcp/8080":         {crossTCP(), false},
		"established tcp/8080": {roundTrip(long, "second\n") == nil, true},
		"icmpv6":               {pingOK(p, podBlue6, farGreen6), false},
	})

	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	if hasMeshdTable(t, tp) {
		t.Error("nft list tables still shows meshd's table after Flush")
	}
	expect(t, "flushed", map[string]probe{"cross segment tcp": {crossTCP(), true}})
	if _, err := e.Counters(); !errors.Is(err, policy.ErrNotApplied) {
		t.Errorf("Counters without a table = %v, want ErrNotApplied", err)
	}

	// A crashed run leaves its table behind; the next run's Cleanup needs
	// nothing but the kernel state to remove it.
	if err := policy.NewEnforcer(tp.conn, tunIface, nil).Apply(base); err != nil {
		t.Fatal(err)
	}
	expect(t, "stale table", map[string]probe{"cross segment tcp": {crossTCP(), false}})
	restarted, err := nftables.New(nftables.WithNetNSFd(tp.conn.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second finds nothing to remove and must not fail
		if err := policy.Cleanup(restarted); err != nil {
			t.Fatal(err)
		}
	}
	if hasMeshdTable(t, tp) {
		t.Error("nft list tables still shows meshd's table after Cleanup")
	}
	expect(t, "cleaned up", map[string]probe{"cross segment tcp": {crossTCP(), true}})
}
