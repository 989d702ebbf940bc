package wgdev

import (
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
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

// OpenVPN's tun0 or wg-quick's wg0 have the kinds meshd creates; only the
// marker tells meshd's leftovers apart, so anything without it is kept.
func TestUnmarkedTunIsNotDeleted(t *testing.T) {
	inFreshNetns(t)
	const name = "mdtest-t0"
	addTun(t, name)
	_, err := Open(Options{Name: name, Mode: ModeUserspace, Log: quietLog()})
	if !errors.Is(err, ErrForeign) || !strings.Contains(err.Error(), "wireguard.interface") {
		t.Fatalf("open over a foreign tun: %v, want ErrForeign naming the key", err)
	}
	if err := CheckName(mustHandle(t), name); !errors.Is(err, ErrForeign) {
		t.Fatalf("CheckName: %v, want ErrForeign", err)
	}
	if _, err := netlink.LinkByName(name); err != nil {
		t.Fatal("meshd deleted a tun it does not own")
	}
}

// A crash leaves a marked link behind; the next start removes it.
func TestMarkedLeftoverIsReplaced(t *testing.T) {
	inFreshNetns(t)
	const name = "mdtest-l0"
	if err := netlink.LinkSetAlias(addTun(t, name), Marker); err != nil {
		t.Fatal(err)
	}
	if err := CheckName(mustHandle(t), name); err != nil {
		t.Fatalf("CheckName on meshd's own leftover: %v", err)
	}
	dev, err := Open(Options{Name: name, Mode: ModeUserspace, Log: quietLog()})
	if err != nil {
		t.Fatalf("open over meshd's own leftover: %v", err)
	}
	defer dev.Close()
	if err := dev.Present(); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkDel(mustLink(t, name)); err != nil {
		t.Fatal(err)
	}
	if err := dev.Present(); err == nil {
		t.Fatal("Present after someone deleted the link: nil, want an error")
	}
}

// Someone deleting the UAPI socket file must not cut off `wg` for good.
func TestUAPISocketIsRestored(t *testing.T) {
	inFreshNetns(t)
	const name = "mdtest-s0"
	repaired := make(chan string, 4)
	dev, err := Open(Options{Name: name, Mode: ModeUserspace, Log: quietLog(), OnRepair: func(what string) { repaired <- what }})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if err := os.Remove(socketPath(name)); err != nil {
		t.Fatal(err)
	}
	select {
	case what := <-repaired:
		if what != "uapi-socket" {
			t.Fatalf("repaired %q", what)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("socket not restored within 5 s")
	}
	c, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Device(name); err != nil {
		t.Fatalf("wgctrl after the restore: %v", err)
	}
}

// Running out of descriptors makes accept fail; once they are back the
// device must answer again.
func TestUAPISurvivesAcceptErrors(t *testing.T) {
	inFreshNetns(t)
	const name = "mdtest-f0"
	dev, err := Open(Options{Name: name, Mode: ModeUserspace, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// Use up every descriptor, then queue a connection the server cannot
	// accept.
	var hog []*os.File
	for {
		f, err := os.Open("/dev/null")
		if err != nil {
			break
		}
		hog = append(hog, f)
		if len(hog) > 1<<20 {
			t.Fatal("no descriptor limit")
		}
	}
	// Free one so the client side can connect; the server's accept then
	// needs another and fails.
	hog[len(hog)-1].Close()
	hog = hog[:len(hog)-1]
	conn, derr := net.Dial("unix", socketPath(name))
	time.Sleep(100 * time.Millisecond)
	for _, f := range hog {
		f.Close()
	}
	if derr == nil {
		conn.Close()
	}
	ctl, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	// Bounded: a device that stopped serving would otherwise hang the
	// test instead of failing it.
	c := Bounded(ctl, time.Second, 8)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Device(name)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("device does not answer after descriptors came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mustHandle(t *testing.T) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// addTun makes a persistent TUN link as OpenVPN or a crashed meshd leaves
// one.
func addTun(t *testing.T, name string) netlink.Link {
	t.Helper()
	tun := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TUN, Flags: netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_NO_PI}
	if err := netlink.LinkAdd(tun); err != nil {
		t.Fatal(err)
	}
	return mustLink(t, name)
}

// A UAPI client that stopped talking, even halfway through a set that
// holds the device's configuration lock, must not hold up Close for its
// connection deadline: shutdown has a budget of a few seconds in all.
func TestCloseEndsStuckUAPIClients(t *testing.T) {
	inFreshNetns(t)
	const name = "mdtest-stuck0"
	dev, err := Open(Options{Name: name, Mode: ModeUserspace, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	silent, err := net.Dial("unix", socketPath(name))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	midSet, err := net.Dial("unix", socketPath(name))
	if err != nil {
		t.Fatal(err)
	}
	defer midSet.Close()
	if _, err := midSet.Write([]byte("set=1\nlisten_port=51999\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // both are being served
	began := time.Now()
	dev.Close()
	if took := time.Since(began); took > time.Second {
		t.Fatalf("Close took %s with stuck UAPI clients, want under 1 s", took)
	}
	for _, c := range []net.Conn{silent, midSet} {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 64)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("a stuck client's connection is still open after Close: %v", err)
		}
	}
}

// The socket file is this device's only while it is the very file it
// listens on: one put at the path by someone else is replaced when
// nothing answers on it, and left alone (also by Close) when something
// does.
func TestUAPISocketIdentity(t *testing.T) {
	inFreshNetns(t)
	const name = "mdtest-ident0"
	repaired := make(chan string, 4)
	dev, err := Open(Options{Name: name, Mode: ModeUserspace, Log: quietLog(), OnRepair: func(what string) { repaired <- what }})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	path := socketPath(name)

	// A dead socket of the same name: `wg` would reach nothing.
	os.Remove(path)
	dead, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	dead.(*net.UnixListener).SetUnlinkOnClose(false)
	dead.Close()
	select {
	case <-repaired:
	case <-time.After(5 * time.Second):
		t.Fatal("a foreign dead socket at the UAPI path was taken for the device's")
	}
	ctl, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if _, err := ctl.Device(name); err != nil {
		t.Fatalf("wgctrl after the restore: %v", err)
	}

	// A live one belongs to whoever serves it.
	os.Remove(path)
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	time.Sleep(2 * socketCheck)
	dev.Close()
	if c, err := net.Dial("unix", path); err != nil {
		t.Fatalf("Close removed a socket another process serves: %v", err)
	} else {
		c.Close()
	}
}
