package daemon

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/routes"
)

// Whatever meshd owns and someone else removes comes back by itself,
// within the 2 s the daemon promises, and is counted.
func TestRepairsWhatOthersRemove(t *testing.T) {
	c := newCluster3(t)
	h1, h2 := c.hosts[0], c.hosts[1]
	r1 := startDaemon(t, h1, c.config(1, ""), Options{})
	startDaemon(t, h2, c.config(2, ""), Options{})
	eventually(t, 15*time.Second, "meshed", func() error { return errors.Join(meshed(h1, h2), meshed(h2, h1)) })

	repaired := func(what string, before int) func() error {
		return func() error {
			if n := r1.d.Status().Repairs[what]; n <= before {
				return fmt.Errorf("repairs[%s] = %d, want more than %d", what, n, before)
			}
			if miss := r1.d.Status().Missing; len(miss) > 0 {
				return fmt.Errorf("still missing: %v", miss)
			}
			return meshed(h1, h2)
		}
	}
	const promise = 2 * time.Second

	t.Run("nftables table", func(t *testing.T) {
		before := r1.d.Status().Repairs["nftables"]
		h1.nft.DropTable(policy.TableName)
		took := eventually(t, promise, "table restored", func() error {
			if !h1.nft.HasTable(policy.TableName) {
				return errors.New("no table")
			}
			return repaired("nftables", before)()
		})
		t.Logf("restored in %s", took.Round(time.Millisecond))
	})

	t.Run("interface", func(t *testing.T) {
		before := r1.d.Status().Repairs["interface"]
		h1.deleteLink("mesh0")
		took := eventually(t, promise, "interface, peers and routes restored", repaired("interface", before))
		t.Logf("restored in %s", took.Round(time.Millisecond))
	})

	t.Run("route", func(t *testing.T) {
		before := r1.d.Status().Repairs["routes"]
		// As `ip route del table 51800 10.42.2.0/24` does.
		if err := h1.nl.RouteDel(&netlink.Route{Table: 51800, Dst: ipNet("10.42.2.0/24"), Protocol: routes.Protocol}); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, promise, "route restored", repaired("routes", before))
		t.Logf("restored in %s", took.Round(time.Millisecond))
	})

	t.Run("rule", func(t *testing.T) {
		before := r1.d.Status().Repairs["routes"]
		rule := netlink.NewRule()
		rule.Priority, rule.Table, rule.Src = 31000, 51800, ipNet("10.42.0.0/16")
		if err := h1.nl.RuleDel(rule); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, promise, "rule restored", func() error {
			if !strings.Contains(strings.Join(h1.nl.Rules(), "\n"), "from 10.42.0.0/16") {
				return errors.New("rule still missing")
			}
			return repaired("routes", before)()
		})
		t.Logf("restored in %s", took.Round(time.Millisecond))
	})

	t.Run("key and port", func(t *testing.T) {
		before := r1.d.Status().Repairs["interface-config"]
		other, _ := wgtypes.GeneratePrivateKey()
		port := 1
		// As `wg set mesh0 private-key … listen-port 1` does.
		if err := h1.link("mesh0").ConfigureDevice("mesh0", wgtypes.Config{PrivateKey: &other, ListenPort: &port}); err != nil {
			t.Fatal(err)
		}
		// Nothing reports this change; the health check reads it back.
		took := eventually(t, promise, "key restored", repaired("interface-config", before))
		t.Logf("restored in %s", took.Round(time.Millisecond))
	})

	t.Run("peer", func(t *testing.T) {
		before := r1.d.Status().Repairs["peers"]
		// As `wg set mesh0 peer KEY remove` does.
		if err := h1.link("mesh0").ConfigureDevice("mesh0", wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: h2.publicKey(), Remove: true}}}); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, promise, "peer restored", repaired("peers", before))
		t.Logf("restored in %s", took.Round(time.Millisecond))
	})
}

func ipNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}
