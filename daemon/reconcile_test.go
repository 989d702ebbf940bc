package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/internal/clustertest"
	"github.com/meshd/meshd/internal/routestest"
	"github.com/meshd/meshd/internal/wgdevtest"
	"github.com/meshd/meshd/mesh"
)

// fakeCluster is a membership whose members the test sets directly, for
// clusters too large to gossip in a unit test.
type fakeCluster struct {
	mu      sync.Mutex
	members []mesh.Member
	failed  chan error
}

func newFakeCluster() *fakeCluster { return &fakeCluster{failed: make(chan error)} }

func (f *fakeCluster) Members() []mesh.Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.members)
}
func (f *fakeCluster) set(i int, m mesh.Member) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i == len(f.members) {
		f.members = append(f.members, m)
	} else {
		f.members[i] = m
	}
}
func (f *fakeCluster) SetTags(map[string]string) error { return nil }
func (f *fakeCluster) LamportTime() uint64             { return 1 }
func (f *fakeCluster) KeyringOp(string, string) (*cluster.KeyResponse, error) {
	return nil, errors.New("no keyring")
}
func (f *fakeCluster) Failed() <-chan error           { return f.failed }
func (f *fakeCluster) Broadcast(string, []byte) error { return nil }
func (f *fakeCluster) Ask(string, []byte, map[string]string, time.Duration) ([]cluster.Answer, error) {
	return nil, nil
}
func (f *fakeCluster) Leave() error  { return nil }
func (f *fakeCluster) Retire(string) {}
func (f *fakeCluster) Rejoin()       {}

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

// newTestDaemon starts a real daemon on a fake host whose membership is
// set directly, with n members besides itself; the tests call the
// reconcile pass themselves.
func newTestDaemon(t testing.TB, n int) (*Daemon, *fakeCluster, *wgdevtest.Client, *routestest.Fake) {
	cl := newFakeCluster()
	for i := 1; i <= n; i++ {
		cl.members = append(cl.members, memberN(t, i, sliceN(i)))
	}
	h := newBenchHost(t)
	sys := h.system()
	sys.Join = func(cluster.MembershipConfig, func()) (Cluster, error) { return cl, nil }
	d := New(h.config(h.bigSegmentConfig()), slog.New(slog.DiscardHandler), sys, Options{})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	// Start installed the segment's own routes; the tests count from here.
	h.nl.TakeOps()
	return d, cl, h.link("mesh0").Client, h.nl
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
	cl.set(499, memberN(t, 500, sliceN(2000)))
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
	m := cl.Members()[699]
	m.Status = mesh.StatusFailed
	cl.set(699, m)
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
	cl.set(1000, memberN(t, 1001, sliceN(1001)))
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
		cl.set(499, memberN(b, 500, sliceN(2000+i%2)))
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

func newBenchHost(t testing.TB) *testHost {
	return newTestHost(t, clustertest.NewNetwork(), "self")
}

// bigSegmentConfig has one segment big enough for thousands of /24
// slices; this host owns the last one.
func (h *testHost) bigSegmentConfig() string {
	return fmt.Sprintf(`node_name = "self"
data_dir = %q
control_socket = %q
cni_conf_dir = ""
docker_plugin_socket = ""

[cluster]
bind_addr = %q
gossip_key_file = %q

[wireguard]
interface = "mesh0"

[routing]
table_base = 100
rule_priority = 31000

[[segments]]
name = "blue"
cidr = "10.0.0.0/8"
subnet = "10.255.255.0/24"
`, h.dir+"/data", h.dir+"/meshd.sock", h.addr, gossipKeyFile(h.t))
}
