package wgdev

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/internal/wgdevtest"
	"github.com/meshd/meshd/mesh"
)

func key(i int) wgtypes.Key {
	var k wgtypes.Key
	k[0], k[1], k[31] = byte(i>>8), byte(i), 7
	return k
}

func peers(n int) []mesh.Peer {
	out := make([]mesh.Peer, n)
	for i := range out {
		out[i] = mesh.Peer{
			Name:       fmt.Sprintf("h%d", i),
			PublicKey:  key(i),
			Endpoint:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, byte(i >> 8), byte(i)}), 51820),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)},
			Keepalive:  25 * time.Second,
		}
	}
	return out
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestPeerSyncAppliesOnlyWhatChanged(t *testing.T) {
	f := wgdevtest.NewClient()
	s := NewPeerSync(f, "mesh0", quietLog())
	clock := time.Unix(1000, 0)
	s.now = func() time.Time { return clock }
	want := peers(3)
	if err := s.Set(want); err != nil {
		t.Fatal(err)
	}
	if f.Ops() != 3 || f.Len() != 3 {
		t.Fatalf("initial apply: %d ops, %d peers; want 3 and 3", f.Ops(), f.Len())
	}
	got, _ := f.Peer(key(1))
	if got.Endpoint.String() != "192.0.0.1:51820" || len(got.AllowedIPs) != 1 || got.AllowedIPs[0].String() != "10.0.1.0/24" || got.PersistentKeepaliveInterval != 0 {
		t.Fatalf("peer h1 on the device: %+v; want its keepalive (and first handshake) deferred", got)
	}
	if due := s.NextKeepalive(); !due.Equal(clock.Add(KeepaliveDelay)) {
		t.Fatalf("keepalive due at %v, want %v", due, clock.Add(KeepaliveDelay))
	}
	if err := s.Set(want); err != nil || f.Ops() != 3 {
		t.Fatalf("a pass before the keepalive is due sent %d ops (err %v)", f.Ops()-3, err)
	}
	clock = clock.Add(KeepaliveDelay)
	if err := s.Set(want); err != nil || f.Ops() != 6 {
		t.Fatalf("the due keepalives cost %d ops, want 3 (err %v)", f.Ops()-3, err)
	}
	if got, _ := f.Peer(key(1)); got.PersistentKeepaliveInterval != 25*time.Second {
		t.Fatalf("keepalive not on after the delay: %+v", got)
	}
	if !s.NextKeepalive().IsZero() {
		t.Fatal("keepalives still pending")
	}

	if err := s.Set(want); err != nil || f.Ops() != 6 {
		t.Fatalf("identical Set sent %d more ops (err %v); want none", f.Ops()-6, err)
	}

	// The peer roamed: WireGuard rewrote its endpoint. The announcement did
	// not change, so meshd must not fight the roam.
	roamed, _ := f.Peer(key(2))
	roamed.Endpoint = &net.UDPAddr{IP: net.IPv4(198, 51, 100, 9), Port: 40000}
	f.SetPeer(roamed)
	if err := s.Set(want); err != nil || f.Ops() != 6 {
		t.Fatalf("a roamed endpoint caused %d ops; want none", f.Ops()-6)
	}

	want[0].AllowedIPs = append(want[0].AllowedIPs, netip.MustParsePrefix("10.99.0.0/24"))
	want = want[:2] // h2 leaves
	if err := s.Set(want); err != nil {
		t.Fatal(err)
	}
	if f.Ops() != 8 {
		t.Fatalf("one changed + one removed peer cost %d ops, want 2", f.Ops()-6)
	}
	if _, ok := f.Peer(key(2)); ok {
		t.Fatal("removed peer still on the device")
	}
	if p, _ := f.Peer(key(0)); len(p.AllowedIPs) != 2 {
		n := len(p.AllowedIPs)
		t.Fatalf("h0 has %d allowed IPs, want 2 (replaced, not appended twice)", n)
	}
}

func TestPeerSyncRemovesPeersItDoesNotKnow(t *testing.T) {
	f := wgdevtest.NewClient()
	f.SetPeer(wgtypes.Peer{PublicKey: key(99)}) // added by hand with `wg set`
	s := NewPeerSync(f, "mesh0", quietLog())
	if err := s.Set(peers(1)); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Peer(key(99)); ok {
		t.Fatal("a peer meshd does not know survived; the device must match the membership")
	}
}

// One member changing in a 1,000-member cluster must cost O(1) device
// operations, not a rewrite of every peer.
func TestOneChangeAmongThousandCostsOneOp(t *testing.T) {
	f := wgdevtest.NewClient()
	s := NewPeerSync(f, "mesh0", quietLog())
	all := peers(1000)
	if err := s.Set(all); err != nil {
		t.Fatal(err)
	}
	before := s.Ops()
	all[500].AllowedIPs = []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}
	if err := s.Set(all); err != nil {
		t.Fatal(err)
	}
	if n := s.Ops() - before; n != 1 {
		t.Fatalf("one changed member cost %d device ops, want 1", n)
	}
	before = s.Ops()
	if err := s.Set(append(all, peers(1001)[1000])); err != nil {
		t.Fatal(err)
	}
	if n := s.Ops() - before; n != 1 {
		t.Fatalf("one joining member cost %d device ops, want 1", n)
	}
}

// A peer that wants no keepalive still gets its first handshake started
// once gossip had time to tell the other side: the keepalive goes on and
// off in one batch, which makes WireGuard send one (and so handshake),
// and leaves the peer without keepalives. A peer behind NAT with no
// endpoint gets none set.
func TestFirstHandshakeWithoutKeepalive(t *testing.T) {
	f := wgdevtest.NewClient()
	s := NewPeerSync(f, "mesh0", quietLog())
	clock := time.Unix(1000, 0)
	s.now = func() time.Time { return clock }
	want := peers(2)
	for i := range want {
		want[i].Keepalive = 0
	}
	want[1].Endpoint = netip.AddrPort{} // behind NAT
	if err := s.Set(want); err != nil || f.Ops() != 2 {
		t.Fatalf("initial apply: %d ops, err %v", f.Ops(), err)
	}
	if got, _ := f.Peer(key(1)); got.Endpoint != nil {
		t.Fatalf("a peer without an announced endpoint got %v", got.Endpoint)
	}
	if s.NextKeepalive().IsZero() {
		t.Fatal("no first handshake scheduled for peers without keepalives")
	}
	clock = clock.Add(KeepaliveDelay)
	if err := s.Set(want); err != nil || f.Ops() != 6 {
		t.Fatalf("the due handshakes cost %d ops, want 4 (on and off for each), err %v", f.Ops()-2, err)
	}
	for i := range 2 {
		if got, _ := f.Peer(key(i)); got.PersistentKeepaliveInterval != 0 {
			t.Fatalf("peer %d left with keepalive %v, want none", i, got.PersistentKeepaliveInterval)
		}
	}
	if err := s.Set(want); err != nil || f.Ops() != 6 {
		t.Fatalf("a later pass sent %d more ops", f.Ops()-6)
	}
}

// A batch that fails did not start the due handshakes: they stay due and
// go out with the next batch, instead of leaving the peers waiting for
// traffic.
func TestKeepaliveNudgeSurvivesAFailedBatch(t *testing.T) {
	f := wgdevtest.NewClient()
	s := NewPeerSync(f, "mesh0", quietLog())
	clock := time.Unix(1000, 0)
	s.now = func() time.Time { return clock }
	want := peers(2)
	want[1].Keepalive = 0
	if err := s.Set(want); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(KeepaliveDelay)
	f.FailNext(errors.New("injected: device busy"))
	if err := s.Set(want); err == nil {
		t.Fatal("the failed batch was not reported")
	}
	if s.NextKeepalive().IsZero() {
		t.Fatal("the failed batch dropped the pending keepalives")
	}
	before := f.Ops()
	if err := s.Set(want); err != nil {
		t.Fatal(err)
	}
	// h0 gets its keepalive; h1, which wants none, gets it on and off.
	if got := f.Ops() - before; got != 3 {
		t.Errorf("the retried nudges cost %d ops, want 3", got)
	}
	if got, _ := f.Peer(key(0)); got.PersistentKeepaliveInterval != 25*time.Second {
		t.Errorf("h0's keepalive after the retry: %v, want 25s", got.PersistentKeepaliveInterval)
	}
	if !s.NextKeepalive().IsZero() {
		t.Error("keepalives still pending after the batch went in")
	}
}
