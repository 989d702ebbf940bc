package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/routes"
	"github.com/meshd/meshd/routes/routestest"
	"github.com/meshd/meshd/wgdev"
	"github.com/meshd/meshd/wgdev/wgdevtest"
)

type fakeCluster struct{ members []mesh.Member }

func (f *fakeCluster) Members() []mesh.Member          { return f.members }
func (f *fakeCluster) SetTags(map[string]string) error { return nil }
func (f *fakeCluster) LamportTime() uint64             { return 1 }

func memberN(t testing.TB, i int, slice netip.Prefix) mesh.Member {
	t.Helper()
	var k wgtypes.Key
	k[0], k[1], k[31] = byte(i>>8), byte(i), 9
	tags, err := mesh.Announcement{PublicKey: k, Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, byte(i >> 8), byte(i)}), 51820),
		Slices: []mesh.Slice{{Segment: "blue", Prefix: slice}}}.Tags()
	if err != nil {
		t.Fatal(err)
	}
	return mesh.Member{Name: fmt.Sprintf("h%04d", i), Status: mesh.StatusAlive, Tags: tags}
}

func sliceN(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
}

// newTestDaemon wires the real reconciler to fakes of serf, the WireGuard
// device and netlink.
func newTestDaemon(t testing.TB, n int) (*Daemon, *fakeCluster, *wgdevtest.Client, *routestest.Fake) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := &config.Config{NodeName: "self", Routing: config.Routing{TableBase: 100, RulePriority: 31000},
		WireGuard: config.WireGuard{Interface: "mesh0"},
		Segments:  []config.Segment{{Name: "blue", CIDR: netip.MustParsePrefix("10.0.0.0/8"), Subnet: netip.MustParsePrefix("10.255.255.0/24"), HostPrefix: 24}}}
	wg := wgdevtest.NewClient()
	nl := routestest.NewFake()
	nl.AddLink("mesh0")
	cl := &fakeCluster{}
	for i := 1; i <= n; i++ {
		cl.members = append(cl.members, memberN(t, i, sliceN(i)))
	}
	var self wgtypes.Key
	self[0] = 0xff
	d := &Daemon{cfg: cfg, log: log, kick: make(chan struct{}, 1), local: localNode(cfg, self),
		peers: wgdev.NewPeerSync(wg, "mesh0", log), routes: routes.New(nl, log), members: cl}
	return d, cl, wg, nl
}

// One member changing in a 1,000-member cluster costs O(1) device and
// netlink writes: the reconciler applies deltas, never the whole state.
func TestOneMemberChangeCostsConstantOps(t *testing.T) {
	d, cl, wg, nl := newTestDaemon(t, 1000)
	if err := d.reconcile(); err != nil {
		t.Fatal(err)
	}
	if wg.Len() != 1000 {
		t.Fatalf("%d peers after the initial pass, want 1000", wg.Len())
	}
	nl.TakeOps()
	before := wg.Ops()

	if err := d.reconcile(); err != nil {
		t.Fatal(err)
	}
	if ops := nl.TakeOps(); len(ops) != 0 || wg.Ops() != before {
		t.Fatalf("an unchanged cluster cost %d netlink and %d device writes: %v", len(ops), wg.Ops()-before, ops)
	}

	// h0500 moves to another slice.
	cl.members[499] = memberN(t, 500, sliceN(2000))
	if err := d.reconcile(); err != nil {
		t.Fatal(err)
	}
	if n := wg.Ops() - before; n != 1 {
		t.Errorf("a moved slice cost %d device writes, want 1", n)
	}
	if ops := nl.TakeOps(); len(ops) != 2 {
		t.Errorf("a moved slice cost %d netlink writes, want 2 (add the new route, delete the old): %v", len(ops), ops)
	}

	// h0700 fails.
	before = wg.Ops()
	cl.members[699].Status = mesh.StatusFailed
	if err := d.reconcile(); err != nil {
		t.Fatal(err)
	}
	if n := wg.Ops() - before; n != 1 {
		t.Errorf("a failed member cost %d device writes, want 1", n)
	}
	if ops := nl.TakeOps(); len(ops) != 1 {
		t.Errorf("a failed member cost %d netlink writes, want 1: %v", len(ops), ops)
	}

	// A newcomer joins.
	before = wg.Ops()
	cl.members = append(cl.members, memberN(t, 1001, sliceN(1001)))
	if err := d.reconcile(); err != nil {
		t.Fatal(err)
	}
	if n := wg.Ops() - before; n != 1 {
		t.Errorf("a joining member cost %d device writes, want 1", n)
	}
	if ops := nl.TakeOps(); len(ops) != 1 {
		t.Errorf("a joining member cost %d netlink writes, want 1: %v", len(ops), ops)
	}
}

func BenchmarkReconcileOneChange1000(b *testing.B) {
	d, cl, _, _ := newTestDaemon(b, 1000)
	if err := d.reconcile(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		cl.members[499] = memberN(b, 500, sliceN(2000+i%2))
		if err := d.reconcile(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReconcileInitial1000(b *testing.B) {
	for range b.N {
		d, _, _, _ := newTestDaemon(b, 1000)
		if err := d.reconcile(); err != nil {
			b.Fatal(err)
		}
	}
}
