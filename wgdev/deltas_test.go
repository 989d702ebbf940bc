package wgdev

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/mesh"
)

// oldDeltas is Deltas as it was, indexing whole peers by key.
func oldDeltas(current []wgtypes.Peer, desired []mesh.Peer, announced map[wgtypes.Key]netip.AddrPort) ([]wgtypes.PeerConfig, []string) {
	have := make(map[wgtypes.Key]wgtypes.Peer, len(current))
	for _, p := range current {
		have[p.PublicKey] = p
	}
	var deltas []wgtypes.PeerConfig
	var names []string
	want := make(map[wgtypes.Key]bool, len(desired))
	for _, p := range desired {
		want[p.PublicKey] = true
		cur, exists := have[p.PublicKey]
		cfg := wgtypes.PeerConfig{PublicKey: p.PublicKey}
		changed := !exists
		if !exists || announced[p.PublicKey] != p.Endpoint {
			cfg.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
			changed = true
		}
		if !exists || !samePrefixes(cur.AllowedIPs, p.AllowedIPs) {
			cfg.ReplaceAllowedIPs = true
			cfg.AllowedIPs = ipNets(p.AllowedIPs)
			changed = true
		}
		if !exists || cur.PersistentKeepaliveInterval != p.Keepalive {
			ka := p.Keepalive
			cfg.PersistentKeepaliveInterval = &ka
			changed = true
		}
		if !changed {
			continue
		}
		cfg.UpdateOnly = exists
		deltas = append(deltas, cfg)
		names = append(names, p.Name)
	}
	for _, p := range current {
		if !want[p.PublicKey] {
			deltas = append(deltas, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
			names = append(names, "")
		}
	}
	return sortDeltas(deltas, names)
}

// asRead is prev as SetFrom used to picture the device: each peer through
// net.IPNet.
func asRead(prev []mesh.Peer) []wgtypes.Peer {
	out := make([]wgtypes.Peer, len(prev))
	for i, p := range prev {
		out[i] = wgtypes.Peer{PublicKey: p.PublicKey, AllowedIPs: ipNets(p.AllowedIPs), PersistentKeepaliveInterval: p.Keepalive}
	}
	return out
}

// randomPeers draws from a small universe so that two draws overlap:
// shared and duplicate keys, unsorted, mapped and invalid prefixes.
func randomPeers(rng *rand.Rand) []mesh.Peer {
	prefixes := []netip.Prefix{
		netip.MustParsePrefix("10.42.1.0/24"), netip.MustParsePrefix("10.42.2.0/24"),
		netip.MustParsePrefix("fd42:0:0:1::/64"), netip.MustParsePrefix("10.42.0.0/16"),
		netip.MustParsePrefix("::ffff:10.42.3.0/120"), {},
	}
	var out []mesh.Peer
	for i := range 12 {
		if rng.IntN(3) == 0 {
			continue
		}
		p := mesh.Peer{
			Name:      string(rune('a' + i)),
			PublicKey: key(rng.IntN(14)),
			Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(3))}), 51820),
			Keepalive: time.Duration(rng.IntN(2)) * 25 * time.Second,
		}
		for range rng.IntN(3) {
			if rng.IntN(8) == 0 {
				p.AllowedIPs = append(p.AllowedIPs, prefixes[4+rng.IntN(2)])
			} else {
				p.AllowedIPs = append(p.AllowedIPs, prefixes[rng.IntN(4)])
			}
		}
		if rng.IntN(2) == 0 {
			slices.SortFunc(p.AllowedIPs, netip.Prefix.Compare)
		}
		out = append(out, p)
	}
	return out
}

func randomAnnounced(rng *rand.Rand, peers []mesh.Peer) map[wgtypes.Key]netip.AddrPort {
	announced := map[wgtypes.Key]netip.AddrPort{}
	for _, p := range peers {
		if rng.IntN(4) != 0 {
			announced[p.PublicKey] = p.Endpoint
		}
	}
	return announced
}

// SetFrom's view of prev must give the deltas the old SetFrom computed
// from prev converted to device peers, and Deltas those it always gave.
func TestDeltasMatchTheMapBasedDiff(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for step := range 5000 {
		prev, desired := randomPeers(rng), randomPeers(rng)
		announced := randomAnnounced(rng, prev)
		wantD, wantN := oldDeltas(asRead(prev), desired, announced)
		gotD, gotN := deltasOf(installedPeers(prev), desired, announced)
		if !reflect.DeepEqual(gotD, wantD) || !slices.Equal(gotN, wantN) {
			t.Fatalf("step %d: SetFrom deltas\n%+v %q\nwant\n%+v %q", step, gotD, gotN, wantD, wantN)
		}
		current := asRead(prev)
		gotD, gotN = Deltas(current, desired, announced)
		if !reflect.DeepEqual(gotD, wantD) || !slices.Equal(gotN, wantN) {
			t.Fatalf("step %d: Deltas\n%+v %q\nwant\n%+v %q", step, gotD, gotN, wantD, wantN)
		}
	}
}
