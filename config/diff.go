package config

import "reflect"

// Diff names the keys whose values differ between two configurations, in
// the file's order: "wireguard.listen_port", "segments[1].cidr",
// "segments" when segments were added or removed. A key that names a
// file counts as changed when the file's content did (the gossip key,
// the CA, the certificate and its key), since that is what meshd uses.
// A reload tells the operator which of them wait for a restart.
func Diff(a, b *Config) []string {
	var out []string
	for _, f := range fields {
		if !reflect.DeepEqual(f.get(a), f.get(b)) {
			out = append(out, f.key)
		}
		if f.key != keySegments {
			continue
		}
		if len(a.Segments) != len(b.Segments) {
			out = append(out, keySegments)
		}
		for i := range min(len(a.Segments), len(b.Segments)) {
			for _, sf := range segmentFields {
				if sf.get(a.Segments[i]) != sf.get(b.Segments[i]) {
					out = append(out, segKey(i, sf.key))
				}
			}
		}
	}
	return out
}

// fields reads each key's value out of a Config. A test changes every
// field of Config in turn and expects Diff to notice, so a new field
// cannot be forgotten here.
var fields = []struct {
	key string
	get func(*Config) any
}{
	{keyNodeName, func(c *Config) any { return c.NodeName }},
	{keyDataDir, func(c *Config) any { return c.DataDir }},
	{keyControlSocket, func(c *Config) any { return c.ControlSocket }},
	{keyLogLevel, func(c *Config) any { return c.LogLevel }},
	{keyLogFormat, func(c *Config) any { return c.LogFormat }},
	{keyCNIConfDir, func(c *Config) any { return c.CNIConfDir }},
	{keyCNIIPAMDir, func(c *Config) any { return c.CNIIPAMDir }},
	{keyDockerPluginSocket, func(c *Config) any { return c.DockerPluginSocket }},

	{keyBindAddr, func(c *Config) any { return c.Cluster.BindAddr }},
	{keyBindPort, func(c *Config) any { return c.Cluster.BindPort }},
	{keyAdvertiseAddr, func(c *Config) any { return c.Cluster.AdvertiseAddr }},
	{keyJoin, func(c *Config) any { return c.Cluster.Join }},
	{keyGossipKeyFile, func(c *Config) any { return []any{c.Cluster.GossipKeyFile, c.Cluster.GossipKey} }},
	{keyProfile, func(c *Config) any { return c.Cluster.Profile }},
	{keyProbeInterval, func(c *Config) any { return c.Cluster.ProbeInterval }},
	{keyGossipKeyring, func(c *Config) any { return c.Cluster.GossipKeyring }},

	{keyInterface, func(c *Config) any { return c.WireGuard.Interface }},
	{keyListenPort, func(c *Config) any { return c.WireGuard.ListenPort }},
	{keyMode, func(c *Config) any { return c.WireGuard.Mode }},
	{keyMTU, func(c *Config) any { return c.WireGuard.MTU }},
	{keyEndpoint, func(c *Config) any { return c.WireGuard.Endpoint }},
	{keyKeepalive, func(c *Config) any { return c.WireGuard.PersistentKeepalive }},

	{keySiteName, func(c *Config) any { return c.Site.Name }},
	{keySiteGateway, func(c *Config) any { return c.Site.Gateway }},
	{keyWANBindAddr, func(c *Config) any { return c.WAN.BindAddr }},
	{keyWANBindPort, func(c *Config) any { return c.WAN.BindPort }},
	{keyWANAdvertise, func(c *Config) any { return c.WAN.AdvertiseAddr }},
	{keyWANJoin, func(c *Config) any { return c.WAN.Join }},

	{keyTableBase, func(c *Config) any { return c.Routing.TableBase }},
	{keyRulePriority, func(c *Config) any { return c.Routing.RulePriority }},

	// The segments' own keys are compared one by one in Diff.
	{keySegments, func(c *Config) any { return nil }},
	{keyAllow, func(c *Config) any { return c.Allow }},

	{keyMetricsListen, func(c *Config) any { return c.Metrics.Listen }},
	{keyUntracked, func(c *Config) any { return c.UntrackedSameSegment }},

	{keyCAFile, func(c *Config) any { return []any{c.Identity.CAFile, c.Identity.CA} }},
	{keyCertFile, func(c *Config) any { return []any{c.Identity.CertFile, certBytes(c)} }},
	{keyKeyFile, func(c *Config) any { return []any{c.Identity.KeyFile, c.Identity.Key} }},
	{keyIdentityMode, func(c *Config) any { return c.Identity.Mode }},
}

func certBytes(c *Config) []byte {
	if c.Identity.Cert == nil {
		return nil
	}
	return c.Identity.Cert.Marshal()
}

var segmentFields = []struct {
	key string
	get func(Segment) any
}{
	{segKeyName, func(s Segment) any { return s.Name }},
	{segKeyCIDR, func(s Segment) any { return s.CIDR }},
	{segKeySubnet, func(s Segment) any { return s.Subnet }},
	{segKeyHostPrefix, func(s Segment) any { return s.HostPrefix }},
	{segKeySiteBlock, func(s Segment) any { return s.SiteBlock }},
}
