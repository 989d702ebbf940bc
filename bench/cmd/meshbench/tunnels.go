package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/lab"
)

// Benchmark traffic runs on segment "blue"; "green" exists so that the
// [[allow]] rules, which target 10.43.x.0/24, name a real segment.
var benchSegments = []lab.SegmentSpec{
	{Name: "blue", CIDR: "10.42.0.0/16", SliceBits: 24},
	{Name: "green", CIDR: "10.43.0.0/16", SliceBits: 24},
}

const benchSegment = "blue"

// unavailableError marks a mode that cannot run on this machine or code
// base; it is reported, not counted as a failure.
type unavailableError struct{ reason string }

func (e *unavailableError) Error() string { return "unavailable (" + e.reason + ")" }

func unavailable(format string, args ...any) error {
	return &unavailableError{reason: fmt.Sprintf(format, args...)}
}

// endpoints says where iperf3 runs for a mode.
type endpoints struct {
	clientNS, serverNS string
	target             netip.Addr
	bind               netip.Addr // client source address, if it must be pinned
}

// tunnel is one column of the comparison: how traffic gets from host 1 to
// host 2.
type tunnel interface {
	setup(ctx context.Context) error
	endpoints() endpoints
	// pids are the tunnel's processes on host 1 and host 2 (none for raw).
	pids() []int
	// txBytes is what host 1's tunnel has sent so far, to prove the
	// traffic really went through it; ok is false for raw.
	txBytes() (n int64, ok bool)
	mtu() int
	teardown() error
}

// podEndpoints measures pod to pod: pod namespace of h1 -> h1 -> tunnel
// or underlay -> h2 -> pod of h2, the path container traffic takes.
func podEndpoints(l *lab.Lab) endpoints {
	h1, h2 := l.Host(1), l.Host(2)
	return endpoints{clientNS: h1.PodNS(benchSegment), serverNS: h2.PodNS(benchSegment), target: h2.PodAddr(benchSegment)}
}

func underlayMTU(l *lab.Lab) int {
	if m := l.Spec().UnderlayMTU; m != 0 {
		return m
	}
	return 1500
}

// ---- raw: plain routes over the underlay ----

type rawTunnel struct {
	l    *lab.Lab
	path string
}

func (t *rawTunnel) setup(ctx context.Context) error {
	if t.path == "host" {
		return nil
	}
	h1, h2 := t.l.Host(1), t.l.Host(2)
	if err := lab.IP(ctx, h1.NS(), []string{"route", "replace", h2.Subnet(benchSegment).String(), "via", h2.UnderlayAddr().String(), "dev", "u0"}); err != nil {
		return err
	}
	if err := lab.IP(ctx, h2.NS(), []string{"route", "replace", h1.Subnet(benchSegment).String(), "via", h1.UnderlayAddr().String(), "dev", "u0"}); err != nil {
		return err
	}
	return waitReachable(ctx, t.endpoints(), 10*time.Second)
}

func (t *rawTunnel) endpoints() endpoints {
	if t.path == "host" {
		return endpoints{clientNS: t.l.Host(1).NS(), serverNS: t.l.Host(2).NS(), target: t.l.Host(2).UnderlayAddr()}
	}
	return podEndpoints(t.l)
}

func (t *rawTunnel) pids() []int            { return nil }
func (t *rawTunnel) txBytes() (int64, bool) { return 0, false }
func (t *rawTunnel) mtu() int               { return underlayMTU(t.l) }
func (t *rawTunnel) teardown() error {
	if t.path == "host" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h1, h2 := t.l.Host(1), t.l.Host(2)
	return errors.Join(
		lab.IP(ctx, h1.NS(), []string{"route", "del", h2.Subnet(benchSegment).String()}),
		lab.IP(ctx, h2.NS(), []string{"route", "del", h1.Subnet(benchSegment).String()}))
}

// ---- standalone wireguard-go, configured like meshd would ----

const wggoPort = 51821

type wggoTunnel struct {
	l       *lab.Lab
	bin     string
	path    string
	mtuVal  int
	wg      *wgctrl.Client
	procs   [2]*lab.Process
	ifnames [2]string
	// table is installed on both hosts, as meshd would for its interface.
	table tableKind
	// ipRules routes the overlay as meshd does, through a table per
	// segment chosen by ip rules, instead of the main table.
	ipRules bool
}

func (t *wggoTunnel) setup(ctx context.Context) error {
	var keys [2]wgtypes.Key
	for i := range 2 {
		h := t.l.Host(i + 1)
		t.ifnames[i] = t.l.Prefix() + "w" + strconv.Itoa(i+1)
		sock := filepath.Join("/var/run/wireguard", t.ifnames[i]+".sock")
		os.Remove(sock)
		logPath := filepath.Join(t.l.Dir(), "wireguard-go-"+h.Name()+".log")
		p, err := lab.StartProcess(h.NS(), logPath, t.bin, "-f", t.ifnames[i])
		if err != nil {
			return err
		}
		t.procs[i] = p
		if err := waitFile(ctx, sock, 5*time.Second, p); err != nil {
			return fmt.Errorf("wireguard-go on %s: %w (log: %s)", h.Name(), err, logTail(logPath, 5))
		}
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return err
		}
		keys[i] = k
	}
	for i := range 2 {
		me, other := t.l.Host(i+1), t.l.Host(2-i)
		port := wggoPort
		allowed := []net.IPNet{prefixNet(other.Subnet(benchSegment))}
		cfg := wgtypes.Config{
			PrivateKey: &keys[i], ListenPort: &port, ReplacePeers: true,
			Peers: []wgtypes.PeerConfig{{
				PublicKey:         keys[1-i].PublicKey(),
				Endpoint:          net.UDPAddrFromAddrPort(netip.AddrPortFrom(other.UnderlayAddr(), wggoPort)),
				ReplaceAllowedIPs: true, AllowedIPs: allowed,
			}},
		}
		if err := t.wg.ConfigureDevice(t.ifnames[i], cfg); err != nil {
			return fmt.Errorf("configure %s: %w", t.ifnames[i], err)
		}
		ifn := t.ifnames[i]
		cmds := [][]string{{"link", "set", "dev", ifn, "mtu", strconv.Itoa(t.mtuVal), "up"}}
		if t.ipRules {
			cmds = append(cmds, meshdRouting(t.l, me, other, ifn)...)
		} else {
			cmds = append(cmds, []string{"route", "replace", other.Subnet(benchSegment).String(), "dev", ifn})
		}
		if err := lab.IP(ctx, me.NS(), cmds...); err != nil {
			return err
		}
	}
	if t.table != noTable {
		for i := range 2 {
			if err := installTable(t.l, t.l.Host(i+1), t.ifnames[i], t.table); err != nil {
				return err
			}
		}
	}
	return waitReachable(ctx, t.endpoints(), 10*time.Second)
}

// meshd's default routing.table_base and routing.rule_priority.
const (
	meshdTableBase    = 51800
	meshdRulePriority = 31000
)

// meshdRules are meshd's two ip rules for the segment with cidr, the
// i-th of the lab's, as ip's selector arguments, and the table they
// choose: one list for adding and deleting, so a delete always names
// exactly what was added.
func meshdRules(cidr string, i int) (table string, rules [][]string) {
	table = strconv.Itoa(meshdTableBase + i)
	return table, [][]string{
		{"pref", strconv.Itoa(meshdRulePriority), "from", cidr, "lookup", table},
		{"pref", strconv.Itoa(meshdRulePriority + 1), "to", cidr, "lookup", table},
	}
}

// meshdRouting is the routing meshd (mesh.routesFor) sets up on me for a
// mesh of me and other: per segment, a table holding unreachable for the
// segment, a throw for me's own slice and the tunnel route to other's,
// chosen by a rule on the source and one on the destination.
func meshdRouting(l *lab.Lab, me, other *lab.Host, ifn string) [][]string {
	var cmds [][]string
	for i, s := range l.Spec().Segments {
		table, rules := meshdRules(s.CIDR, i)
		for _, r := range rules {
			cmds = append(cmds, append([]string{"rule", "add"}, r...))
		}
		cmds = append(cmds,
			[]string{"route", "replace", "unreachable", s.CIDR, "table", table},
			[]string{"route", "replace", "throw", me.Subnet(s.Name).String(), "table", table},
			// As meshd's, though the peer's AllowedIPs hold only the bench
			// segment's slice: no traffic takes the others.
			[]string{"route", "replace", other.Subnet(s.Name).String(), "dev", ifn, "table", table})
	}
	return cmds
}

// removeMeshdRouting undoes whatever part of meshdRouting a setup got to
// on h, so that the meshd modes measured in the same lab find no rules of
// another program: every delete is tried, and one that finds nothing to
// delete is no error.
func removeMeshdRouting(l *lab.Lab, h *lab.Host) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	for i, s := range l.Spec().Segments {
		table, rules := meshdRules(s.CIDR, i)
		var cmds [][]string
		for _, r := range rules {
			cmds = append(cmds, append([]string{"rule", "del"}, r...))
		}
		for _, cmd := range append(cmds, []string{"route", "flush", "table", table}) {
			if err := lab.IP(ctx, h.NS(), cmd); err != nil && !nothingThere(err) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// nothingThere tells ip's "no such rule" and "no such table".
func nothingThere(err error) bool {
	return strings.Contains(err.Error(), "No such file or directory") || strings.Contains(err.Error(), "does not exist")
}

func prefixNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// waitFile waits until path exists, giving up early if p, which is to
// create it, exits.
func waitFile(ctx context.Context, path string, timeout time.Duration, p *lab.Process) error {
	return waitWhile(ctx, timeout, 50*time.Millisecond,
		func() error {
			if p.Exited() {
				return fmt.Errorf("exited: %v", p.Err())
			}
			return nil
		},
		func() error { _, err := os.Stat(path); return err })
}

// stopAll stops helper processes in parallel: each may take its grace
// period.
func stopAll(ps []*lab.Process) {
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() { _ = p.Stop(3 * time.Second) })
	}
	wg.Wait()
}

func (t *wggoTunnel) endpoints() endpoints {
	if t.path == "host" {
		// The same addresses as meshd's: with meshd's table installed,
		// any others would be cross-segment and denied.
		return hostEndpoints(t.l)
	}
	return podEndpoints(t.l)
}

func (t *wggoTunnel) pids() []int { return processPids(t.procs[:]) }

func processPids(ps []*lab.Process) []int {
	var out []int
	for _, p := range ps {
		if p != nil {
			out = append(out, p.Pid())
		}
	}
	return out
}

func (t *wggoTunnel) txBytes() (int64, bool) { return deviceTx(t.wg, t.ifnames[0]), true }

func deviceTx(c *wgctrl.Client, name string) int64 {
	d, err := c.Device(name)
	if err != nil {
		return -1
	}
	var n int64
	for _, p := range d.Peers {
		n += p.TransmitBytes
	}
	return n
}

func (t *wggoTunnel) mtu() int { return t.mtuVal }

func (t *wggoTunnel) teardown() error {
	var errs []error
	if t.table != noTable {
		errs = append(errs, removeTable(t.l.Host(1)), removeTable(t.l.Host(2)))
	}
	if t.ipRules {
		errs = append(errs, removeMeshdRouting(t.l, t.l.Host(1)), removeMeshdRouting(t.l, t.l.Host(2)))
	}
	stopAll(t.procs[:])
	for i, n := range t.ifnames {
		if n != "" {
			os.Remove(filepath.Join("/var/run/wireguard", n+".sock"))
		}
		t.procs[i] = nil
	}
	return errors.Join(errs...)
}

// ---- meshd, two daemons from the lab ----

type meshdTunnel struct {
	l     *lab.Lab
	bin   string
	path  string
	extra string // appended to every host's config, e.g. [[allow]] rules
	// wantRules is how many [[allow]] rules extra holds; setup checks
	// meshd reports them all loaded.
	wantRules int
	wg        *wgctrl.Client
	mtuVal    int
}

func (t *meshdTunnel) setup(ctx context.Context) error {
	hosts := []*lab.Host{t.l.Host(1), t.l.Host(2)}
	for _, h := range hosts {
		if _, err := h.WriteConfig(t.extra); err != nil {
			return err
		}
		if err := h.Start(t.bin); err != nil {
			return err
		}
	}
	e := t.endpoints()
	p, err := newPinger(e.clientNS, e.bind, e.target)
	if err != nil {
		return err
	}
	defer p.Close()
	err = waitWhile(ctx, 30*time.Second, 100*time.Millisecond, func() error { return t.exited(hosts) },
		func() error { return p.ping(ctx, 500*time.Millisecond) })
	var ue *unavailableError
	if errors.As(err, &ue) {
		return err
	}
	if err != nil {
		return fmt.Errorf("meshd hosts not connected: %w\n%s", err, logTail(hosts[0].LogPath(), 10))
	}
	st, err := control.NewClient(hosts[0].ControlSocket()).Status()
	if err != nil {
		return err
	}
	t.mtuVal = st.Node.MTU
	if st.Node.Mode != "userspace" {
		return fmt.Errorf("meshd runs in %s mode, want userspace", st.Node.Mode)
	}
	if t.wantRules > 0 {
		if n := countAllowRules(st); n != t.wantRules {
			return fmt.Errorf("meshd reports %d [[allow]] rules loaded (status policy counters), want %d", n, t.wantRules)
		}
	}
	return nil
}

// exited explains why a meshd of hosts is no longer running, nil if all
// are: a config with [[allow]] rules that meshd refuses (exit status 2,
// a config error) makes the mode unavailable rather than failed.
func (t *meshdTunnel) exited(hosts []*lab.Host) error {
	for _, h := range hosts {
		if h.Running() {
			continue
		}
		err, line := h.Wait(0), firstErrorLine(h.LogPath())
		var ee *exec.ExitError
		if t.extra != "" && errors.As(err, &ee) && ee.ExitCode() == 2 {
			return unavailable("meshd on %s refused the config with [[allow]] rules: %v: %s", h.Name(), err, line)
		}
		return fmt.Errorf("meshd on %s exited: %v: %s", h.Name(), err, line)
	}
	return nil
}

func countAllowRules(st *control.Status) int {
	n := 0
	for _, c := range st.Policy {
		if strings.HasPrefix(c.Label, "allow[") {
			n++
		}
	}
	return n
}

// policyHits lists the policy rules that matched packets on host 2 (the
// receiver), to show which rule the benchmark traffic took.
func (t *meshdTunnel) policyHits() string {
	st, err := control.NewClient(t.l.Host(2).ControlSocket()).Status()
	if err != nil {
		return err.Error()
	}
	var hits []string
	for _, c := range st.Policy {
		if c.Packets > 0 {
			hits = append(hits, fmt.Sprintf("%s %s: %d packets", c.Label, c.Action, c.Packets))
		}
	}
	return fmt.Sprintf("%d allow rules loaded; h2 policy hits: %s", countAllowRules(st), strings.Join(hits, ", "))
}

func (t *meshdTunnel) endpoints() endpoints {
	if t.path == "host" {
		return hostEndpoints(t.l)
	}
	return podEndpoints(t.l)
}

// hostEndpoints measures host to host between the hosts' own addresses
// in the benchmark segment (their pod gateways). meshd routes a segment
// for anything on the host too, but the source must be the host's own
// slice address, or the peer's WireGuard drops the packet (not in
// AllowedIPs); it is overlay traffic, so meshd's table allows it as
// same-segment.
func hostEndpoints(l *lab.Lab) endpoints {
	h1, h2 := l.Host(1), l.Host(2)
	return endpoints{clientNS: h1.NS(), serverNS: h2.NS(), target: h2.Gateway(benchSegment), bind: h1.Gateway(benchSegment)}
}

func (t *meshdTunnel) pids() []int { return []int{t.l.Host(1).Pid(), t.l.Host(2).Pid()} }

func (t *meshdTunnel) txBytes() (int64, bool) { return deviceTx(t.wg, t.l.Host(1).Interface()), true }

func (t *meshdTunnel) mtu() int { return t.mtuVal }

func (t *meshdTunnel) teardown() error {
	if t.wantRules > 0 && t.l.Host(2).Running() {
		fmt.Fprintf(os.Stderr, "  policy: %s\n", t.policyHits())
	}
	return lab.StopHosts([]*lab.Host{t.l.Host(1), t.l.Host(2)})
}

// allowRules renders n [[allow]] tables from blue to distinct /24s of
// green on a port the benchmark never uses, so none matches its traffic.
func allowRules(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "[[allow]]\nfrom = %q\nto = %q\nports = [%q]\n\n",
			benchSegment, fmt.Sprintf("10.43.%d.0/24", i%250), fmt.Sprintf("tcp/%d", 9000+i))
	}
	return b.String()
}

// ---- Nebula, host to host only ----

const nebulaPort = 4242

type nebulaTunnel struct {
	l       *lab.Lab
	bin     string
	certBin string
	mtuVal  int
	procs   [2]*lab.Process
}

func nebulaOverlay(i int) netip.Addr { return netip.AddrFrom4([4]byte{100, 65, 0, byte(i)}) }

func (t *nebulaTunnel) setup(ctx context.Context) error {
	dir := filepath.Join(t.l.Dir(), "nebula")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// nebula-cert writes its files into the working directory.
	cert := func(args ...string) error {
		cmd := append([]string{t.certBin}, args...)
		_, err := lab.Exec(ctx, "", "sh", "-c", "cd "+dir+" && "+strings.Join(cmd, " "))
		return err
	}
	if err := cert("ca", "-name", "bench"); err != nil {
		return err
	}
	for i := 1; i <= 2; i++ {
		name := "h" + strconv.Itoa(i)
		net := netip.PrefixFrom(nebulaOverlay(i), 24).String()
		// nebula-cert >= 1.10 says -networks, older ones -ip.
		if err := cert("sign", "-name", name, "-networks", net, "-out-crt", name+".crt", "-out-key", name+".key"); err != nil {
			if err2 := cert("sign", "-name", name, "-ip", net, "-out-crt", name+".crt", "-out-key", name+".key"); err2 != nil {
				return errors.Join(err, err2)
			}
		}
	}
	for i := 1; i <= 2; i++ {
		name, o := "h"+strconv.Itoa(i), 3-i
		y := fmt.Sprintf(`pki: {ca: %[1]s/ca.crt, cert: %[1]s/%[2]s.crt, key: %[1]s/%[2]s.key}
static_host_map: {"%[3]s": ["%[4]s:%[5]d"]}
lighthouse: {am_lighthouse: false}
listen: {host: 0.0.0.0, port: %[5]d}
tun: {dev: %[6]s, mtu: %[7]d}
logging: {level: error}
firewall: {outbound: [{port: any, proto: any, host: any}], inbound: [{port: any, proto: any, host: any}]}
`, dir, name, nebulaOverlay(o), t.l.Host(o).UnderlayAddr(), nebulaPort, t.l.Prefix()+"n"+strconv.Itoa(i), t.mtuVal)
		if err := os.WriteFile(filepath.Join(dir, name+".yml"), []byte(y), 0o600); err != nil {
			return err
		}
		p, err := lab.StartProcess(t.l.Host(i).NS(), filepath.Join(dir, name+".log"), t.bin, "-config", filepath.Join(dir, name+".yml"))
		if err != nil {
			return err
		}
		t.procs[i-1] = p
	}
	return waitReachable(ctx, t.endpoints(), 15*time.Second)
}

func (t *nebulaTunnel) endpoints() endpoints {
	return endpoints{clientNS: t.l.Host(1).NS(), serverNS: t.l.Host(2).NS(), target: nebulaOverlay(2)}
}
func (t *nebulaTunnel) pids() []int            { return processPids(t.procs[:]) }
func (t *nebulaTunnel) txBytes() (int64, bool) { return 0, false }
func (t *nebulaTunnel) mtu() int               { return t.mtuVal }
func (t *nebulaTunnel) teardown() error {
	stopAll(t.procs[:])
	clear(t.procs[:])
	return nil
}
