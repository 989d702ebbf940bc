package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/meshd/meshd/internal/fileio"
	"io/fs"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// ip parses an address that must not carry a port; portKey names the key
// that does, because "192.0.2.1:7946" is the commonest mistake here.
func (l *loader) ip(key, portKey string) (netip.Addr, *Error) {
	s, e := l.str(key)
	if e != nil {
		return netip.Addr{}, e
	}
	a, err := netip.ParseAddr(s)
	if err == nil {
		return a, nil
	}
	if _, perr := netip.ParseAddrPort(s); perr == nil {
		return netip.Addr{}, l.fail(key, fmt.Sprintf("%q includes a port", s),
			fmt.Sprintf("drop the port and set %s instead", portKey))
	}
	return netip.Addr{}, l.fail(key, fmt.Sprintf("%q is not a valid IP address", s),
		"use an IPv4 or IPv6 address, e.g. 192.0.2.1 (hostnames are not resolved)")
}

// advertiseAddr falls back to bind_addr, unless that is a wildcard: peers
// cannot reach 0.0.0.0, so the zero Addr tells the daemon to auto-detect.
func (l *loader) advertiseAddr(bind netip.Addr) (netip.Addr, *Error) {
	s, e := l.str(keyAdvertiseAddr)
	if e != nil {
		return netip.Addr{}, e
	}
	if s == "" {
		if bind.IsUnspecified() {
			return netip.Addr{}, nil
		}
		return bind, nil
	}
	a, e := l.ip(keyAdvertiseAddr, keyBindPort)
	if e != nil {
		return netip.Addr{}, e
	}
	if e := l.reachable(keyAdvertiseAddr, a, "or leave it empty to auto-detect"); e != nil {
		return netip.Addr{}, e
	}
	return a, nil
}

// reachable rejects addresses that mean nothing to other hosts.
func (l *loader) reachable(key string, a netip.Addr, alternative string) *Error {
	if a.IsUnspecified() {
		return l.fail(key, fmt.Sprintf("%s is a wildcard address that peers cannot reach", a),
			"set the address peers should use, "+alternative)
	}
	if a.Zone() != "" {
		return l.fail(key, fmt.Sprintf("%s has a zone, which is meaningless on other hosts", a),
			"use a global address, "+alternative)
	}
	return nil
}

func (l *loader) join() ([]string, *Error) {
	return l.seeds(keyJoin, defaultSerfPort)
}

// seeds reads a list of host or host:port entries, defaulting the port.
func (l *loader) seeds(key string, defaultPort int) ([]string, *Error) {
	seeds, e := l.list(key)
	if e != nil {
		return nil, e
	}
	var out []string
	for i, s := range seeds {
		seed, problem := parseSeed(s, defaultPort)
		if problem != "" {
			return nil, l.fail(fmt.Sprintf("%s[%d]", key, i), problem,
				fmt.Sprintf(`write host or host:port, e.g. "192.0.2.2:%d" or "[2001:db8::2]:%d"`, defaultPort, defaultPort))
		}
		out = append(out, seed)
	}
	return out, nil
}

// parseSeed normalises a join entry to host:port, defaulting the port, and
// returns a problem description when it cannot.
func parseSeed(s string, defaultPort int) (string, string) {
	if s == "" {
		return "", "is empty"
	}
	// Bare addresses first: an unbracketed IPv6 address is full of colons
	// and would otherwise be mistaken for host:port.
	if a, ok := parseBareIP(s); ok {
		return net.JoinHostPort(a.String(), strconv.Itoa(defaultPort)), ""
	}
	host, port := s, strconv.Itoa(defaultPort)
	if strings.Contains(s, ":") {
		var err error
		if host, port, err = net.SplitHostPort(s); err != nil {
			return "", fmt.Sprintf("%q is not host:port", s)
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Sprintf("%q has an invalid port %q (must be 1..65535)", s, port)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return net.JoinHostPort(a.String(), port), ""
	}
	if !isHostname(host) {
		return "", fmt.Sprintf("%q is not a valid IP address or hostname", host)
	}
	return net.JoinHostPort(host, port), ""
}

// parseBareIP accepts "192.0.2.1", "2001:db8::1" and "[2001:db8::1]".
func parseBareIP(s string) (netip.Addr, bool) {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil
}

func isHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
	}
	return true
}

// endpoint is what peers dial. Hostnames are refused because every peer
// would resolve them independently, at config time only, and WireGuard has
// no way to follow a later DNS change.
func (l *loader) endpoint(listenPort int) (netip.AddrPort, *Error) {
	s, e := l.str(keyEndpoint)
	if e != nil || s == "" {
		return netip.AddrPort{}, e // "" leaves the choice to the daemon
	}
	const fix = "use an IP, ip:port or [ipv6]:port; hostnames are not resolved"
	ap, err := netip.ParseAddrPort(s)
	if a, ok := parseBareIP(s); ok {
		ap, err = netip.AddrPortFrom(a, uint16(listenPort)), nil
	}
	if err != nil {
		if looksLikeHostname(s) {
			return netip.AddrPort{}, l.fail(keyEndpoint, fmt.Sprintf("%q is a hostname", s), fix)
		}
		if host, port, err := net.SplitHostPort(s); err == nil {
			if _, ok := parseBareIP(host); ok {
				return netip.AddrPort{}, l.fail(keyEndpoint, fmt.Sprintf("%q has an invalid port %q", s, port),
					"use a port between 1 and 65535")
			}
		}
		return netip.AddrPort{}, l.fail(keyEndpoint, fmt.Sprintf("%q is not a valid IP address or ip:port", s), fix)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, l.fail(keyEndpoint, fmt.Sprintf("%q has port 0", s), "use a port between 1 and 65535")
	}
	if e := l.reachable(keyEndpoint, ap.Addr(), "or leave it empty to use advertise_addr:listen_port"); e != nil {
		return netip.AddrPort{}, e
	}
	return ap, nil
}

func looksLikeHostname(s string) bool {
	host := s
	if h, _, err := net.SplitHostPort(s); err == nil {
		host = h
	}
	_, isIP := parseBareIP(host)
	return !isIP && isHostname(host)
}

// readGossipKey loads the serf keyring key. It is required: an unencrypted
// gossip layer would let anyone on the underlay join the mesh.
func readGossipKey(path string) ([]byte, *Error) {
	const genFix = "generate one with 'meshd keygen gossip > FILE' and copy the same file to every host (mode 0600)"
	if path == "" {
		return nil, fail(keyGossipKeyFile, "is empty", "set it to the path of the shared gossip key; "+genFix)
	}
	data, err := fileio.ReadRegular(path, fileio.MaxKeySize)
	var fe *fileio.Error
	if errors.As(err, &fe) {
		e := fail(keyGossipKeyFile, path+" "+fe.Problem, "point it at the shared gossip key file; "+genFix)
		e.Err = err
		return nil, e
	}
	if err != nil {
		e := fail(keyGossipKeyFile, fmt.Sprintf("cannot read %s: %v", path, cause(err)),
			"point it at the shared gossip key file")
		switch {
		case errors.Is(err, fs.ErrNotExist):
			e.Problem = path + " does not exist"
			e.Fix = genFix
		case errors.Is(err, fs.ErrPermission):
			e.Fix = "run meshd as root or make the key readable by its user"
		}
		e.Err = err
		return nil, e
	}
	// Never echo the file's content: it is a secret.
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		e := fail(keyGossipKeyFile, path+" is not valid base64", genFix)
		e.Err = err
		return nil, e
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fail(keyGossipKeyFile, fmt.Sprintf("%s decodes to %d bytes, not 16, 24 or 32", path, len(key)), genFix)
}

// cause drops the *PathError wrapper, whose message repeats the path.
func cause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
