package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// Operations keys: where meshd writes CNI network configs and where it
// serves Prometheus metrics. Neither changes the data plane, so both
// default to something harmless.
const (
	keyCNIConfDir    = "cni_conf_dir"
	keyMetricsListen = "metrics.listen"

	sectionMetrics    = "metrics"
	defaultCNIConfDir = "/etc/cni/net.d"
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
	c.Metrics.Listen, e = l.metricsListen()
	return e
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
