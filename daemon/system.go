package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/cni"
	"github.com/meshd/meshd/cnm"
	"github.com/meshd/meshd/internal/bounded"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/probe"
	"github.com/meshd/meshd/routes"
	"github.com/meshd/meshd/wgdev"
)

// Deadlines on calls into the kernel and the device. A healthy call takes
// microseconds to milliseconds; these only bound a stuck one.
const (
	netlinkTimeout = 5 * time.Second
	deviceTimeout  = 5 * time.Second
	nftTimeout     = 5 * time.Second
)

// HostSystem is the real host: the network namespace meshd runs in.
func HostSystem() System {
	return System{
		Host:     netlinkHost{},
		Lock:     lockNamespace,
		Underlay: resolveUnderlay,
		Router:   openRouter,
		WatchRoutes: func(ctx context.Context, kick func()) error {
			return routes.Watch(ctx, netns.None(), kick)
		},
		Enforcer:     openEnforcer,
		Device:       openDevice,
		Join:         func(c cluster.MembershipConfig, kick func()) (Cluster, error) { return cluster.Join(c, kick) },
		ConfigWriter: func(dir string) ConfigWriter { return cni.NewWriter(dir) },
		ContainerDataplane: func() (cnm.Dataplane, io.Closer, error) {
			h, err := routeHandle()
			if err != nil {
				return nil, nil, err
			}
			return cnm.NewNetlink(h), closerFunc(h.Close), nil
		},
		Echo: probe.Echo,
	}
}

// openRouter opens a route-only netlink handle: a bare NewHandle also
// opens XFRM and netfilter sockets, loading modules meshd never uses and
// failing where they cannot be loaded. The socket timeout bounds every
// call made through it.
func openRouter(log *slog.Logger) (Router, io.Closer, error) {
	h, err := routeHandle()
	if err != nil {
		return nil, nil, err
	}
	return routes.New(h, log), closerFunc(h.Close), nil
}

func routeHandle() (*netlink.Handle, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	if err := h.SetSocketTimeout(netlinkTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("set netlink timeout: %w", err)
	}
	return h, nil
}

func openEnforcer(iface string, log *slog.Logger) (Enforcer, io.Closer, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, nil, fmt.Errorf("open nftables: %w", err)
	}
	gate := bounded.NewGate(nftTimeout, 2)
	// A batch sent to a kernel without nf_tables is answered with one
	// error ack that the library keeps waiting past; a plain dump fails
	// at once, with the reason.
	if err := gate.Do("list nftables tables", func() error { _, err := conn.ListTables(); return err }); err != nil {
		return nil, nil, fmt.Errorf("nf_tables is not usable on this kernel (allow-lists need it; load the nf_tables module): %w", err)
	}
	return &boundedEnforcer{e: policy.NewEnforcer(conn, iface, log), gate: gate}, closerFunc(func() { conn.CloseLasting() }), nil
}

// boundedEnforcer gives every nftables transaction and dump a deadline.
type boundedEnforcer struct {
	e    *policy.Enforcer
	gate *bounded.Gate
}

func (b *boundedEnforcer) Apply(rs *policy.Ruleset) error {
	return b.gate.Do("apply nftables policy", func() error { return b.e.Apply(rs) })
}

func (b *boundedEnforcer) Flush() error {
	return b.gate.Do("remove nftables table", b.e.Flush)
}

func (b *boundedEnforcer) Intact() error {
	return b.gate.Do("read nftables table", b.e.Intact)
}

func (b *boundedEnforcer) Counters() (out []policy.Counter, err error) {
	err = b.gate.Do("read nftables counters", func() (err error) {
		out, err = b.e.Counters()
		return err
	})
	return out, err
}

// device is the interface with its bounded wgctrl client. The interface
// is a named field: embedded, its type's name would shadow the client's
// Device method.
type device struct {
	link wgdev.Device
	wgdev.Client
	ctl *wgctrl.Client
	h   *netlink.Handle
}

func (d *device) SetAddrs(addrs []netip.Prefix) error {
	return wgdev.SetAddrs(d.h, d.link.Name(), addrs)
}

func (d *device) Name() string     { return d.link.Name() }
func (d *device) Kind() wgdev.Mode { return d.link.Kind() }
func (d *device) Present() error   { return d.link.Present() }

func openDevice(opts wgdev.Options) (Device, error) {
	h, err := routeHandle()
	if err != nil {
		return nil, err
	}
	opts.Links = h
	dev, err := wgdev.Open(opts)
	if err != nil {
		h.Close()
		return nil, err
	}
	ctl, err := wgctrl.New()
	if err != nil {
		dev.Close()
		h.Close()
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	return &device{link: dev, Client: wgdev.Bounded(ctl, deviceTimeout, 2), ctl: ctl, h: h}, nil
}

// Close removes the interface and releases both handles.
func (d *device) Close() error {
	err := errors.Join(d.ctl.Close(), d.link.Close())
	d.h.Close()
	return err
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// warnReadable flags a gossip key other users can read. It is a warning,
// not a refusal: 'meshd keygen gossip > FILE' under the usual umask makes
// such a file, and refusing it would break the documented first start.
func warnReadable(log *slog.Logger, path string) {
	if info, err := os.Stat(path); err == nil && info.Mode().Perm()&0o077 != 0 {
		log.Warn("gossip key file is readable by other users; anyone who reads it can join the cluster: chmod 600 it",
			"path", path, "mode", fmt.Sprintf("%04o", info.Mode().Perm()))
	}
}

// netlinkHost reads the host's addresses and routes through netlink.
type netlinkHost struct{}

func (netlinkHost) Addrs() ([]HostAddr, error) {
	h, err := routeHandle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []HostAddr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.IPNet == nil {
			continue
		}
		ones, _ := a.IPNet.Mask.Size()
		out = append(out, HostAddr{Prefix: netip.PrefixFrom(ip.Unmap(), ones), Link: names[a.LinkIndex]})
	}
	return out, nil
}

func (netlinkHost) RouteTo(a netip.Addr) (HostRoute, error) {
	h, err := routeHandle()
	if err != nil {
		return HostRoute{}, err
	}
	defer h.Close()
	rs, err := h.RouteGet(a.AsSlice())
	if err != nil || len(rs) == 0 {
		return HostRoute{}, fmt.Errorf("no route to %s: %v", a, err)
	}
	r := rs[0]
	out := HostRoute{}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok {
		out.Gateway = gw.Unmap()
	}
	if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
		out.Link = l.Attrs().Name
	}
	// RouteGet answers with the destination itself; the prefix of the
	// route that matched is the longest one in main containing it.
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	if routes, err := h.RouteList(nil, fam); err == nil {
		for _, rt := range routes {
			if rt.Dst == nil {
				continue
			}
			ip, _ := netip.AddrFromSlice(rt.Dst.IP)
			ones, _ := rt.Dst.Mask.Size()
			p := netip.PrefixFrom(ip.Unmap(), ones)
			if p.Contains(a) && (!out.Dst.IsValid() || p.Bits() > out.Dst.Bits()) {
				out.Dst = p
			}
		}
	}
	return out, nil
}

func (netlinkHost) Forwarding() (v4, v6 bool, err error) { return readForwarding() }

func (netlinkHost) CheckInterface(name string) error {
	h, err := routeHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	return wgdev.CheckName(h, name)
}

// readForwarding reads the kernel's forwarding switches for this network
// namespace.
func readForwarding() (v4, v6 bool, err error) {
	read := func(path string) (bool, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, err
		}
		return strings.TrimSpace(string(b)) == "1", nil
	}
	if v4, err = read("/proc/sys/net/ipv4/ip_forward"); err != nil {
		return false, false, err
	}
	v6, err = read("/proc/sys/net/ipv6/conf/all/forwarding")
	if errors.Is(err, os.ErrNotExist) {
		return v4, false, nil // no IPv6 in this kernel
	}
	return v4, v6, err
}
