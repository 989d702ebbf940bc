package config

import (
	"net/netip"
	"strings"
	"testing"
)

const gatewayTOML = `
node_name = "g1"

[cluster]
bind_addr = "172.16.1.2"
gossip_key_file = "KEYFILE"

[site]
name = "eu-1"
gateway = true

[wan]
bind_port = 7947
advertise_addr = "203.0.113.1"
join = ["198.51.100.7", "198.51.100.8:7999"]

[wireguard]
persistent_keepalive = "25s"

[[segments]]
name = "blue"
cidr = "10.42.0.0/16"
site_block = "10.42.16.0/20"
subnet = "10.42.17.0/24"
`

func TestGatewayConfig(t *testing.T) {
	isolate(t)
	cfg, err := Load(writeConfig(t, gatewayTOML))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Site != (Site{Name: "eu-1", Gateway: true}) || !cfg.Site.Multi() {
		t.Errorf("site %+v", cfg.Site)
	}
	want := WAN{BindAddr: netip.MustParseAddr("0.0.0.0"), BindPort: 7947, AdvertiseAddr: netip.MustParseAddr("203.0.113.1"),
		Join: []string{"198.51.100.7:7947", "198.51.100.8:7999"}}
	if cfg.WAN.BindAddr != want.BindAddr || cfg.WAN.BindPort != want.BindPort || cfg.WAN.AdvertiseAddr != want.AdvertiseAddr ||
		strings.Join(cfg.WAN.Join, ",") != strings.Join(want.Join, ",") {
		t.Errorf("wan %+v, want %+v", cfg.WAN, want)
	}
	if cfg.WireGuard.PersistentKeepalive != 25 {
		t.Errorf("keepalive %d, want 25", cfg.WireGuard.PersistentKeepalive)
	}
	if cfg.Segments[0].SiteBlock != netip.MustParsePrefix("10.42.16.0/20") {
		t.Errorf("site block %v", cfg.Segments[0].SiteBlock)
	}
	// Behind NAT: no advertise_addr.
	cfg, err = Load(writeConfig(t, strings.Replace(gatewayTOML, `advertise_addr = "203.0.113.1"`, "", 1)))
	if err != nil || cfg.WAN.AdvertiseAddr.IsValid() {
		t.Fatalf("NATed gateway: %v, advertise %v", err, cfg.WAN.AdvertiseAddr)
	}
}

func TestSiteConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		old, new  string
		key, want string
	}{
		{"block missing on several sites", `site_block = "10.42.16.0/20"`, ``, "segments[0].site_block", "several sites"},
		{"slice outside the block", `subnet = "10.42.17.0/24"`, `subnet = "10.42.1.0/24"`, "segments[0].subnet", "outside this site's block"},
		{"block outside the segment", `site_block = "10.42.16.0/20"`, `site_block = "10.43.16.0/20"`, "segments[0].site_block", "not a proper part"},
		{"block is the whole segment", `site_block = "10.42.16.0/20"`, `site_block = "10.42.0.0/16"`, "segments[0].site_block", "not a proper part"},
		{"bad site name", `name = "eu-1"`, `name = "EU 1"`, "site.name", "not a valid site name"},
		{"gateway not a bool", `gateway = true`, `gateway = "maybe"`, "site.gateway", "true or false"},
		{"wan on a plain host", `gateway = true`, `gateway = false`, "wan.advertise_addr", "only a gateway"},
		{"wan port is the gossip port", `bind_port = 7947`, `bind_port = 7946`, "wan.bind_port", "cluster.bind_port"},
		{"wan port is WireGuard's", `bind_port = 7947`, `bind_port = 51820`, "wan.bind_port", "listen_port"},
		{"wan advertise is a wildcard", `advertise_addr = "203.0.113.1"`, `advertise_addr = "0.0.0.0"`, "wan.advertise_addr", "wildcard"},
		{"wan join is junk", `"198.51.100.7"`, `"198.51.100.7:0"`, "wan.join[0]", "invalid port"},
		{"keepalive not a duration", `persistent_keepalive = "25s"`, `persistent_keepalive = "often"`, "wireguard.persistent_keepalive", "not a duration"},
		{"keepalive fraction", `persistent_keepalive = "25s"`, `persistent_keepalive = "1.5s"`, "wireguard.persistent_keepalive", "whole number of seconds"},
		{"keepalive too long", `persistent_keepalive = "25s"`, `persistent_keepalive = "24h"`, "wireguard.persistent_keepalive", "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			_, err := Load(writeConfig(t, strings.Replace(gatewayTOML, tc.old, tc.new, 1)))
			e, ok := err.(*Error)
			if !ok || e.Key != tc.key || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error on %s mentioning %q", err, tc.key, tc.want)
			}
		})
	}
}

// One site needs none of it: the single-site config is as it was.
func TestSingleSiteNeedsNoSiteKeys(t *testing.T) {
	isolate(t)
	t.Setenv("MESHD_CLUSTER_GOSSIP_KEY_FILE", writeKey(t, 16))
	cfg, err := Load(writeFile(t, "meshd.toml", minimalTOML))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Site.Multi() || cfg.Site.Name != "default" || cfg.WAN.BindPort != 0 {
		t.Errorf("site %+v wan %+v", cfg.Site, cfg.WAN)
	}
}
