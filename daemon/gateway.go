package daemon

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/meshd/meshd/mesh"
)

// syncMeshAddr keeps the host's mesh address on the WireGuard interface
// (cluster of several sites only); it moves when a claimed slice does.
func (d *Daemon) syncMeshAddr(local mesh.Local) error {
	var want []netip.Prefix
	if d.ann.multi {
		if a := local.MeshAddr(); a.IsValid() {
			want = []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}
		}
	}
	if slices.Equal(want, d.meshAddrs) && !d.meshAddrsDirty {
		return nil
	}
	if err := d.device().SetAddrs(want); err != nil {
		d.meshAddrsDirty = true
		return fmt.Errorf("put the mesh address on the interface: %w", err)
	}
	d.meshAddrs, d.meshAddrsDirty = want, false
	return nil
}

// relayDirectory, on a gateway, relays the WAN announcements into the
// site pool, if this gateway is the site's relayer: changes at once,
// everything when it becomes the relayer, at each refresh, and when a
// host joins the site.
func (d *Daemon) relayDirectory(members, remote []mesh.Member) error {
	if d.wan == nil {
		return nil
	}
	relayer := d.isRelayer(remote)
	if !relayer {
		d.directory.relaying, d.directory.settleAt = false, time.Time{}
		return nil
	}
	now := time.Now()
	settle := d.directory.settleDue(now)
	refresh := settle || d.directory.refreshDue(now) || !d.directory.relaying
	if !d.directory.relaying {
		// The gateway that relayed before may still send what it saw
		// until it notices this one took over: its full relay to a
		// newcomer can carry this very gateway as failed, later than this
		// gateway's own relay. Once more, after it stopped, sets that
		// right.
		d.directory.settleAt = now.Add(relaySettle)
	}
	d.directory.relaying = true
	// A host that joined the site missed everything relayed before: send
	// it all now rather than at the next refresh.
	if d.directory.newcomers(members) {
		refresh = true
	}
	return d.directory.relay(d.members, remote, refresh)
}

// retireFellowGateways, on a gateway, tells the WAN pool at once when
// its site pool found another gateway of the site failed. The far end of
// a pair of sites learns of the failure only from the WAN pool, whose
// suspicion lasts up to six times longer than a small site pool's while
// few members confirm it; meanwhile this site already routes the pair
// through the next gateway, whose packets the far end refuses as coming
// from the wrong peer. The site pool's verdict is the site's own: a
// gateway it lost carries none of the site's traffic, whatever the WAN
// pool still sees. Each failure is retired once; a gateway that is in
// fact alive refutes it.
//
// A retired gateway that was only cut off for a while missed the intent
// and never refutes it; the WAN pool would hold it as leaving for good,
// while its site routes through it. So a gateway that sees one of its
// site's gateways alive in the site pool but leaving or left in the WAN
// pool asks it, in the site pool, to rejoin; it does, with a join newer
// than the intent.
func (d *Daemon) retireFellowGateways(members, remote []mesh.Member) {
	if d.wan == nil {
		return
	}
	now := time.Now()
	if d.rejoinWanted.Swap(false) && now.Sub(d.rejoinedAt) >= rejoinEvery {
		d.rejoinedAt = now
		d.log.Info("the site sees this gateway alive and the WAN pool does not: announcing it again")
		d.wan.Rejoin()
	}
	failed, alive := map[string]bool{}, map[string]bool{}
	for _, m := range members {
		switch m.Status {
		case mesh.StatusFailed:
			failed[m.Name] = true
		case mesh.StatusAlive:
			alive[m.Name] = true
		}
	}
	// A gateway cut off from most of its own site would retire every
	// other gateway at once: several failures count only while this
	// gateway sees most of the site alive. One is always told (a site of
	// two gateways has no majority to ask, and a gateway retired wrongly
	// refutes it).
	mayRetire := len(failed) <= 1 || len(alive) > len(failed)
	maps.DeleteFunc(d.retired, func(name string, _ bool) bool { return !failed[name] })
	maps.DeleteFunc(d.askedRejoin, func(_ string, at time.Time) bool { return now.Sub(at) >= rejoinEvery })
	me := d.ann.local()
	for _, m := range remote {
		gone := m.Status == mesh.StatusLeaving || m.Status == mesh.StatusLeft
		rejoin := alive[m.Name] && m.Name != me.Name && gone && now.Sub(d.askedRejoin[m.Name]) >= rejoinEvery
		retire := mayRetire && failed[m.Name] && m.Status == mesh.StatusAlive && !d.retired[m.Name]
		if !rejoin && !retire {
			continue
		}
		if ann, err := mesh.DecodeTags(m.Tags); err != nil || ann.SiteName() != me.SiteName() {
			continue
		}
		if rejoin {
			d.askedRejoin[m.Name] = now
			if err := d.members.Broadcast(eventRejoin, []byte(m.Name)); err != nil {
				d.log.Debug("ask a gateway to rejoin the WAN pool", "gateway", m.Name, "err", err)
			}
		}
		if retire {
			d.retired[m.Name] = true
			d.log.Info("gateway failed in the site pool: telling the WAN pool", "gateway", m.Name)
			d.wan.Retire(m.Name)
		}
	}
}

// isRelayer reports whether this gateway relays the WAN pool into its
// site: the lowest-named gateway of the site that its WAN pool shows
// alive, and only while that pool shows another site alive and most of
// its other members alive. One relayer keeps a gateway whose WAN uplink
// died, and which therefore sees every other gateway fail, from telling
// its site they all failed: it stops relaying as soon as the failures it
// sees outnumber the rest (before, it relayed the first ones it noticed,
// a fellow gateway's among them), and the next gateway, which sees it
// gone from the WAN pool, takes over with a full relay.
func (d *Daemon) isRelayer(remote []mesh.Member) bool {
	me := d.ann.local()
	connected := false
	alive, failed := 0, 0
	for _, m := range remote {
		if m.Name == me.Name {
			continue
		}
		switch m.Status {
		case mesh.StatusAlive:
			alive++
		case mesh.StatusFailed:
			failed++
			continue
		default:
			continue
		}
		ann, err := mesh.DecodeTags(m.Tags)
		if err != nil {
			continue
		}
		if ann.SiteName() != me.SiteName() {
			connected = true
		} else if ann.Role.Gateway && m.Name < me.Name {
			return false
		}
	}
	return connected && alive > failed
}

// updatePaths, on a gateway, announces what it learnt of its WAN paths:
// draining while it cannot forward (IP forwarding off, or its site's
// probes found it forwarding nothing), where it is seen from behind NAT,
// and the sites whose direct tunnel never came up.
func (d *Daemon) updatePaths(st *mesh.State, local mesh.Local) error {
	if !local.Gateway {
		return nil
	}
	now := time.Now()
	d.ejector.setFar(farOf(st, local.Name), now)
	d.takeReports(st, local, now)
	if d.ejector.decide(local.Name, st.Probers, st.Gateways, now) {
		_, by, until := d.ejector.ejected(now)
		d.log.Warn("the site's probes find no forwarding through this gateway; draining so the site's traffic takes another gateway",
			"reported_by", by, "for", until.Sub(now).Round(time.Second))
	}
	if why := d.ejector.takeDeclined(); why != "" {
		d.log.Warn("the site's probes find no forwarding through this gateway; not draining", "why", why)
	}
	why := d.drainReason(now)
	d.mu.Lock()
	d.drainWhy = why
	d.mu.Unlock()
	noDirect := d.paths.updateNoDirect(st, local.NAT, now)
	observed, symmetric := d.paths.observedEndpoint()
	if !d.ann.setPaths(why != "", observed, symmetric, noDirect) {
		return nil
	}
	a := d.ann.local()
	d.log.Warn("gateway paths changed; announcing them", "draining", a.Draining, "why", why, "observed", observed, "symmetric_nat", symmetric, "relayed", a.NoDirect)
	if err := d.ann.publish(); err != nil {
		return err
	}
	d.Kick() // recompute with the new role
	return nil
}

// drainingChanged asks for a pass (whose updatePaths announces it) when
// whether this gateway should drain no longer matches what it announced.
func (d *Daemon) drainingChanged() {
	l := d.ann.local()
	if l.Gateway && l.Draining != (d.drainReason(time.Now()) != "") {
		d.Kick()
	}
}

// checkForwarding reads the kernel's forwarding switches. Off, the host
// cannot carry its pods' traffic into the tunnel (status --check fails),
// and a gateway drains: the other hosts stop sending it transit.
func (d *Daemon) checkForwarding(missing map[string]string) {
	v4, v6, err := d.sys.Host.Forwarding()
	if err != nil {
		return
	}
	ok := true
	for _, seg := range d.config().Segments {
		if (seg.CIDR.Addr().Is4() && !v4) || (seg.CIDR.Addr().Is6() && !v6) {
			ok = false
		}
	}
	if !ok {
		missing["ip-forwarding"] = "IP forwarding is off for a segment's address family; pods cannot reach other hosts (sysctl net.ipv4.ip_forward / net.ipv6.conf.all.forwarding)"
	}
	if ok != d.forwarding {
		d.log.Warn("IP forwarding changed", "on", ok)
	}
	d.forwarding = ok
}

// askWhoamiIfDue, on a gateway behind NAT, asks the public gateways in the
// background where they see it from.
func (d *Daemon) askWhoamiIfDue() {
	l := d.ann.local()
	if d.wan == nil || !l.NAT || !d.paths.askDue(time.Now()) {
		return
	}
	wan, key := d.wan, l.PublicKey
	go func() {
		ep, symmetric, answered, err := askWhoami(wan, key)
		if err != nil || !ep.IsValid() {
			return
		}
		if d.paths.setObserved(ep, symmetric, answered) {
			d.Kick()
		}
	}()
}
