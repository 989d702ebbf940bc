package config

import (
	"fmt"
	"time"
)

// Failure-detection keys: serf's timers decide how fast a dead host is
// dropped, and faster means more false alarms on a lossy or loaded
// network, so the trade is the operator's.
const (
	keyProfile       = "cluster.profile"
	keyProbeInterval = "cluster.probe_interval"
)

// Profile names one of memberlist's timer sets.
type Profile string

const (
	// ProfileLAN is memberlist's LAN defaults: probe every second, a
	// silent host is dropped after roughly 5-10 s.
	ProfileLAN Profile = "lan"
	// ProfileWAN tolerates high latency and loss: probe every 5 s,
	// dropped after 30 s or more.
	ProfileWAN Profile = "wan"
	// ProfileLocal is memberlist's loopback/same-rack set: faster gossip
	// and shorter suspicion, for hosts on one switch.
	ProfileLocal Profile = "local"
)

// probeIntervalRange bounds probe_interval: below 100 ms the probes
// themselves load a large cluster, above a minute a dead host lingers for
// many minutes.
var probeIntervalRange = [2]time.Duration{100 * time.Millisecond, time.Minute}

func (l *loader) failureDetection(cl *Cluster) *Error {
	p, e := l.oneOf(keyProfile, string(ProfileLAN), string(ProfileWAN), string(ProfileLocal))
	if e != nil {
		return e
	}
	cl.Profile = Profile(p)
	s, e := l.str(keyProbeInterval)
	if e != nil || s == "" {
		return e
	}
	const fix = `use a duration between 100ms and 1m such as "500ms" or "2s", or "" for the profile's own`
	d, err := time.ParseDuration(s)
	if err != nil {
		return l.fail(keyProbeInterval, fmt.Sprintf("%q is not a duration", s), fix)
	}
	if d < probeIntervalRange[0] || d > probeIntervalRange[1] {
		return l.fail(keyProbeInterval, fmt.Sprintf("%s is out of range", d), fix)
	}
	cl.ProbeInterval = d
	return nil
}
