package config

import (
	"fmt"
	"github.com/meshd/meshd/identity"
	"os"
	"path/filepath"
	"strings"
)

// maxSocketPath is sizeof(sun_path) minus the terminating NUL; a longer
// control_socket would only fail much later, at bind time.
const maxSocketPath = 107

func (l *loader) top(c *Config) *Error {
	var e *Error
	if c.NodeName, e = l.nodeName(); e != nil {
		return e
	}
	if c.DataDir, e = l.absPath(keyDataDir); e != nil {
		return e
	}
	if c.ControlSocket, e = l.absPath(keyControlSocket); e != nil {
		return e
	}
	if len(c.ControlSocket) > maxSocketPath {
		return l.fail(keyControlSocket,
			fmt.Sprintf("%q is %d bytes long, over the %d-byte limit for unix socket paths", c.ControlSocket, len(c.ControlSocket), maxSocketPath),
			"use a shorter path such as /run/meshd/meshd.sock")
	}
	if c.LogLevel, e = l.oneOf(keyLogLevel, "debug", "info", "warn", "error"); e != nil {
		return e
	}
	c.LogFormat, e = l.oneOf(keyLogFormat, "text", "json")
	return e
}

func (l *loader) nodeName() (string, *Error) {
	name, e := l.str(keyNodeName)
	if e != nil {
		return "", e
	}
	if name == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			e := l.fail(keyNodeName, fmt.Sprintf("is not set and the hostname is unavailable (%v)", err),
				`set node_name, e.g. node_name = "h1"`)
			e.Err = err
			return "", e
		}
		name = host
	}
	// Serf caps node names at 128 bytes; whitespace and control characters
	// would break log lines and the control socket's output.
	if len(name) > 128 {
		return "", l.fail(keyNodeName, fmt.Sprintf("%q is %d bytes long", name, len(name)), "use at most 128 bytes")
	}
	if i := strings.IndexFunc(name, identity.BadNameRune); i >= 0 {
		return "", l.fail(keyNodeName, fmt.Sprintf("%q contains whitespace, a control character or an invisible formatting character (%U)", name, []rune(name[i:])[0]),
			"use a name of visible characters without spaces, e.g. the short hostname")
	}
	return name, nil
}

// absPath insists on absolute paths: the daemon runs with an unpredictable
// working directory (/ under systemd), so a relative path is a latent bug.
func (l *loader) absPath(key string) (string, *Error) {
	p, e := l.str(key)
	if e != nil {
		return "", e
	}
	if !filepath.IsAbs(p) {
		return "", l.fail(key, fmt.Sprintf("%q is not an absolute path", p),
			fmt.Sprintf("use an absolute path such as %s", defaultFor(key)))
	}
	return filepath.Clean(p), nil
}

func (l *loader) oneOf(key string, allowed ...string) (string, *Error) {
	s, e := l.str(key)
	if e != nil {
		return "", e
	}
	for _, a := range allowed {
		if s == a {
			return s, nil
		}
	}
	return "", l.fail(key, fmt.Sprintf("%q is not a valid value", s), "use one of: "+strings.Join(allowed, ", "))
}

func (l *loader) intIn(key string, lo, hi int64, fix string) (int, *Error) {
	n, e := l.integer(key)
	if e != nil {
		return 0, e
	}
	if n < lo || n > hi {
		return 0, l.fail(key, fmt.Sprintf("%d is out of range", n), fix)
	}
	return int(n), nil
}

func (l *loader) port(key string) (int, *Error) {
	return l.intIn(key, 1, 65535, "use a port between 1 and 65535")
}

func (l *loader) cluster(c *Config) *Error {
	cl := &c.Cluster
	var e *Error
	if cl.BindAddr, e = l.ip(keyBindAddr, keyBindPort); e != nil {
		return e
	}
	if cl.BindPort, e = l.port(keyBindPort); e != nil {
		return e
	}
	if cl.AdvertiseAddr, e = l.advertiseAddr(cl.BindAddr); e != nil {
		return e
	}
	if cl.Join, e = l.join(); e != nil {
		return e
	}
	if e = l.failureDetection(cl); e != nil {
		return e
	}
	if cl.GossipKeyFile, e = l.str(keyGossipKeyFile); e != nil {
		return e
	}
	cl.GossipKey, e = readGossipKey(cl.GossipKeyFile)
	return e
}

func (l *loader) wireguard(c *Config) *Error {
	wg := &c.WireGuard
	var e *Error
	if wg.Interface, e = l.ifname(keyInterface); e != nil {
		return e
	}
	if wg.ListenPort, e = l.port(keyListenPort); e != nil {
		return e
	}
	// Serf gossips over UDP on bind_port and WireGuard listens on UDP
	// listen_port on every address: the same number cannot serve both.
	if wg.ListenPort == c.Cluster.BindPort {
		return l.fail(keyListenPort, fmt.Sprintf("%d is also cluster.bind_port; gossip and WireGuard both need that UDP port", wg.ListenPort),
			fmt.Sprintf("use another port, e.g. the default %v", defaultFor(keyListenPort)))
	}
	mode, e := l.oneOf(keyMode, string(ModeAuto), string(ModeKernel), string(ModeUserspace))
	if e != nil {
		return e
	}
	wg.Mode = Mode(mode)
	if wg.MTU, e = l.mtu(); e != nil {
		return e
	}
	if wg.Endpoint, e = l.endpoint(wg.ListenPort); e != nil {
		return e
	}
	wg.PersistentKeepalive, e = l.keepalive()
	return e
}

func (l *loader) mtu() (int, *Error) {
	const fix = "use 0 to derive it from the underlay, or a value between 1280 and 65535"
	n, e := l.intIn(keyMTU, 0, 65535, fix)
	if e != nil {
		return 0, e
	}
	// 1280 is the IPv6 minimum; anything smaller breaks IPv6 segments and
	// is almost always a miscalculated underlay overhead.
	if n != 0 && n < 1280 {
		return 0, l.fail(keyMTU, fmt.Sprintf("%d is out of range", n), fix)
	}
	return n, nil
}

// ifname mirrors the kernel's dev_valid_name so a bad name is caught here
// rather than as an opaque EINVAL from netlink.
func (l *loader) ifname(key string) (string, *Error) {
	name, e := l.str(key)
	if e != nil {
		return "", e
	}
	const fix = `use 1 to 15 bytes without '/', ':' or whitespace, e.g. "mesh0"`
	if len(name) == 0 || len(name) > 15 {
		return "", l.fail(key, fmt.Sprintf("%q is %d bytes long", name, len(name)), fix)
	}
	if name == "." || name == ".." {
		return "", l.fail(key, fmt.Sprintf("%q is not a valid interface name", name), fix)
	}
	for i := 0; i < len(name); i++ {
		if b := name[i]; b == '/' || b == ':' || b == 0 || isKernelSpace(b) {
			return "", l.fail(key, fmt.Sprintf("%q contains the forbidden character %q", name, b), fix)
		}
	}
	return name, nil
}

// isKernelSpace matches the kernel's isspace(), which also treats Latin-1
// NBSP (0xa0) as space.
func isKernelSpace(b byte) bool {
	switch b {
	case ' ', '\t', '\n', '\v', '\f', '\r', 0xa0:
		return true
	}
	return false
}

func (l *loader) routing(c *Config) *Error {
	var e *Error
	if c.Routing.TableBase, e = l.tableBase(len(c.Segments)); e != nil {
		return e
	}
	// meshd's second rule sits at priority+1 and must still come before
	// the main table's rule at 32766, or host traffic to a segment would
	// follow the default route out of the underlay unencrypted.
	c.Routing.RulePriority, e = l.intIn(keyRulePriority, 1, 32764,
		"use a priority between 1 and 32764 (meshd also uses priority+1, which must stay below the main table's 32766)")
	return e
}

// tableBase checks the whole block of tables the segments will occupy, not
// just the base: reusing main (254) or local (255) would hijack host routing.
func (l *loader) tableBase(segments int) (int, *Error) {
	const fix = "use a table_base of 256 or more, e.g. 51800"
	const maxTable = 1<<31 - 1
	base, e := l.integer(keyTableBase)
	if e != nil {
		return 0, e
	}
	if base < 1 || base > maxTable {
		return 0, l.fail(keyTableBase, fmt.Sprintf("%d is out of range", base), fix)
	}
	last := base + int64(segments) - 1
	span := fmt.Sprintf("tables %d..%d (one per segment)", base, last)
	if last > maxTable {
		return 0, l.fail(keyTableBase, span+fmt.Sprintf(" run past the largest table, %d", int64(maxTable)),
			"use a smaller table_base, e.g. 51800")
	}
	if base <= 255 && last >= 253 {
		return 0, l.fail(keyTableBase, span+" include the kernel's reserved tables 253..255 (default, main, local)", fix)
	}
	return int(base), nil
}
