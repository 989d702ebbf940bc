package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// Operations keys: where meshd writes CNI network configs, where
// containers' addresses are leased, where it serves Docker's network
// plugin API and Prometheus metrics. None changes the mesh itself, so all
// default to something harmless.
const (
	keyCNIConfDir         = "cni_conf_dir"
	keyCNIIPAMDir         = "cni_ipam_dir"
	keyDockerPluginSocket = "docker_plugin_socket"
	keyMetricsListen      = "metrics.listen"
	keyUntracked          = "policy.untracked_same_segment"
	sectionPolicy         = "policy"

	sectionMetrics    = "metrics"
	defaultCNIConfDir = "/etc/cni/net.d"
	// host-local's own default, so a conflist meshd wrote behaves as one
	// without dataDir would.
	defaultCNIIPAMDir = "/var/lib/cni/networks"
	// Docker finds a plugin named NAME at /run/docker/plugins/NAME.sock.
	defaultDockerPluginSocket = "/run/docker/plugins/meshd.sock"
)

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Listen is host:port for /metrics; "" disables the endpoint.
	Listen string
}

func (l *loader) ops(c *Config) *Error {
	var e *Error
	if c.CNIConfDir, e = l.cniConfDir(); e != nil {
		return e
	}
	if c.CNIIPAMDir, e = l.absPath(keyCNIIPAMDir); e != nil {
		return e
	}
	if c.DockerPluginSocket, e = l.dockerPluginSocket(); e != nil {
		return e
	}
	if c.Metrics.Listen, e = l.metricsListen(); e != nil {
		return e
	}
	c.UntrackedSameSegment, e = l.boolean(keyUntracked)
	return e
}

// dockerPluginSocket allows "" (no Docker driver). Docker takes the file
// name without ".sock" as the plugin's name: -d NAME, --ipam-driver NAME.
func (l *loader) dockerPluginSocket() (string, *Error) {
	s, e := l.str(keyDockerPluginSocket)
	if e != nil || s == "" {
		return "", e
	}
	if s, e = l.absPath(keyDockerPluginSocket); e != nil {
		return "", e
	}
	name := strings.TrimSuffix(filepath.Base(s), ".sock")
	if !strings.HasSuffix(s, ".sock") || name == "" || strings.ContainsAny(name, " \t") {
		return "", l.fail(keyDockerPluginSocket, fmt.Sprintf("%q does not end in NAME.sock", s),
			"Docker finds plugins as NAME.sock; use "+defaultDockerPluginSocket+", or \"\" to disable the Docker driver")
	}
	if len(s) > maxSocketPath {
		return "", l.fail(keyDockerPluginSocket, fmt.Sprintf("is %d bytes long; unix socket paths hold at most %d", len(s), maxSocketPath),
			"use a shorter path")
	}
	return s, nil
}

// cniConfDir allows "" (no CNI configs) but otherwise insists on an
// absolute path for the same reason as data_dir.
func (l *loader) cniConfDir() (string, *Error) {
	dir, e := l.str(keyCNIConfDir)
	if e != nil || dir == "" {
		return "", e
	}
	return l.absPath(keyCNIConfDir)
}

// metricsListen validates here what net.Listen would only reject at
// startup, after the tunnel exists. Hostnames are refused like everywhere
// else in the file: the address must not depend on a resolver at boot.
func (l *loader) metricsListen() (string, *Error) {
	s, e := l.str(keyMetricsListen)
	if e != nil || s == "" {
		return "", e
	}
	const fix = `use "ip:port" such as "127.0.0.1:9474" or "[::1]:9474", ":9474" for every address, or "" to disable`
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return "", l.fail(keyMetricsListen, fmt.Sprintf("%q is not host:port", s), fix)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return "", l.fail(keyMetricsListen, fmt.Sprintf("%q is not an IP address (hostnames are not accepted)", host), fix)
		}
	}
	// Port 0 would pick a random port no scraper could find.
	if port, err := strconv.Atoi(portStr); err != nil || port < 1 || port > 65535 {
		return "", l.fail(keyMetricsListen, fmt.Sprintf("%q is not a port between 1 and 65535", portStr), fix)
	}
	return s, nil
}
