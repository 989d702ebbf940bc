package daemon

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/wgdev"
)

// hostView is a host with an underlay and a default route, as the checks
// before a start see it.
type hostView struct {
	addrs     []HostAddr
	routes    map[netip.Addr]HostRoute
	iface     error
	noForward bool
}

func (h hostView) Addrs() ([]HostAddr, error) { return h.addrs, nil }
func (h hostView) RouteTo(a netip.Addr) (HostRoute, error) {
	if r, ok := h.routes[a]; ok {
		return r, nil
	}
	return HostRoute{Gateway: netip.MustParseAddr("192.0.2.254"), Link: "eth0"}, nil // default route
}
func (h hostView) CheckInterface(string) error     { return h.iface }
func (h hostView) Forwarding() (bool, bool, error) { return !h.noForward, !h.noForward, nil }

func underlayHost() hostView {
	return hostView{addrs: []HostAddr{
		{Prefix: netip.MustParsePrefix("127.0.0.1/8"), Link: "lo"},
		{Prefix: netip.MustParsePrefix("192.0.2.1/24"), Link: "eth0"},
		// The pods' gateway in this host's own slice is meant to be there.
		{Prefix: netip.MustParsePrefix("10.42.1.1/24"), Link: "mbr-blue"},
	}, routes: map[netip.Addr]HostRoute{
		netip.MustParseAddr("198.51.100.7"): {Dst: netip.MustParsePrefix("198.51.100.0/24"), Gateway: netip.MustParseAddr("192.0.2.254"), Link: "eth0"},
	}}
}

func checkConfig(t *testing.T, extraTop, cidr string) *config.Config {
	return checkConfigSlice(t, extraTop, cidr, cidrSlice(cidr))
}

func checkConfigSlice(t *testing.T, extraTop, cidr, slice string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	text := `node_name = "h1"
data_dir = "` + filepath.Join(dir, "data") + `"
` + extraTop + `
[cluster]
bind_addr = "192.0.2.1"
join = ["198.51.100.7:7946"]
gossip_key_file = "` + gossipKeyFile(t) + `"

[[segments]]
name = "blue"
cidr = "` + cidr + `"
subnet = "` + slice + `"
`
	path := filepath.Join(dir, "meshd.toml")
	os.WriteFile(path, []byte(text), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// cidrSlice picks the first /24 (or /64) past the segment's start.
func cidrSlice(cidr string) string {
	p := netip.MustParsePrefix(cidr)
	b := p.Addr().AsSlice()
	if p.Addr().Is4() {
		b[2]++
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(b)), 24).String()
	}
	b[7]++
	return netip.PrefixFrom(netip.AddrFrom16([16]byte(b)), 64).String()
}

func TestCheckRefusesWhatWouldCutTheHostOff(t *testing.T) {
	for _, tc := range []struct {
		name, cidr, slice, key string
		want                   []string
	}{
		{"segment holding the underlay", "192.0.0.0/8", "192.7.0.0/24", "segments[0].cidr", []string{"192.0.2.0/24", "eth0", "own network"}},
		{"segment inside the underlay network", "192.0.2.128/25", "192.0.2.192/26", "segments[0].cidr", []string{"192.0.2.0/24"}},
		{"segment holding a seed's network", "198.51.0.0/16", "198.51.1.0/24", "segments[0].cidr", []string{"198.51.100.7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(checkConfigSlice(t, "", tc.cidr, tc.slice), underlayHost())
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Key != tc.key {
				t.Fatalf("Check = %v, want a config error on %s", err, tc.key)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
	t.Run("a good segment passes", func(t *testing.T) {
		if err := Check(checkConfig(t, "", "10.42.0.0/16"), underlayHost()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("gateway inside the segment", func(t *testing.T) {
		host := underlayHost()
		host.routes[netip.MustParseAddr("198.51.100.7")] = HostRoute{Gateway: netip.MustParseAddr("10.42.9.1"), Link: "eth1"}
		err := Check(checkConfig(t, "", "10.42.0.0/16"), host)
		if err == nil || !strings.Contains(err.Error(), "gateway") {
			t.Fatalf("Check = %v, want the gateway named", err)
		}
	})
}

func TestCheckBindAddrAndInterface(t *testing.T) {
	cfg := checkConfig(t, "", "10.42.0.0/16")
	host := underlayHost()
	host.addrs = host.addrs[:1] // 192.0.2.1 is gone
	if err := Check(cfg, host); err == nil || !strings.Contains(err.Error(), "cluster.bind_addr: 192.0.2.1 is not an address of this host") {
		t.Fatalf("Check = %v", err)
	}
	host = underlayHost()
	host.iface = wgdev.ErrForeign
	var ce *config.Error
	if err := Check(cfg, host); !errors.As(err, &ce) || ce.Key != "wireguard.interface" {
		t.Fatalf("Check with a foreign interface = %v, want a config error on wireguard.interface", err)
	}
}

func TestCheckDataDirAndKeyring(t *testing.T) {
	cfg := checkConfig(t, "", "10.42.0.0/16")
	if err := os.MkdirAll(filepath.Dir(cfg.DataDir), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cfg.DataDir, []byte("not a directory"), 0o600)
	if err := Check(cfg, underlayHost()); err == nil || !strings.Contains(err.Error(), "data_dir") || !strings.Contains(err.Error(), "is a file") {
		t.Fatalf("data_dir as a file: %v", err)
	}
	os.Remove(cfg.DataDir)
	os.MkdirAll(cfg.DataDir, 0o700)
	os.WriteFile(cfg.Cluster.GossipKeyring, []byte("{corrupt"), 0o600)
	var ce *config.Error
	if err := Check(cfg, underlayHost()); !errors.As(err, &ce) || ce.Key != "cluster.gossip_keyring" {
		t.Fatalf("corrupt keyring: %v", err)
	}
}

// A data_dir on a read-only file system is refused before anything is
// created. Root can write through mode bits, so the test mounts one.
func TestCheckReadOnlyDataDir(t *testing.T) {
	testenv.RequireRoot(t)
	cfg := checkConfig(t, "", "10.42.0.0/16")
	os.MkdirAll(cfg.DataDir, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", cfg.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	defer exec.Command("umount", cfg.DataDir).Run()
	if err := Check(cfg, underlayHost()); err == nil || !strings.Contains(err.Error(), "not writable") {
		t.Fatalf("read-only data_dir: %v", err)
	}
}

// gatewayConfig is a gateway of site a with a [wan] section (wan is its
// body) and one segment, its site's block and slice.
func gatewayConfig(t *testing.T, wan, cidr, block, slice string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	text := `node_name = "h1"
data_dir = "` + filepath.Join(dir, "data") + `"
control_socket = "` + filepath.Join(dir, "meshd.sock") + `"

[cluster]
bind_addr = "192.0.2.1"
join = ["198.51.100.7:7946"]
gossip_key_file = "` + gossipKeyFile(t) + `"

[site]
name = "a"
gateway = true

[wan]
` + wan + `

[[segments]]
name = "blue"
cidr = "` + cidr + `"
site_block = "` + block + `"
subnet = "` + slice + `"
`
	path := filepath.Join(dir, "meshd.toml")
	os.WriteFile(path, []byte(text), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A gateway's WAN addresses are underlay as much as the site pool's: a
// segment holding its public address, its WAN gossip address or a WAN
// seed would route them into the overlay, and is refused naming the key.
func TestCheckRefusesSegmentsHoldingWANAddresses(t *testing.T) {
	host := underlayHost()
	host.addrs = append(host.addrs, HostAddr{Prefix: netip.MustParsePrefix("10.77.0.1/16"), Link: "eth1"})
	for _, tc := range []struct {
		name, wan, cidr, block, slice, want string
	}{
		{"public address", `advertise_addr = "203.0.113.5"`, "203.0.0.0/16", "203.0.112.0/20", "203.0.113.0/24", "wan.advertise_addr"},
		{"WAN seed", `join = ["198.18.5.5:7947"]`, "198.18.0.0/16", "198.18.16.0/20", "198.18.17.0/24", "wan.join"},
		{"WAN gossip address", `bind_addr = "10.77.0.1"`, "10.77.0.0/16", "10.77.16.0/20", "10.77.17.0/24", "wan.bind_addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(gatewayConfig(t, tc.wan, tc.cidr, tc.block, tc.slice), host)
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Key != "segments[0].cidr" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v; want a config error on segments[0].cidr naming %s", err, tc.want)
			}
		})
	}
	t.Run("a segment clear of them passes", func(t *testing.T) {
		cfg := gatewayConfig(t, "bind_addr = \"10.77.0.1\"\nadvertise_addr = \"203.0.113.5\"\njoin = [\"198.18.5.5:7947\"]",
			"10.42.0.0/16", "10.42.16.0/20", "10.42.17.0/24")
		if err := Check(cfg, host); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a WAN bind address the host does not have", func(t *testing.T) {
		cfg := gatewayConfig(t, `bind_addr = "10.78.0.1"`, "10.42.0.0/16", "10.42.16.0/20", "10.42.17.0/24")
		var ce *config.Error
		if err := Check(cfg, host); !errors.As(err, &ce) || ce.Key != "wan.bind_addr" {
			t.Fatalf("Check = %v; want a config error on wan.bind_addr", err)
		}
	})
}

// Something other than a socket at control_socket stops the start before
// anything is created, and stays where it is.
func TestCheckRefusesAFileAtControlSocket(t *testing.T) {
	cfg := checkConfig(t, "", "10.42.0.0/16")
	cfg.ControlSocket = filepath.Join(t.TempDir(), "meshd.sock")
	if err := os.WriteFile(cfg.ControlSocket, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	var ce *config.Error
	if err := Check(cfg, underlayHost()); !errors.As(err, &ce) || ce.Key != "control_socket" {
		t.Fatalf("Check = %v; want a config error on control_socket", err)
	}
	if b, err := os.ReadFile(cfg.ControlSocket); err != nil || string(b) != "precious" {
		t.Fatalf("the file at control_socket: %q, %v", b, err)
	}
}
