package wgdev

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/internal/testenv"
)

// inFreshNetns runs the test body on a locked thread inside a new network
// namespace, so links it creates never touch the host.
func inFreshNetns(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		netns.Set(orig)
		ns.Close()
		orig.Close()
		runtime.UnlockOSThread()
	})
}

func TestUserspaceDeviceLifecycle(t *testing.T) {
	inFreshNetns(t)
	const name = "mdtest-us0"
	dev, err := Open(Options{Name: name, Mode: ModeUserspace, MTU: 1400, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if dev.Kind() != ModeUserspace {
		t.Fatalf("kind %q, want userspace", dev.Kind())
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("interface not created: %v", err)
	}
	if link.Attrs().MTU != 1400 || link.Attrs().Flags&(1<<0) == 0 {
		t.Fatalf("interface mtu %d flags %v; want mtu 1400 and up", link.Attrs().MTU, link.Attrs().Flags)
	}
	// No link-local address, so no router solicitations into the tunnel.
	if addrs, err := netlink.AddrList(link, netlink.FAMILY_V6); err != nil || len(addrs) != 0 {
		t.Fatalf("IPv6 addresses on the tunnel: %v (err %v), want none", addrs, err)
	}

	// wgctrl (what `wg show` uses) reaches the embedded device over UAPI.
	c, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	priv, _ := wgtypes.GeneratePrivateKey()
	if err := Configure(c, name, priv, 51999); err != nil {
		t.Fatal(err)
	}
	got, err := c.Device(name)
	if err != nil {
		t.Fatal(err)
	}
	if got.ListenPort != 51999 || got.PublicKey != priv.PublicKey() {
		t.Fatalf("device reports port %d key %v", got.ListenPort, got.PublicKey)
	}

	// A second daemon with the same interface name must not take over.
	if _, err := Open(Options{Name: name, Mode: ModeUserspace, Log: quietLog()}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}

	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := netlink.LinkByName(name); err == nil {
		t.Fatal("interface still exists after Close")
	}
	if _, err := os.Stat(socketPath(name)); !os.IsNotExist(err) {
		t.Fatalf("UAPI socket left behind: %v", err)
	}
}

func TestKernelModeNeedsKernelSupport(t *testing.T) {
	inFreshNetns(t)
	dev, err := Open(Options{Name: "mdtest-k0", Mode: ModeKernel, Log: quietLog()})
	if err == nil {
		defer dev.Close()
		if dev.Kind() != ModeKernel {
			t.Fatalf("kernel mode produced a %s device", dev.Kind())
		}
		return // this kernel has WireGuard: the kernel path works
	}
	if !errors.Is(err, ErrKernelUnsupported) {
		t.Fatalf("kernel mode without kernel WireGuard: %v, want ErrKernelUnsupported", err)
	}
	if _, lerr := netlink.LinkByName("mdtest-k0"); lerr == nil {
		t.Fatal("a failed kernel open left an interface behind")
	}
	// auto falls back to the embedded device on such a kernel.
	auto, err := Open(Options{Name: "mdtest-a0", Mode: ModeAuto, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer auto.Close()
	if auto.Kind() != ModeUserspace {
		t.Fatalf("auto chose %s on a kernel without WireGuard", auto.Kind())
	}
}

func TestForeignInterfaceIsNotDeleted(t *testing.T) {
	inFreshNetns(t)
	const name = "mdtest-d0"
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Options{Name: name, Mode: ModeUserspace, Log: quietLog()})
	if err == nil || !strings.Contains(err.Error(), "not meshd's") {
		t.Fatalf("open over a bridge link: %v, want a refusal", err)
	}
	if _, err := netlink.LinkByName(name); err != nil {
		t.Fatal("meshd deleted an interface it does not own")
	}
}
