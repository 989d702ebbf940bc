// Package lab is meshd's multi-host test bed on one machine. Every "host" is
// a network namespace whose underlay link (u0) plugs into a bridge in a
// "switch" namespace; every host has one "pod" namespace per overlay
// segment, routed through the host. Nothing is created in the caller's
// namespace, so labs with different prefixes can run side by side, and
// CleanupStale removes whatever a crashed run left behind. With
// Spec.Sites the switch becomes a small internet instead: sites with
// private bridges, gateways on a WAN, sites behind NAT routers (site.go).
package lab

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	netnsDir    = "/run/netns"
	wgSocketDir = "/var/run/wireguard"
	bridgeName  = "br0"
	underlayIf  = "u0"
	podIf       = "eth0"
	// closeTimeout bounds teardown; Close must work after the caller's
	// context is gone (Ctrl-C), so it uses its own.
	closeTimeout = 30 * time.Second
)

// Lab is a running test bed. Close it, also on failure paths.
type Lab struct {
	spec       Spec
	dir        string
	createdDir bool
	hosts      []*Host
	sites      []*Site // nil for a flat lab

	mu         sync.Mutex
	namespaces []string // in creation order
	captures   []*Capture
	neigh      []neighLimit
	closed     bool
}

// New builds the lab described by spec. Leftovers of an earlier run with the
// same prefix are removed first; if New fails, it removes what it created.
func New(ctx context.Context, spec Spec) (_ *Lab, err error) {
	l, err := plan(spec)
	if err != nil {
		return nil, err
	}
	if err := CleanupStale(l.spec.Prefix); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()
	if err := l.makeDirs(); err != nil {
		return nil, err
	}
	l.neigh, err = raiseNeighLimits(neighEntries(len(l.hosts), len(l.spec.Segments)))
	if err != nil {
		return nil, err
	}
	if err := l.build(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// plan computes names and addresses without touching the system, so the
// rendering logic is testable without root.
func plan(spec Spec) (*Lab, error) {
	spec, err := spec.normalize()
	if err != nil {
		return nil, err
	}
	l := &Lab{spec: spec, dir: spec.Dir}
	for i := 1; i <= spec.Hosts; i++ {
		l.hosts = append(l.hosts, &Host{
			lab:       l,
			index:     i,
			stopGrace: defaultStopGrace,
			slices:    map[string]Slice{},
		})
	}
	l.planSites()
	for _, h := range l.hosts {
		for _, seg := range spec.Segments {
			s, err := h.sliceOf(seg)
			if err != nil {
				return nil, err
			}
			h.slices[seg.Name] = s
		}
	}
	return l, nil
}

// sliceOf computes the host's slice of seg: slice i for host hi of a flat
// lab, slice pos of its site's block in a multi-site lab.
func (h *Host) sliceOf(seg SegmentSpec) (Slice, error) {
	if h.site != nil {
		return SiteSlice(seg, h.site.index, h.sitePos)
	}
	return SegmentSlice(seg, h.index)
}

// Spec returns the spec with defaults filled in.
func (l *Lab) Spec() Spec { return l.spec }

// Prefix is the name prefix of everything the lab created.
func (l *Lab) Prefix() string { return l.spec.Prefix }

// Dir is the lab's working directory.
func (l *Lab) Dir() string { return l.dir }

// GossipKeyFile is the shared serf key every host's config points to.
func (l *Lab) GossipKeyFile() string { return filepath.Join(l.dir, "gossip.key") }

// SwitchNS is the namespace holding the underlay bridge br0. A multi-site
// lab has none: see WANNS and Site.NS.
func (l *Lab) SwitchNS() string { return l.spec.Prefix + "-sw" }

// Hosts returns the hosts in order; Hosts()[0] is h1.
func (l *Lab) Hosts() []*Host { return l.hosts }

// Host returns host i (1-based), or nil.
func (l *Lab) Host(i int) *Host {
	if i < 1 || i > len(l.hosts) {
		return nil
	}
	return l.hosts[i-1]
}

func (l *Lab) makeDirs() error {
	if l.dir == "" {
		d, err := os.MkdirTemp("", tempDirPattern(l.spec.Prefix))
		if err != nil {
			return fmt.Errorf("lab: create working dir: %w", err)
		}
		l.dir, l.createdDir = d, true
	} else if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return fmt.Errorf("lab: create working dir: %w", err)
	}
	for _, h := range l.hosts {
		if err := os.MkdirAll(filepath.Join(h.Dir(), "data"), 0o700); err != nil {
			return fmt.Errorf("lab: create %s dir: %w", h.Name(), err)
		}
		if n := len(h.ControlSocket()); n > sunPathMax {
			return fmt.Errorf("lab: control socket path %s is %d bytes, unix sockets allow %d; use a shorter Dir", h.ControlSocket(), n, sunPathMax)
		}
	}
	return writeGossipKey(l.GossipKeyFile())
}

func tempDirPattern(prefix string) string { return "meshd-lab-" + prefix + "-" }

func writeGossipKey(path string) error {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("lab: gossip key: %w", err)
	}
	// Remove first: WriteFile keeps the mode of an existing file.
	_ = os.Remove(path)
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return fmt.Errorf("lab: gossip key: %w", err)
	}
	return nil
}

// addNetns records the name before creating it: an "ip netns add" killed
// by ctx may still have created the namespace, and Close must see it.
func (l *Lab) addNetns(ctx context.Context, name string) error {
	l.mu.Lock()
	l.namespaces = append(l.namespaces, name)
	l.mu.Unlock()
	_, err := run(ctx, "ip", "netns", "add", name)
	return err
}

func (l *Lab) build(ctx context.Context) error {
	build := l.buildFlat
	if len(l.sites) > 0 {
		build = l.buildSites
	}
	if err := build(ctx); err != nil {
		return err
	}
	for _, h := range l.hosts {
		for _, seg := range l.spec.Segments {
			if err := l.buildPod(ctx, h, seg.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// buildFlat builds the switch and plugs every host into it.
func (l *Lab) buildFlat(ctx context.Context) error {
	if err := l.buildSwitch(ctx, l.SwitchNS()); err != nil {
		return err
	}
	for _, h := range l.hosts {
		if err := l.addForwardingNS(ctx, h.NS()); err != nil {
			return err
		}
		addr := netip.PrefixFrom(h.UnderlayAddr(), underlayPrefixLen(l.spec.IPv6Underlay))
		// The switch-side port is named after the host.
		if err := l.plug(ctx, l.SwitchNS(), h.Name(), h.NS(), underlayIf, addr); err != nil {
			return err
		}
	}
	return nil
}

// buildSwitch creates namespace sw with bridge br0 in it.
func (l *Lab) buildSwitch(ctx context.Context, sw string) error {
	if err := l.addNetns(ctx, sw); err != nil {
		return err
	}
	// The switch needs no IPv6 of its own; without it the bridge emits no
	// router solicitations or MLD reports, which keeps captures clean.
	if err := setSysctls(sw, true,
		"net/ipv6/conf/all/disable_ipv6", "1",
		"net/ipv6/conf/default/disable_ipv6", "1",
	); err != nil {
		return err
	}
	// No STP and no forward delay: ports forward as soon as they are up.
	// Without snooping the bridge floods multicast, so IPv6 neighbour
	// discovery works before any MLD report has been seen.
	return ipn(ctx, sw,
		[]string{"link", "set", "dev", "lo", "up"},
		[]string{"link", "add", "name", bridgeName, "type", "bridge", "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"},
		[]string{"link", "set", "dev", bridgeName, "up"},
	)
}

// addForwardingNS creates namespace ns for a host or router: forwarding on,
// reverse-path filtering off, loopback up.
func (l *Lab) addForwardingNS(ctx context.Context, ns string) error {
	if err := l.addNetns(ctx, ns); err != nil {
		return err
	}
	// Defaults first: they apply to links created afterwards.
	if err := setSysctls(ns, false,
		"net/ipv4/ip_forward", "1",
		"net/ipv6/conf/all/forwarding", "1",
		"net/ipv4/conf/all/rp_filter", "0",
		"net/ipv4/conf/default/rp_filter", "0",
		"net/ipv6/conf/all/accept_dad", "0",
		"net/ipv6/conf/default/accept_dad", "0",
	); err != nil {
		return err
	}
	return ipn(ctx, ns, []string{"link", "set", "dev", "lo", "up"})
}

// plug connects namespace ns to the bridge of switch namespace sw with a
// veth: port on the bridge, ifname with address addr in ns.
func (l *Lab) plug(ctx context.Context, sw, port, ns, ifname string, addr netip.Prefix) error {
	// Creating the peer directly in ns means no interface ever exists in
	// the caller's namespace, where names could collide.
	if err := ipn(ctx, sw, []string{"link", "add", "name", port, "type", "veth", "peer", "name", ifname, "netns", ns}); err != nil {
		return err
	}
	swCmds := [][]string{{"link", "set", "dev", port, "master", bridgeName}}
	var hostCmds [][]string
	if mtu := l.spec.UnderlayMTU; mtu != 0 {
		swCmds = append(swCmds, []string{"link", "set", "dev", port, "mtu", strconv.Itoa(mtu)})
		hostCmds = append(hostCmds, []string{"link", "set", "dev", ifname, "mtu", strconv.Itoa(mtu)})
	}
	swCmds = append(swCmds, []string{"link", "set", "dev", port, "up"})
	if addr.Addr().Is6() {
		hostCmds = append(hostCmds, []string{"addr", "add", addr.String(), "dev", ifname, "nodad"})
	} else {
		hostCmds = append(hostCmds, []string{"addr", "add", addr.String(), "dev", ifname})
	}
	hostCmds = append(hostCmds, []string{"link", "set", "dev", ifname, "up"})
	if err := ipn(ctx, sw, swCmds...); err != nil {
		return err
	}
	if err := ipn(ctx, ns, hostCmds...); err != nil {
		return err
	}
	sysctls := []string{
		"net/ipv4/conf/" + ifname + "/rp_filter", "0",
		"net/ipv6/conf/" + ifname + "/accept_dad", "0",
	}
	if addr.Addr().Is4() {
		// An IPv4 underlay carries no IPv6 at all, so a capture shows only
		// what meshd sends.
		sysctls = append(sysctls, "net/ipv6/conf/"+ifname+"/disable_ipv6", "1")
	}
	return setSysctls(ns, false, sysctls...)
}

func (l *Lab) buildPod(ctx context.Context, h *Host, segment string) error {
	ns, pod := h.NS(), h.PodNS(segment)
	sl := h.slices[segment]
	link := podLinkName(segment)
	if err := l.addNetns(ctx, pod); err != nil {
		return err
	}
	if err := setSysctls(pod, false,
		"net/ipv6/conf/all/accept_dad", "0",
		"net/ipv6/conf/default/accept_dad", "0",
	); err != nil {
		return err
	}
	if err := ipn(ctx, ns, []string{"link", "add", "name", link, "type", "veth", "peer", "name", podIf, "netns", pod}); err != nil {
		return err
	}
	if err := setSysctls(ns, false,
		"net/ipv4/conf/"+link+"/rp_filter", "0",
		"net/ipv6/conf/"+link+"/accept_dad", "0",
	); err != nil {
		return err
	}
	family := "-4"
	nodad := []string{}
	if sl.Subnet.Addr().Is6() {
		family, nodad = "-6", []string{"nodad"}
	}
	gw := netip.PrefixFrom(sl.Gateway, sl.Subnet.Bits()).String()
	podAddr := netip.PrefixFrom(sl.Pod, sl.Subnet.Bits()).String()
	if err := ipn(ctx, ns,
		append([]string{"addr", "add", gw, "dev", link}, nodad...),
		[]string{"link", "set", "dev", link, "up"},
	); err != nil {
		return err
	}
	return ipn(ctx, pod,
		[]string{"link", "set", "dev", "lo", "up"},
		append([]string{"addr", "add", podAddr, "dev", podIf}, nodad...),
		[]string{"link", "set", "dev", podIf, "up"},
		[]string{family, "route", "add", "default", "via", sl.Gateway.String(), "dev", podIf},
	)
}

// Close kills meshd processes and captures the lab started, deletes its
// namespaces and WireGuard sockets, and removes Dir if the lab created it.
// Calling it again is a no-op.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	namespaces := append([]string(nil), l.namespaces...)
	captures := append([]*Capture(nil), l.captures...)
	l.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var errs []error
	for _, h := range l.hosts {
		if h.Running() {
			if err := h.Kill(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, c := range captures {
		_, _ = c.Stop() // only its process matters here, not the data
	}
	for i := len(namespaces) - 1; i >= 0; i-- {
		if err := deleteNetns(ctx, namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	// The prefix is the lab's own, so anything else carrying it is a
	// leftover of this lab too (say, created by a test through Exec).
	if left, err := ListNetns(l.spec.Prefix); err != nil {
		errs = append(errs, err)
	} else {
		for _, ns := range left {
			if err := deleteNetns(ctx, ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, h := range l.hosts {
		if err := removeIfExists(h.UAPISocket()); err != nil {
			errs = append(errs, err)
		}
	}
	if l.createdDir {
		if err := os.RemoveAll(l.dir); err != nil {
			errs = append(errs, fmt.Errorf("lab: remove %s: %w", l.dir, err))
		}
	}
	// After the namespaces are gone, so their entries no longer count.
	errs = append(errs, restoreNeighLimits(l.neigh))
	return errors.Join(errs...)
}

// deleteNetns kills whatever still runs in ns first: a process inside keeps
// the namespace (and its interfaces) alive after the name is gone.
func deleteNetns(ctx context.Context, ns string) error {
	var errs []error
	out, err := run(ctx, "ip", "netns", "pids", ns)
	if err != nil && netnsExists(ns) {
		errs = append(errs, err)
	}
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("lab: kill pid %d in netns %s: %w", pid, ns, err))
		}
	}
	if netnsExists(ns) {
		if _, err := run(ctx, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func netnsExists(ns string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, ns))
	return err == nil
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lab: remove %s: %w", path, err)
	}
	return nil
}

// ListNetns returns the names of existing namespaces starting with
// "<prefix>-", i.e. those a lab with that prefix created.
func ListNetns(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lab: list namespaces: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// CleanupStale removes what a crashed run with this prefix left behind:
// its namespaces (killing the processes inside), its WireGuard UAPI sockets
// and its temporary working directories.
func CleanupStale(prefix string) error {
	if err := validatePrefix(prefix); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	names, err := ListNetns(prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range names {
		if err := deleteNetns(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	socks, _ := filepath.Glob(filepath.Join(wgSocketDir, prefix+"h*.sock"))
	for _, s := range socks {
		if isHostSocket(prefix, filepath.Base(s)) {
			if err := removeIfExists(s); err != nil {
				errs = append(errs, err)
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempDirPattern(prefix)+"*"))
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("lab: remove %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// isHostSocket matches exactly "<prefix>h<digits>.sock": the glob alone
// would also match another lab whose prefix extends this one with "h".
func isHostSocket(prefix, base string) bool {
	num, ok := strings.CutPrefix(strings.TrimSuffix(base, ".sock"), prefix+"h")
	if !ok || num == "" {
		return false
	}
	_, err := strconv.Atoi(num)
	return err == nil
}
