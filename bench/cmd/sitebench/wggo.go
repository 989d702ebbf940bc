package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/lab"
)

// The reference: the same five roles as the two-site lab, on one flat
// switch, with standalone wireguard-go (the version in go.mod) configured
// by hand and no meshd, no nftables. It tells what two forwarding hops of
// userspace WireGuard cost on this machine by themselves, so the gateway
// path's ratio can be split into WireGuard's share and meshd's.
//
// Host numbers match the two-site lab: 1 gateway of "a", 2 sender, 3 the
// direct receiver, 4 gateway of "b", 5 the receiver behind both gateways.
const (
	roleGatewayA = 1
	roleSender   = 2
	roleDirect   = 3
	roleGatewayB = 4
	roleRemote   = 5
)

// refTunnels lists each host's peers and, per peer, whose slices lie
// behind it: the sender's direct tunnel to 3, and the chain 2-1-4-5.
var refTunnels = map[int][]refPeer{
	roleSender:   {{roleDirect, []int{roleDirect}}, {roleGatewayA, []int{roleRemote}}},
	roleDirect:   {{roleSender, []int{roleSender}}},
	roleGatewayA: {{roleSender, []int{roleSender}}, {roleGatewayB, []int{roleRemote}}},
	roleGatewayB: {{roleGatewayA, []int{roleSender}}, {roleRemote, []int{roleRemote}}},
	roleRemote:   {{roleGatewayB, []int{roleSender}}},
}

type refPeer struct {
	host   int
	behind []int // hosts whose slices are routed to this peer
}

const refPort = 51820

// refLab is the running reference.
type refLab struct {
	l     *lab.Lab
	procs map[int]*bg
}

// startReference builds the flat lab and brings up the wireguard-go chain
// with tunnel MTU mtu (meshd's, for a like-for-like comparison).
func startReference(ctx context.Context, bin string, mtu int, wg *wgctrl.Client) (_ *refLab, closeLab func(), err error) {
	l, closeLab, err := newLab(ctx, lab.Spec{Prefix: prefixReference, Hosts: 5, Segments: []lab.SegmentSpec{{Name: segment, CIDR: "10.42.0.0/16", SliceBits: 24}}})
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			closeLab()
		}
	}()
	r := &refLab{l: l, procs: map[int]*bg{}}
	keys := map[int]wgtypes.Key{}
	for i := 1; i <= 5; i++ {
		if keys[i], err = r.startDevice(ctx, bin, i); err != nil {
			return nil, nil, err
		}
	}
	for i := 1; i <= 5; i++ {
		if err := r.configure(ctx, wg, i, keys, mtu); err != nil {
			return nil, nil, err
		}
	}
	return r, closeLab, nil
}

// startDevice runs wireguard-go for host i under the lab's interface name
// for it (so the lab's cleanup removes a leftover UAPI socket) and returns
// a fresh key for it.
func (r *refLab) startDevice(ctx context.Context, bin string, i int) (wgtypes.Key, error) {
	h := r.l.Host(i)
	_ = os.Remove(h.UAPISocket())
	p, err := startBG(h.NS(), filepath.Join(r.l.Dir(), "wireguard-go-"+h.Name()+".log"), bin, "-f", h.Interface())
	if err != nil {
		return wgtypes.Key{}, err
	}
	r.procs[i] = p
	if err := waitFile(ctx, h.UAPISocket(), 5*time.Second, p); err != nil {
		return wgtypes.Key{}, fmt.Errorf("wireguard-go on %s: %w", h.Name(), err)
	}
	return wgtypes.GeneratePrivateKey()
}

// configure gives host i its peers and routes from refTunnels.
func (r *refLab) configure(ctx context.Context, wg *wgctrl.Client, i int, keys map[int]wgtypes.Key, mtu int) error {
	h := r.l.Host(i)
	port := refPort
	priv := keys[i]
	cfg := wgtypes.Config{PrivateKey: &priv, ListenPort: &port, ReplacePeers: true}
	var routes []netip.Prefix
	for _, p := range refTunnels[i] {
		peer := r.l.Host(p.host)
		var allowed []net.IPNet
		for _, b := range p.behind {
			s := r.l.Host(b).Subnet(segment)
			allowed = append(allowed, net.IPNet{IP: s.Addr().AsSlice(), Mask: net.CIDRMask(s.Bits(), 32)})
			routes = append(routes, s)
		}
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{
			PublicKey:  keys[p.host].PublicKey(),
			Endpoint:   net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer.UnderlayAddr(), refPort)),
			AllowedIPs: allowed, ReplaceAllowedIPs: true,
		})
	}
	if err := wg.ConfigureDevice(h.Interface(), cfg); err != nil {
		return fmt.Errorf("configure %s on %s: %w", h.Interface(), h.Name(), err)
	}
	if _, err := h.Exec(ctx, "ip", "link", "set", "dev", h.Interface(), "mtu", strconv.Itoa(mtu), "up"); err != nil {
		return err
	}
	for _, p := range routes {
		if _, err := h.Exec(ctx, "ip", "route", "replace", p.String(), "dev", h.Interface()); err != nil {
			return err
		}
	}
	return nil
}

func (r *refLab) pid(i int) int { return r.procs[i].pid() }

// alive fails if a wireguard-go process of the chain has exited.
func (r *refLab) alive() error {
	var errs []error
	for i, p := range r.procs {
		if p.exited() {
			errs = append(errs, fmt.Errorf("wireguard-go on h%d exited: %v", i, p.err))
		}
	}
	return errors.Join(errs...)
}
