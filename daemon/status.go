package daemon

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/wgdev"
)

// Status implements control.Provider. It reads the device for live
// counters; everything else is the reconciler's last result.
func (d *Daemon) Status() control.Status {
	d.mu.Lock()
	st, members, reconciles, lastErr, failovers, drainWhy := d.state, d.lastSeen, d.reconciles, d.lastErr, d.failovers, d.drainWhy
	missing := d.missing
	cfg, dev := d.cfg, d.dev
	d.mu.Unlock()
	local := d.ann.local()

	out := control.Status{Node: d.nodeStatus(cfg, dev, local), Reconciles: reconciles, Peers: []control.Peer{}, Rejected: []control.Rejection{},
		Repairs: d.repairs.snapshot(), Failovers: failovers, Ejections: d.ejector.ejections()}
	if out.Node.Draining {
		out.Node.DrainReason = drainWhy
	}
	if st != nil {
		out.Probes, out.ProbeReports = d.prober.status(st.Probes, time.Now())
	}
	for _, what := range sortedKeys(missing) {
		out.Missing = append(out.Missing, what+": "+missing[what])
	}
	if lastErr != nil {
		out.LastError = lastErr.Error()
	}
	live := map[wgtypes.Key]wgtypes.Peer{}
	if dev, err := dev.Device(dev.Name()); err == nil {
		for _, p := range dev.Peers {
			live[p.PublicKey] = p
		}
	}
	now := time.Now()
	for _, m := range members {
		if m.Name == local.Name {
			continue
		}
		ps := control.Peer{Name: m.Name, State: string(m.Status), HandshakeAgeSeconds: -1}
		if st != nil {
			if p, ok := st.PeerByName(m.Name); ok {
				fillPeer(&ps, p, live[p.PublicKey], now)
				ps.Idle = p.Keepalive == 0 && !d.paths.sentSince(p.PublicKey, now.Add(-idleAfter))
			}
		}
		out.Peers = append(out.Peers, ps)
	}
	if counters, err := d.enforcer.Counters(); err == nil {
		for _, c := range counters {
			out.Policy = append(out.Policy, control.PolicyCounter{Label: c.Label, Action: c.Action, Reason: c.Reason, Packets: c.Packets, Bytes: c.Bytes})
		}
	} else if out.LastError == "" {
		out.LastError = "read policy counters: " + err.Error()
	}
	out.Identity = d.identityStatus(st, now)
	slices.SortFunc(out.Peers, func(a, b control.Peer) int { return strings.Compare(a.Name, b.Name) })
	if st != nil {
		for _, r := range st.Rejected {
			out.Rejected = append(out.Rejected, control.Rejection{Member: r.Member, Reason: r.Reason})
		}
		out.Peers = append(out.Peers, wanPeers(st, members, live, now)...)
		for _, s := range st.Sites {
			cs := control.Site{Name: s.Name, Gateway: s.Gateway, Remote: s.Remote, Transit: s.Transit, Unreachable: s.Unreachable, Blocks: []string{}}
			for _, b := range s.Blocks {
				cs.Blocks = append(cs.Blocks, b.String())
			}
			out.Sites = append(out.Sites, cs)
		}
	}
	return out
}

// idleAfter is how long a peer without keepalives may go without traffic
// before a missing handshake stops counting against health.
const idleAfter = 3 * time.Minute

// wanPeers lists the gateways of other sites this gateway has tunnels
// to; the site's members are listed from the site pool.
func wanPeers(st *mesh.State, members []mesh.Member, live map[wgtypes.Key]wgtypes.Peer, now time.Time) []control.Peer {
	var out []control.Peer
	for _, p := range st.Peers {
		if !p.WAN {
			continue
		}
		ps := control.Peer{Name: p.Name, State: "alive", HandshakeAgeSeconds: -1}
		fillPeer(&ps, p, live[p.PublicKey], now)
		out = append(out, ps)
	}
	return out
}

func fillPeer(ps *control.Peer, p mesh.Peer, live wgtypes.Peer, now time.Time) {
	ps.Configured = live.PublicKey == p.PublicKey
	ps.PublicKey = p.PublicKey.String()
	if p.Endpoint.IsValid() {
		ps.Endpoint = p.Endpoint.String()
	}
	if live.Endpoint != nil {
		// The device's view wins: it is where packets actually go.
		ps.Endpoint = live.Endpoint.String()
		if live.Endpoint.AddrPort() != p.Endpoint {
			ps.LearnedEndpoint = ps.Endpoint
		}
	}
	if p.Site != mesh.DefaultSite {
		ps.Site = p.Site
	}
	ps.WAN, ps.Carries = p.WAN, p.Sites
	for _, s := range p.Slices {
		ps.Slices = append(ps.Slices, s.String())
	}
	if age := wgdev.HandshakeAge(live, now); age >= 0 {
		ps.HandshakeAgeSeconds = age.Seconds()
	}
	ps.RxBytes, ps.TxBytes = live.ReceiveBytes, live.TransmitBytes
}

func (d *Daemon) nodeStatus(cfg *config.Config, dev Device, local mesh.Local) control.Node {
	pub := local.PublicKey
	n := control.Node{
		Name: local.Name, PublicKey: pub.String(), Fingerprint: crypto.Fingerprint(pub),
		Mode: string(dev.Kind()), Interface: dev.Name(), ListenPort: cfg.WireGuard.ListenPort,
		MTU: d.under.MTU, Endpoint: d.under.Endpoint.String(),
		Gossip: netip.AddrPortFrom(cfg.Cluster.BindAddr, uint16(cfg.Cluster.BindPort)).String(),
	}
	for i, s := range local.Segments {
		n.Segments = append(n.Segments, control.Segment{Name: s.Name, CIDR: s.CIDR.String(), Subnet: s.Subnet.String(), Table: local.TableBase + i})
	}
	n.Site, n.Gateway, n.Draining, n.NAT = local.SiteName(), local.Gateway, local.Draining, local.NAT
	if d.ann.multi {
		if a := local.MeshAddr(); a.IsValid() {
			n.MeshAddr = a.String()
		}
		if o, _ := d.paths.observedEndpoint(); o.IsValid() {
			n.Observed = o.String()
		}
	}
	return n
}
