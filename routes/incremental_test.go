package routes_test

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/meshd/meshd/internal/routestest"
	"github.com/meshd/meshd/routes"
)

func randomConfig(rng *rand.Rand) *routes.Config {
	cfg := &routes.Config{Link: "mesh0"}
	for seg, cidr := range []string{"10.42.0.0/16", "fd42::/48"} {
		table := 100 + seg
		p := netip.MustParsePrefix(cidr)
		cfg.Rules = append(cfg.Rules, routes.Rule{Priority: 31000, Table: table, From: p}, routes.Rule{Priority: 31001, Table: table, To: p})
		cfg.Routes = append(cfg.Routes, routes.Route{Table: table, Dst: p, Kind: routes.Unreachable})
		for i := range 40 {
			if rng.IntN(3) == 0 {
				continue
			}
			var dst netip.Prefix
			if seg == 0 {
				dst = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 42, byte(i), 0}), 24)
			} else {
				dst = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x42, 0, 0, 0, 0, 0, byte(i)}), 64)
			}
			kind := routes.Tunnel
			if i == 7 {
				kind = routes.Throw
			}
			cfg.Routes = append(cfg.Routes, routes.Route{Table: table, Dst: dst, Kind: kind, Peer: fmt.Sprintf("h%d", i)})
		}
	}
	return cfg
}

// SetFrom must write exactly what Set writes when the kernel holds prev,
// and leave the kernel in the same state.
func TestSetFromWritesWhatSetWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	full, inc := routestest.NewFake(), routestest.NewFake()
	full.AddLink("mesh0")
	inc.AddLink("mesh0")
	mFull, mInc := routes.New(full, log), routes.New(inc, log)
	var prev *routes.Config
	for step := range 50 {
		cfg := randomConfig(rng)
		if err := mFull.Set(cfg); err != nil {
			t.Fatal(err)
		}
		if err := mInc.SetFrom(prev, cfg); err != nil {
			t.Fatal(err)
		}
		fo, io := full.TakeOps(), inc.TakeOps()
		slices.Sort(fo)
		slices.Sort(io)
		if !slices.Equal(fo, io) {
			t.Fatalf("step %d: Set wrote\n%v\nSetFrom wrote\n%v", step, fo, io)
		}
		if !slices.Equal(full.Routes(), inc.Routes()) || !slices.Equal(full.Rules(), inc.Rules()) {
			t.Fatalf("step %d: kernels differ", step)
		}
		prev = cfg
	}
}
