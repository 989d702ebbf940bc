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

// SocketDir is where userspace WireGuard implementations serve UAPI. It is
// shared by every network namespace on a host, which is why hosts in
// namespaces need distinct interface names.
const SocketDir = "/var/run/wireguard"

// Device is a WireGuard interface that meshd created and will remove.
type Device interface {
	Name() string
	// Kind is "kernel" or "userspace": what was actually chosen.
	Kind() Mode
	// Close removes the interface. Safe to call twice.
	Close() error
}

// Options says how to create the device.
type Options struct {
	Name string
	Mode Mode
	MTU  int
	Log  *slog.Logger
}

// Open creates the interface, sets its MTU and brings it up. In auto mode
// a kernel without WireGuard falls back to the embedded implementation.
func Open(opts Options) (Device, error) {
	if err := checkFree(opts.Name); err != nil {
		return nil, err
	}
	if err := removeStale(opts.Name, opts.Log); err != nil {
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
	if err := linkUp(opts.Name, opts.MTU); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
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

// removeStale deletes a WireGuard or TUN link left by a crashed meshd so a
// restart comes up without manual steps; any other kind of link with the
// name belongs to someone else and is an error.
func removeStale(name string, log *slog.Logger) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("look up interface %s: %w", name, err)
	}
	switch link.Type() {
	case "wireguard", "tun", "tuntap":
		log.Info("removing stale WireGuard interface from an earlier run", "interface", name, "type", link.Type())
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("remove stale interface %s: %w", name, err)
		}
		os.Remove(socketPath(name))
		return nil
	}
	return fmt.Errorf("interface %s already exists and is a %s link, not meshd's; choose another wireguard.interface", name, link.Type())
}

func linkUp(name string, mtu int) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find interface %s: %w", name, err)
	}
	if mtu > 0 {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set MTU %d on %s: %w", mtu, name, err)
		}
	}
	// A TUN link gets an IPv6 link-local address when it comes up, and
	// with it router solicitations and MLD reports sent into the tunnel,
	// where the allow-list drops them as cross-segment traffic: noise in
	// the default-deny counters from an address nothing uses. Kernel
	// WireGuard links already come up without one. A kernel without
	// IPv6 has nothing to turn off.
	if err := netlink.LinkSetIP6AddrGenMode(link, nl.IN6_ADDR_GEN_MODE_NONE); err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
		return fmt.Errorf("turn off IPv6 address autoconfiguration on %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

func socketPath(name string) string { return filepath.Join(SocketDir, name+".sock") }

// kernelDevice is a WireGuard link managed by the kernel module.
type kernelDevice struct{ name string }

func openKernel(opts Options) (Device, error) {
	link := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: opts.Name, MTU: opts.MTU}}
	if err := netlink.LinkAdd(link); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("create %s: %w", opts.Name, ErrKernelUnsupported)
		}
		return nil, fmt.Errorf("create kernel WireGuard interface %s: %w", opts.Name, err)
	}
	return &kernelDevice{name: opts.Name}, nil
}

func (d *kernelDevice) Name() string { return d.name }
func (d *kernelDevice) Kind() Mode   { return ModeKernel }

func (d *kernelDevice) Close() error {
	link, err := netlink.LinkByName(d.name)
	if err != nil {
		return nil // already gone
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("remove interface %s: %w", d.name, err)
	}
	return nil
}
