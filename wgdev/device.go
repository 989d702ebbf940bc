// Package wgdev owns the WireGuard interface: kernel WireGuard through
// netlink when the kernel has it, otherwise an embedded wireguard-go
// device serving the standard UAPI socket. Either way the device is
// configured through wgctrl, so `wg show` works the same in both modes.
package wgdev

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Mode names the WireGuard implementation.
type Mode string

const (
	ModeAuto      Mode = "auto"
	ModeKernel    Mode = "kernel"
	ModeUserspace Mode = "userspace"
)

// ErrKernelUnsupported means the running kernel cannot create WireGuard
// links (module missing or not built).
var ErrKernelUnsupported = errors.New("this kernel has no WireGuard support (the wireguard module is missing or cannot be loaded)")

// ErrInUse means another live process serves the interface's UAPI socket,
// typically a second meshd with the same interface name.
var ErrInUse = errors.New("interface is in use by another running process")

// ErrForeign means a link with the configured name exists and meshd
// cannot prove it made it: deleting it could cut another program's
// tunnel (OpenVPN's tun0, wg-quick's wg0).
var ErrForeign = errors.New("interface exists and is not meshd's")

// SocketDir is where userspace WireGuard implementations serve UAPI. It is
// shared by every network namespace on a host, which is why hosts in
// namespaces need distinct interface names.
const SocketDir = "/var/run/wireguard"

// Marker is the interface alias (IFLA_IFALIAS, `ip link show` prints it)
// meshd sets on every link it creates. Only a link carrying it is ever
// deleted as a leftover of an earlier run.
const Marker = "meshd-managed"

// Links is the part of *netlink.Handle that wgdev uses, injected so the
// device follows one namespace's handle and tests can see every call.
type Links interface {
	LinkByName(name string) (netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetMTU(link netlink.Link, mtu int) error
	LinkSetUp(link netlink.Link) error
	LinkSetAlias(link netlink.Link, name string) error
	LinkSetIP6AddrGenMode(link netlink.Link, mode int) error
}

var _ Links = (*netlink.Handle)(nil)

// Device is a WireGuard interface that meshd created and will remove.
type Device interface {
	Name() string
	// Kind is "kernel" or "userspace": what was actually chosen.
	Kind() Mode
	// Present reports whether the interface still exists as meshd made
	// it. Someone else may delete it; the owner then opens a new one.
	Present() error
	// Close removes the interface. Safe to call twice.
	Close() error
}

// Options says how to create the device.
type Options struct {
	Name string
	Mode Mode
	MTU  int
	Log  *slog.Logger
	// Links is the netlink handle of the namespace the device lives in;
	// nil opens one for the calling thread's namespace.
	Links Links
	// OnRepair is told what the device put back by itself after someone
	// else removed it (the UAPI socket); nil ignores it.
	OnRepair func(what string)
}

// Open creates the interface, marks it as meshd's, sets its MTU and brings
// it up. In auto mode a kernel without WireGuard falls back to the
// embedded implementation.
func Open(opts Options) (Device, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.OnRepair == nil {
		opts.OnRepair = func(string) {}
	}
	if opts.Links == nil {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("open netlink: %w", err)
		}
		opts.Links = h
	}
	if err := checkFree(opts.Name); err != nil {
		return nil, err
	}
	if err := removeStale(opts.Links, opts.Name, opts.Log); err != nil {
		return nil, err
	}
	var dev Device
	var err error
	switch opts.Mode {
	case ModeKernel:
		dev, err = openKernel(opts)
	case ModeUserspace:
		dev, err = openUserspace(opts)
	case ModeAuto, "":
		dev, err = openKernel(opts)
		if errors.Is(err, ErrKernelUnsupported) {
			opts.Log.Info("kernel WireGuard unavailable; using embedded wireguard-go", "interface", opts.Name)
			dev, err = openUserspace(opts)
		}
	default:
		return nil, fmt.Errorf("unknown WireGuard mode %q", opts.Mode)
	}
	if err != nil {
		return nil, err
	}
	if err := linkUp(opts.Links, opts.Name, opts.MTU); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// CheckName reports, without changing anything, whether Open could take
// the name: free, or a leftover of meshd's own. A config check runs it
// before anything is created.
func CheckName(links Links, name string) error {
	if err := checkFree(name); err != nil {
		return err
	}
	link, err := lookup(links, name)
	if link == nil {
		return err
	}
	return ownLink(link)
}

// lookup returns the link called name, nil without an error when there
// is none.
func lookup(links Links, name string) (netlink.Link, error) {
	link, err := links.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up interface %s: %w", name, err)
	}
	return link, nil
}

// checkFree refuses to take over an interface whose UAPI socket a live
// process answers on: deleting it would cut that process's tunnels.
func checkFree(name string) error {
	c, err := net.Dial("unix", socketPath(name))
	if err != nil {
		return nil
	}
	c.Close()
	return fmt.Errorf("%s: %w (its UAPI socket %s answers); stop the other process or choose another wireguard.interface", name, ErrInUse, socketPath(name))
}

// ownLink proves a link is meshd's by the marker it sets on every link it
// creates; the kind alone (tun, wireguard) is what OpenVPN and wg-quick
// make too.
func ownLink(link netlink.Link) error {
	a := link.Attrs()
	if a.Alias == Marker {
		return nil
	}
	what := link.Type() + " link"
	if a.Alias != "" {
		what += fmt.Sprintf(" (alias %q)", a.Alias)
	}
	return fmt.Errorf("%s: %w: it is a %s that meshd did not create; choose another wireguard.interface, or delete it yourself if it is a leftover",
		a.Name, ErrForeign, what)
}

// removeStale deletes a link left by a crashed meshd so a restart comes up
// without manual steps; a link without meshd's marker belongs to someone
// else and is an error.
func removeStale(links Links, name string, log *slog.Logger) error {
	link, err := lookup(links, name)
	if link == nil {
		return err
	}
	if err := ownLink(link); err != nil {
		return err
	}
	log.Info("removing stale WireGuard interface from an earlier run", "interface", name, "type", link.Type())
	if err := links.LinkDel(link); err != nil {
		return fmt.Errorf("remove stale interface %s: %w", name, err)
	}
	os.Remove(socketPath(name))
	return nil
}

func linkUp(links Links, name string, mtu int) error {
	link, err := links.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find interface %s: %w", name, err)
	}
	if mtu > 0 {
		if err := links.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set MTU %d on %s: %w", mtu, name, err)
		}
	}
	// A TUN link gets an IPv6 link-local address when it comes up, and
	// with it router solicitations and MLD reports sent into the tunnel,
	// where the allow-list drops them as cross-segment traffic: noise in
	// the default-deny counters from an address nothing uses. Kernel
	// WireGuard links already come up without one. A kernel without
	// IPv6 has nothing to turn off.
	if err := links.LinkSetIP6AddrGenMode(link, nl.IN6_ADDR_GEN_MODE_NONE); err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
		return fmt.Errorf("turn off IPv6 address autoconfiguration on %s: %w", name, err)
	}
	if err := links.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// mark sets the marker right after creation, before anything else can
// fail, so a crash later still leaves a link the next start recognises.
func mark(links Links, name string) error {
	link, err := links.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find interface %s: %w", name, err)
	}
	if err := links.LinkSetAlias(link, Marker); err != nil {
		return fmt.Errorf("mark interface %s as meshd's: %w", name, err)
	}
	return nil
}

// present reports whether name is still the link meshd made.
func present(links Links, name string, index int) error {
	link, err := links.LinkByName(name)
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	if link.Attrs().Index != index {
		return fmt.Errorf("interface %s was replaced (index %d, meshd made %d)", name, link.Attrs().Index, index)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("interface %s is down", name)
	}
	return nil
}

func linkIndex(links Links, name string) (int, error) {
	link, err := links.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find interface %s: %w", name, err)
	}
	return link.Attrs().Index, nil
}

func socketPath(name string) string { return filepath.Join(SocketDir, name+".sock") }

// kernelDevice is a WireGuard link managed by the kernel module.
type kernelDevice struct {
	links Links
	name  string
	index int
}

func openKernel(opts Options) (Device, error) {
	link := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: opts.Name, MTU: opts.MTU}}
	if err := opts.Links.LinkAdd(link); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("create %s: %w", opts.Name, ErrKernelUnsupported)
		}
		return nil, fmt.Errorf("create kernel WireGuard interface %s: %w", opts.Name, err)
	}
	d := &kernelDevice{links: opts.Links, name: opts.Name}
	err := mark(opts.Links, opts.Name)
	if err == nil {
		d.index, err = linkIndex(opts.Links, opts.Name)
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *kernelDevice) Name() string   { return d.name }
func (d *kernelDevice) Kind() Mode     { return ModeKernel }
func (d *kernelDevice) Present() error { return present(d.links, d.name, d.index) }

// Close deletes the link only if it is still the one this device made.
func (d *kernelDevice) Close() error {
	link, err := d.links.LinkByName(d.name)
	if err != nil || (d.index != 0 && link.Attrs().Index != d.index) {
		return nil // already gone, or someone else's now
	}
	if err := d.links.LinkDel(link); err != nil {
		return fmt.Errorf("remove interface %s: %w", d.name, err)
	}
	return nil
}

// SetAddrs makes the link's addresses exactly addrs (host routes). On a
// cluster of several sites the interface holds the host's mesh address,
// which gossip and probes through the tunnel are addressed to and which
// the kernel then picks as source for the host's own traffic into the
// overlay.
func SetAddrs(links AddrLinks, name string, addrs []netip.Prefix) error {
	link, err := links.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find interface %s: %w", name, err)
	}
	have, err := links.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	want := map[netip.Prefix]bool{}
	for _, a := range addrs {
		want[a] = true
	}
	for _, h := range have {
		ip, _ := netip.AddrFromSlice(h.IP)
		ones, _ := h.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		if want[p] {
			delete(want, p)
			continue
		}
		if err := links.AddrDel(link, &h); err != nil {
			return fmt.Errorf("remove address %s from %s: %w", p, name, err)
		}
	}
	for p := range want {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := links.AddrReplace(link, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", p, name, err)
		}
	}
	return nil
}

// AddrLinks is what SetAddrs needs of a netlink handle.
type AddrLinks interface {
	LinkByName(name string) (netlink.Link, error)
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrReplace(link netlink.Link, addr *netlink.Addr) error
	AddrDel(link netlink.Link, addr *netlink.Addr) error
}
