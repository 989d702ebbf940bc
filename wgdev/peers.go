package wgdev

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/mesh"
)

// Client is the part of *wgctrl.Client meshd uses; tests pass a fake that
// records every ConfigureDevice call.
type Client interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
}

// Configure sets the device's identity. Peers are left alone so that a
// re-configuration never drops live sessions.
func Configure(c Client, name string, key wgtypes.Key, port int) error {
	if err := c.ConfigureDevice(name, wgtypes.Config{PrivateKey: &key, ListenPort: &port}); err != nil {
		return fmt.Errorf("configure %s: %w", name, err)
	}
	return nil
}

// PeerSync keeps a device's peers equal to the desired set by sending
// per-peer deltas, never a wholesale replace: a peer whose config did not
// change is not touched, so its session and counters survive.
//
// PeerSync is not safe for concurrent use. Its owner (the daemon's
// reconciler goroutine) is the only one to call it, so every field below
// belongs to that goroutine; client, name, log and now never change.
type PeerSync struct {
	client Client
	name   string
	log    *slog.Logger
	// announced remembers the endpoint each peer announced when we last
	// set it. Comparing against the device instead would flap roaming
	// peers, whose endpoint WireGuard rewrites on every handshake.
	announced map[wgtypes.Key]netip.AddrPort
	// names remembers who is behind each key, so a removal is logged with
	// the name of the host that went away.
	names map[wgtypes.Key]string
	// keepaliveDue holds new peers whose first handshake is not started
	// yet, and when to start it, by turning their persistent keepalive on
	// (off again at once when they want none: the keepalive it queued
	// keeps WireGuard trying until the handshake completes). Started the
	// moment a peer is added, that handshake reaches hosts that have not
	// learnt this one's key yet, is dropped, and WireGuard waits 5 s
	// (REKEY_TIMEOUT) to retry. By the time it is due, gossip has told
	// the other side. Without it a peer without keepalives would wait
	// for traffic, and a rotated key would stall a stream for 5 s.
	keepaliveDue map[wgtypes.Key]time.Time
	now          func() time.Time
	ops          int
}

// NewPeerSync manages the peers of device name.
func NewPeerSync(c Client, name string, log *slog.Logger) *PeerSync {
	return &PeerSync{client: c, name: name, log: log, announced: map[wgtypes.Key]netip.AddrPort{}, names: map[wgtypes.Key]string{},
		keepaliveDue: map[wgtypes.Key]time.Time{}, now: time.Now}
}

// Ops is the number of peer changes sent so far, so tests can prove a
// one-member change costs O(1) device operations.
func (s *PeerSync) Ops() int { return s.ops }

// Set applies desired against what the device has now.
func (s *PeerSync) Set(desired []mesh.Peer) error {
	dev, err := s.client.Device(s.name)
	if err != nil {
		return fmt.Errorf("read peers of %s: %w", s.name, err)
	}
	return s.apply(devicePeers(dev.Peers), desired)
}

// SetFrom applies desired trusting that the device holds prev, without
// reading it: reading 1,000 peers back over UAPI costs more than the one
// change a membership event brings. Resyncs use Set.
func (s *PeerSync) SetFrom(prev, desired []mesh.Peer) error {
	return s.apply(installedPeers(prev), desired)
}

// KeepaliveDelay is how long a new peer waits before its keepalive (and
// so its first handshake) starts: longer than gossip takes to reach every
// host in a LAN cluster of a few dozen.
const KeepaliveDelay = 1500 * time.Millisecond

// NextKeepalive is when a pending keepalive falls due (zero if none), so
// the reconciler can come back then.
func (s *PeerSync) NextKeepalive() time.Time {
	var next time.Time
	for _, due := range s.keepaliveDue {
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return next
}

func (s *PeerSync) apply(current peerList, desired []mesh.Peer) error {
	deltas, names := deltasOf(current, desired, s.announced)
	deltas, names, nudged := s.deferKeepalives(deltas, names, desired)
	if len(deltas) == 0 {
		return nil
	}
	if err := s.client.ConfigureDevice(s.name, wgtypes.Config{Peers: deltas}); err != nil {
		return fmt.Errorf("configure peers of %s: %w", s.name, err)
	}
	// Only a batch that went in started those handshakes; after a failed
	// one they stay due, or the peers would wait for traffic.
	for _, k := range nudged {
		delete(s.keepaliveDue, k)
	}
	s.ops += len(deltas)
	for i, d := range deltas {
		switch {
		case d.Remove:
			s.log.Info("peer removed", "peer", s.names[d.PublicKey], "key", d.PublicKey.String()[:8])
			delete(s.announced, d.PublicKey)
			delete(s.names, d.PublicKey)
		case d.UpdateOnly && d.Endpoint == nil && !d.ReplaceAllowedIPs:
			s.log.Debug("peer keepalive on", "peer", s.names[d.PublicKey])
		default:
			if d.Endpoint != nil {
				s.announced[d.PublicKey] = d.Endpoint.AddrPort()
			}
			s.names[d.PublicKey] = names[i]
			verb := "peer updated"
			if !d.UpdateOnly {
				verb = "peer added"
			}
			s.log.Info(verb, "peer", names[i], "key", d.PublicKey.String()[:8], "endpoint", endpointString(d.Endpoint), "allowed_ips", prefixesString(d.AllowedIPs))
		}
	}
	return nil
}

// deferKeepalives holds back the keepalive of peers being added and adds
// the deltas that turn on those now due; nudged lists those, for the
// caller to forget once the batch is applied.
func (s *PeerSync) deferKeepalives(deltas []wgtypes.PeerConfig, names []string, desired []mesh.Peer) (_ []wgtypes.PeerConfig, _ []string, nudged []wgtypes.Key) {
	now := s.now()
	inDeltas := map[wgtypes.Key]int{}
	var outD []wgtypes.PeerConfig
	var outN []string
	for i, d := range deltas {
		switch due, pending := s.keepaliveDue[d.PublicKey]; {
		case d.Remove:
			delete(s.keepaliveDue, d.PublicKey)
		case !d.UpdateOnly:
			off := time.Duration(0)
			d.PersistentKeepaliveInterval = &off
			s.keepaliveDue[d.PublicKey] = now.Add(KeepaliveDelay)
		case pending && now.Before(due) && d.PersistentKeepaliveInterval != nil:
			// A full read sees the keepalive still off: not a change yet.
			d.PersistentKeepaliveInterval = nil
			if d.Endpoint == nil && !d.ReplaceAllowedIPs {
				continue
			}
		}
		inDeltas[d.PublicKey] = len(outD)
		outD, outN = append(outD, d), append(outN, names[i])
	}
	if len(s.keepaliveDue) == 0 {
		return outD, outN, nil
	}
	// Where each pending peer is in desired (the last one holding the
	// key, as a map of all desired peers would): indexing only those
	// spares a map of every peer at each pass.
	want := make(map[wgtypes.Key]int, len(s.keepaliveDue))
	for i, p := range desired {
		if _, pending := s.keepaliveDue[p.PublicKey]; pending {
			want[p.PublicKey] = i
		}
	}
	for key, due := range s.keepaliveDue {
		at, ok := want[key]
		if !ok {
			delete(s.keepaliveDue, key)
			continue
		}
		if now.Before(due) {
			continue
		}
		nudged = append(nudged, key)
		p := desired[at]
		ka := p.Keepalive
		if ka == 0 {
			ka = nudgeKeepalive
		}
		if i, ok := inDeltas[key]; ok {
			outD[i].PersistentKeepaliveInterval = &ka
		} else {
			outD = append(outD, wgtypes.PeerConfig{PublicKey: key, UpdateOnly: true, PersistentKeepaliveInterval: &ka})
			outN = append(outN, p.Name)
		}
		if p.Keepalive == 0 {
			off := time.Duration(0)
			outD = append(outD, wgtypes.PeerConfig{PublicKey: key, UpdateOnly: true, PersistentKeepaliveInterval: &off})
			outN = append(outN, p.Name)
		}
	}
	return outD, outN, nudged
}

// nudgeKeepalive is the keepalive that starts a peer's first handshake
// when it wants none of its own; it is switched off in the same batch.
const nudgeKeepalive = 25 * time.Second

// Deltas computes the per-peer changes that turn current into desired.
// names[i] is the member name behind deltas[i] ("" for a peer meshd does
// not know, which it removes). Output is sorted by public key.
func Deltas(current []wgtypes.Peer, desired []mesh.Peer, announced map[wgtypes.Key]netip.AddrPort) (deltas []wgtypes.PeerConfig, names []string) {
	return deltasOf(devicePeers(current), desired, announced)
}

// peerList is what a delta depends on of the peers a device holds.
type peerList interface {
	Len() int
	Key(i int) wgtypes.Key
	SameAllowedIPs(i int, want []netip.Prefix) bool
	Keepalive(i int) time.Duration
}

// devicePeers are peers as read from the device.
type devicePeers []wgtypes.Peer

func (ps devicePeers) Len() int                      { return len(ps) }
func (ps devicePeers) Key(i int) wgtypes.Key         { return ps[i].PublicKey }
func (ps devicePeers) Keepalive(i int) time.Duration { return ps[i].PersistentKeepaliveInterval }
func (ps devicePeers) SameAllowedIPs(i int, want []netip.Prefix) bool {
	return samePrefixes(ps[i].AllowedIPs, want)
}

// installedPeers are the peers of a state that SetFrom trusts the device
// holds: what a read would return after they were configured, without
// building it.
type installedPeers []mesh.Peer

func (ps installedPeers) Len() int                      { return len(ps) }
func (ps installedPeers) Key(i int) wgtypes.Key         { return ps[i].PublicKey }
func (ps installedPeers) Keepalive(i int) time.Duration { return ps[i].Keepalive }

// SameAllowedIPs answers as the device would, whose copy of the prefixes
// went through net.IPNet and comes back sorted. Sorted, valid, unmapped
// prefixes make that trip unchanged, which is the common case and needs
// no conversion.
func (ps installedPeers) SameAllowedIPs(i int, want []netip.Prefix) bool {
	have := ps[i].AllowedIPs
	if slices.Equal(have, want) && slices.IsSortedFunc(have, netip.Prefix.Compare) &&
		!slices.ContainsFunc(have, func(p netip.Prefix) bool { return !p.IsValid() || p.Addr().Is4In6() }) {
		return true
	}
	return samePrefixes(ipNets(have), want)
}

// deltasOf is Deltas for any view of the device's peers.
func deltasOf(current peerList, desired []mesh.Peer, announced map[wgtypes.Key]netip.AddrPort) (deltas []wgtypes.PeerConfig, names []string) {
	n := current.Len()
	// have holds the last peer with each key, as a map of the peers would.
	have := make(map[wgtypes.Key]int, n)
	for i := range n {
		have[current.Key(i)] = i
	}
	// kept marks, by have's index, the keys still desired.
	kept := make([]bool, n)
	for _, p := range desired {
		i, exists := have[p.PublicKey]
		if exists {
			kept[i] = true
		}
		cfg := wgtypes.PeerConfig{PublicKey: p.PublicKey}
		changed := !exists
		// A peer behind NAT announces no endpoint: WireGuard learns it
		// from the peer's handshakes, and setting an empty one would
		// fail the whole batch.
		if p.Endpoint.IsValid() && (!exists || announced[p.PublicKey] != p.Endpoint) {
			cfg.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
			changed = true
		}
		if !exists || !current.SameAllowedIPs(i, p.AllowedIPs) {
			cfg.ReplaceAllowedIPs = true
			cfg.AllowedIPs = ipNets(p.AllowedIPs)
			changed = true
		}
		if !exists || current.Keepalive(i) != p.Keepalive {
			ka := p.Keepalive
			cfg.PersistentKeepaliveInterval = &ka
			changed = true
		}
		if !changed {
			continue
		}
		// UpdateOnly keeps a concurrent removal from resurrecting a peer.
		cfg.UpdateOnly = exists
		deltas = append(deltas, cfg)
		names = append(names, p.Name)
	}
	for i := range n {
		key := current.Key(i)
		j := i
		if len(have) < n {
			j = have[key] // a key held twice is kept or removed as one
		}
		if !kept[j] {
			deltas = append(deltas, wgtypes.PeerConfig{PublicKey: key, Remove: true})
			names = append(names, "")
		}
	}
	return sortDeltas(deltas, names)
}

func sortDeltas(deltas []wgtypes.PeerConfig, names []string) ([]wgtypes.PeerConfig, []string) {
	idx := make([]int, len(deltas))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		return slices.Compare(deltas[a].PublicKey[:], deltas[b].PublicKey[:])
	})
	sd := make([]wgtypes.PeerConfig, len(deltas))
	sn := make([]string, len(deltas))
	for i, j := range idx {
		sd[i], sn[i] = deltas[j], names[j]
	}
	return sd, sn
}

func samePrefixes(have []net.IPNet, want []netip.Prefix) bool {
	if len(have) != len(want) {
		return false
	}
	var buf [4]netip.Prefix // a peer has a slice or two; spares an allocation
	got := buf[:0]
	for _, n := range have {
		got = append(got, prefixOf(n))
	}
	slices.SortFunc(got, netip.Prefix.Compare)
	return slices.Equal(got, want)
}

func prefixOf(n net.IPNet) netip.Prefix {
	addr, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones)
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		bits := 32
		if p.Addr().Is6() {
			bits = 128
		}
		out[i] = net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
	}
	return out
}

func endpointString(a *net.UDPAddr) string {
	if a == nil {
		return "unchanged"
	}
	return a.String()
}

func prefixesString(ns []net.IPNet) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.String()
	}
	return out
}

// HandshakeAge is how long ago the peer last completed a handshake, or
// -1 when it never did.
func HandshakeAge(p wgtypes.Peer, now time.Time) time.Duration {
	if p.LastHandshakeTime.IsZero() {
		return -1
	}
	return now.Sub(p.LastHandshakeTime)
}
