package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/internal/fileio"
	"github.com/meshd/meshd/wgdev"
)

// HostView is what the checks before a start read about the host. It
// only reads: `meshd check` runs the same checks on a host it must not
// change.
type HostView interface {
	// Addrs lists every address of every interface, with its prefix
	// length (so its connected network) and the interface's name.
	Addrs() ([]HostAddr, error)
	// RouteTo is the route the host would use to reach a.
	RouteTo(a netip.Addr) (HostRoute, error)
	// CheckInterface reports whether meshd may create its interface
	// under that name (see wgdev.CheckName).
	CheckInterface(name string) error
	// Forwarding reports whether the kernel forwards IPv4 and IPv6.
	Forwarding() (v4, v6 bool, err error)
}

// HostError is a problem of the host rather than the config file (IP
// forwarding off); like a config error it stops the start before
// anything is created, with exit code 2.
type HostError struct {
	Problem, Fix string
}

func (e *HostError) Error() string { return "host: " + e.Problem + "; " + e.Fix }

// HostAddr is one address configured on the host.
type HostAddr struct {
	Prefix netip.Prefix // address and connected prefix length
	Link   string
}

// HostRoute is the route the kernel picks for a destination.
type HostRoute struct {
	Dst     netip.Prefix // invalid for a default route
	Gateway netip.Addr   // invalid when directly connected
	Link    string
}

// Check runs every check a start runs before it creates anything, and
// creates nothing. Each failure is a *config.Error naming the key at
// fault and the fix (exit 2).
func Check(cfg *config.Config, host HostView) error {
	var errs []error
	for _, check := range []func(*config.Config, HostView) error{
		checkDataDir, checkControlSocket, checkKeys, checkBindAddr, checkSegmentsAgainstHost, checkInterface, checkForwarding,
	} {
		if err := check(cfg, host); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func cfgErr(cfg *config.Config, key, problem, fix string) *config.Error {
	return &config.Error{Key: key, Problem: problem, Fix: fix}
}

// checkDataDir needs data_dir to be a directory meshd can write, or a
// path it can create: the key, the claims and the keyring live there, and
// finding out after the interface and routes exist would leave them half
// set up.
func checkDataDir(cfg *config.Config, _ HostView) error {
	dir := cfg.DataDir
	for {
		info, err := os.Stat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
			continue
		}
		if err != nil {
			return cfgErr(cfg, "data_dir", fmt.Sprintf("cannot use %s: %v", dir, err), "point data_dir at a directory meshd can write")
		}
		if !info.IsDir() {
			return cfgErr(cfg, "data_dir", fmt.Sprintf("%s is a file, not a directory", dir), "remove it, or point data_dir elsewhere, e.g. /var/lib/meshd")
		}
		if err := unix.Access(dir, unix.W_OK); err != nil {
			return cfgErr(cfg, "data_dir", fmt.Sprintf("%s is not writable (%v)", dir, err),
				"make it writable (a read-only file system? systemd's ReadWritePaths?) or point data_dir elsewhere")
		}
		return nil
	}
	return nil
}

// checkControlSocket refuses a control_socket path that holds anything
// but a socket before anything is created: Listen would refuse it only
// after the interface, routes and table exist.
func checkControlSocket(cfg *config.Config, _ HostView) error {
	return control.CheckPath(cfg.ControlSocket)
}

// checkKeys reads the WireGuard key and the saved gossip keyring if they
// exist, so a corrupt one stops the start before anything is created.
func checkKeys(cfg *config.Config, _ HostView) error {
	var errs []error
	keyPath := filepath.Join(cfg.DataDir, crypto.KeyFileName)
	if _, err := crypto.LoadPrivateKey(keyPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		var fe *fileio.Error
		if errors.As(err, &fe) {
			errs = append(errs, cfgErr(cfg, "data_dir", fe.Path+": "+fe.Problem, fe.Fix))
		} else {
			errs = append(errs, cfgErr(cfg, "data_dir", fmt.Sprintf("cannot read the WireGuard key %s: %v", keyPath, err), "check the file"))
		}
	}
	if _, err := cluster.ReadKeyring(cfg.Cluster.GossipKeyring); err != nil {
		errs = append(errs, cfgErr(cfg, "cluster.gossip_keyring", err.Error(),
			"restore it from a backup, or remove it so the host starts from cluster.gossip_key_file"))
	}
	return errors.Join(errs...)
}

// checkBindAddr refuses a gossip address the host does not have, in the
// site pool or (a gateway) the WAN pool: serf would fail to bind only
// after the interface and routes were made.
func checkBindAddr(cfg *config.Config, host HostView) error {
	var addrs []HostAddr
	for _, b := range []struct {
		key  string
		addr netip.Addr
	}{
		{"cluster.bind_addr", cfg.Cluster.BindAddr},
		{"wan.bind_addr", cfg.WAN.BindAddr}, // invalid but on a gateway
	} {
		if !b.addr.IsValid() || b.addr.IsUnspecified() {
			continue
		}
		if addrs == nil {
			var err error
			if addrs, err = host.Addrs(); err != nil {
				return fmt.Errorf("list the host's addresses: %w", err)
			}
		}
		if !slices.ContainsFunc(addrs, func(a HostAddr) bool { return a.Prefix.Addr().Unmap() == b.addr.Unmap() }) {
			return cfgErr(cfg, b.key, fmt.Sprintf("%s is not an address of this host", b.addr),
				"use one of the host's addresses (ip -br addr), or 0.0.0.0 with advertise_addr")
		}
	}
	return nil
}

// checkSegmentsAgainstHost refuses a segment that would capture the
// host's own network: meshd sends everything addressed into a segment to
// its table, so a segment holding the underlay's addresses, the gossip or
// WireGuard endpoints, or the networks and gateways the host reaches its
// peers through would cut the host off.
func checkSegmentsAgainstHost(cfg *config.Config, host HostView) error {
	addrs, err := host.Addrs()
	if err != nil {
		return fmt.Errorf("list the host's addresses: %w", err)
	}
	const fix = "give the segment a range the host's underlay does not use"
	routes := map[netip.Addr]HostRoute{}
	for _, ep := range endpoints(cfg) {
		if rt, err := host.RouteTo(ep.addr); err == nil {
			routes[ep.addr] = rt
		}
	}
	underlay := underlayLinks(cfg, addrs, routes)
	named := map[netip.Addr]string{}
	for _, ep := range endpoints(cfg) {
		if _, dup := named[ep.addr]; !dup {
			named[ep.addr] = " (the " + ep.what + ")"
		}
	}
	for i, seg := range cfg.Segments {
		key := fmt.Sprintf("segments[%d].cidr", i)
		// Addresses and connected networks of the underlay: the pods'
		// links hold segment addresses by design, the underlay never may.
		for _, a := range addrs {
			if !underlay[a.Link] || !seg.CIDR.Overlaps(a.Prefix.Masked()) {
				continue
			}
			return cfgErr(cfg, key, fmt.Sprintf("%s overlaps %s, the address %s%s has on %s: meshd would route the host's own network into the overlay",
				seg.CIDR, a.Prefix.Masked(), a.Prefix.Addr(), named[a.Prefix.Addr().Unmap()], a.Link), fix)
		}
		for _, ep := range endpoints(cfg) {
			if seg.CIDR.Contains(ep.addr) {
				return cfgErr(cfg, key, fmt.Sprintf("%s contains %s, the %s", seg.CIDR, ep.addr, ep.what), fix)
			}
			rt, ok := routes[ep.addr]
			if !ok {
				continue // no route yet: nothing to capture
			}
			if rt.Gateway.IsValid() && seg.CIDR.Contains(rt.Gateway) {
				return cfgErr(cfg, key, fmt.Sprintf("%s contains %s, the gateway this host reaches the %s %s through", seg.CIDR, rt.Gateway, ep.what, ep.addr), fix)
			}
			if rt.Dst.IsValid() && rt.Dst.Bits() > 0 && rt.Dst.Bits() >= seg.CIDR.Bits() && seg.CIDR.Overlaps(rt.Dst) {
				return cfgErr(cfg, key, fmt.Sprintf("%s contains %s, the route this host reaches the %s %s by", seg.CIDR, rt.Dst, ep.what, ep.addr), fix)
			}
		}
	}
	return nil
}

// underlayLinks are the interfaces gossip and WireGuard use: the one
// holding bind_addr or advertise_addr, the ones the routes to the seeds
// and the endpoint leave by, and, when meshd would pick its own address,
// the interface of the first global address.
func underlayLinks(cfg *config.Config, addrs []HostAddr, routes map[netip.Addr]HostRoute) map[string]bool {
	links := map[string]bool{}
	for _, rt := range routes {
		if rt.Link != "" {
			links[rt.Link] = true
		}
	}
	explicit := false
	for i, a := range []netip.Addr{cfg.Cluster.BindAddr, cfg.Cluster.AdvertiseAddr, cfg.WAN.BindAddr, cfg.WAN.AdvertiseAddr} {
		if !a.IsValid() || a.IsUnspecified() {
			continue
		}
		// The WAN pool's addresses are underlay too, but say nothing
		// about where the site pool's gossip goes.
		explicit = explicit || i < 2
		for _, ha := range addrs {
			if ha.Prefix.Addr() == a.Unmap() {
				links[ha.Link] = true
			}
		}
	}
	if !explicit {
		for _, ha := range addrs {
			if ha.Prefix.Addr().IsGlobalUnicast() {
				links[ha.Link] = true
				break
			}
		}
	}
	return links
}

type endpoint struct {
	addr netip.Addr
	what string
}

// endpoints are the underlay addresses meshd itself talks to or is
// reached at: none may be in the overlay.
func endpoints(cfg *config.Config) []endpoint {
	var out []endpoint
	add := func(a netip.Addr, what string) {
		if a.IsValid() && !a.IsUnspecified() {
			out = append(out, endpoint{a.Unmap(), what})
		}
	}
	add(cfg.Cluster.BindAddr, "gossip address (cluster.bind_addr)")
	add(cfg.Cluster.AdvertiseAddr, "advertised gossip address (cluster.advertise_addr)")
	add(cfg.WireGuard.Endpoint.Addr(), "WireGuard endpoint (wireguard.endpoint)")
	for _, seed := range cfg.Cluster.Join {
		if ap, err := netip.ParseAddrPort(seed); err == nil {
			add(ap.Addr(), "seed "+seed+" (cluster.join)")
		}
	}
	// A gateway's WAN pool: the config keeps [wan] empty on other hosts.
	add(cfg.WAN.BindAddr, "WAN gossip address (wan.bind_addr)")
	add(cfg.WAN.AdvertiseAddr, "public gateway address (wan.advertise_addr)")
	for _, seed := range cfg.WAN.Join {
		if ap, err := netip.ParseAddrPort(seed); err == nil {
			add(ap.Addr(), "WAN seed "+seed+" (wan.join)")
		}
	}
	return out
}

func checkInterface(cfg *config.Config, host HostView) error {
	err := host.CheckInterface(cfg.WireGuard.Interface)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, wgdev.ErrForeign), errors.Is(err, wgdev.ErrInUse):
		return cfgErr(cfg, "wireguard.interface", err.Error(), "choose a name no other program uses, e.g. mesh0")
	}
	return fmt.Errorf("check wireguard.interface: %w", err)
}

// checkForwarding refuses to start on a host that does not forward the
// address family of a segment: pods' packets to other hosts could not
// enter the tunnel, and nothing would say why. meshd does not switch it
// on itself: it is the host's setting (firewalld, docker and sysctl.d all
// have a say), and a daemon quietly turning a host into a router is not
// what an operator expects.
func checkForwarding(cfg *config.Config, host HostView) error {
	v4, v6, err := host.Forwarding()
	if err != nil {
		return fmt.Errorf("read IP forwarding: %w", err)
	}
	for _, seg := range cfg.Segments {
		if seg.CIDR.Addr().Is4() && !v4 {
			return &HostError{Problem: "net.ipv4.ip_forward is 0, so pods cannot reach other hosts through segment " + seg.Name,
				Fix: "enable it: sysctl -w net.ipv4.ip_forward=1, and net.ipv4.ip_forward = 1 in /etc/sysctl.d/ to keep it"}
		}
		if seg.CIDR.Addr().Is6() && !v6 {
			return &HostError{Problem: "net.ipv6.conf.all.forwarding is 0, so pods cannot reach other hosts through segment " + seg.Name,
				Fix: "enable it: sysctl -w net.ipv6.conf.all.forwarding=1, and keep it in /etc/sysctl.d/"}
		}
	}
	return nil
}
