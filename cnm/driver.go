// Package cnm makes meshd Docker's network: it serves libnetwork's remote
// network driver and IPAM driver protocol (/Plugin.Activate,
// /NetworkDriver.*, /IpamDriver.*) as one http.Handler.
//
// A Docker network is one IPv4 segment on this host. Its containers plug
// into the segment's bridge, the same one the CNI conflists name (package
// cni), holding the gateway of this host's slice; they get addresses from
// the slice's pool, the tunnel MTU and a route to every segment through
// the gateway (cni.Plan), exactly as a podman or Kubernetes container of
// that segment does. Addresses are reserved in host-local's lease
// directory (see leases), so both runtimes share the pool.
//
// What Docker created is kept in a state file (networks, endpoints) and in
// the lease directory (addresses), so a restarted meshd answers Docker's
// calls about existing networks and endpoints; the driver never removes
// kernel state when meshd stops, so running containers keep their
// network. The OS is behind Dataplane, so the protocol is tested without
// root.
package cnm

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/cni"
	"github.com/meshd/meshd/internal/fileio"
)

// Host reports this host's segments (with the slices held now; a slice
// not yet claimed is invalid) and the tunnel MTU. It is called on every
// request and must be safe for concurrent use.
type Host func() (segments []cni.Segment, mtu int)

// Dataplane is everything the driver does to the kernel. Implementations
// must be idempotent: Docker retries, and a restarted meshd repeats.
type Dataplane interface {
	// EnsureBridge creates the bridge if missing, gives it the gateway
	// address (prefix: the slice) and mtu, and brings it up. A bridge the
	// CNI bridge plugin created with the same address is used as it is.
	EnsureBridge(name string, gateway netip.Prefix, mtu int) error
	// RemoveBridge deletes the bridge if nothing is attached to it.
	RemoveBridge(name string) error
	// AddVeth creates a veth pair: host on bridge and up, peer down with
	// mtu (and mac unless nil), for Docker to move into the container.
	AddVeth(bridge, host, peer string, mtu int, mac net.HardwareAddr) error
	// DelVeth deletes the pair by its host end; a missing link is fine
	// (the container's namespace may have taken it along).
	DelVeth(host string) error
}

// Options configure a Driver.
type Options struct {
	Host Host
	// StatePath is the file networks and endpoints are kept in (in
	// meshd's data_dir).
	StatePath string
	// LeaseDir is host-local's dataDir (cni_ipam_dir).
	LeaseDir  string
	Dataplane Dataplane
	Log       *slog.Logger
}

// Driver serves one host's Docker networks. Its methods are safe for
// concurrent use; mu serializes every call, which keeps each one's state
// change and kernel change together (Docker's calls are few and short).
type Driver struct {
	host   Host
	path   string
	leases leases
	dp     Dataplane
	log    *slog.Logger

	calls map[string]func(*json.Decoder) (any, error) // set by New, read-only
	now   func() time.Time                            // time.Now; tests move it

	mu sync.Mutex // guards st and pending
	st state
	// pending holds, per segment, the pool Docker requested but has not
	// yet created a network on (in memory only: after a restart Docker
	// asks again). An entry older than pendingTTL is ignored, in case
	// Docker died before releasing it.
	pending map[string]pendingPool
}

type pendingPool struct {
	id string
	at time.Time
}

// pendingTTL is far longer than Docker takes from RequestPool to
// CreateNetwork (milliseconds).
const pendingTTL = time.Minute

// state is what the state file holds.
type state struct {
	Version   int                  `json:"version"`
	Networks  map[string]*network  `json:"networks"`
	Endpoints map[string]*endpoint `json:"endpoints"`
}

const stateVersion = 1

type network struct {
	Segment string       `json:"segment"`
	Pool    netip.Prefix `json:"pool"`
	Gateway netip.Addr   `json:"gateway"`
}

type endpoint struct {
	Network string       `json:"network"`
	Address netip.Prefix `json:"address"`
	MAC     string       `json:"mac,omitempty"`
	// Set while joined to a container.
	Sandbox string         `json:"sandbox,omitempty"`
	HostIf  string         `json:"host_if,omitempty"`
	Routes  []netip.Prefix `json:"routes,omitempty"`
}

// New loads the state file (a missing one is an empty state) and frees
// addresses this driver reserved that no endpoint holds: a crash between
// reserving and recording, or a release Docker sent while meshd was down.
func New(o Options) (*Driver, error) {
	if o.Host == nil || o.Dataplane == nil || o.StatePath == "" || o.LeaseDir == "" {
		return nil, errors.New("cnm: Host, Dataplane, StatePath and LeaseDir are required")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{host: o.Host, path: o.StatePath, leases: leases{dir: o.LeaseDir}, dp: o.Dataplane, log: o.Log, pending: map[string]pendingPool{}}
	d.st = state{Version: stateVersion, Networks: map[string]*network{}, Endpoints: map[string]*endpoint{}}
	raw, err := fileio.ReadRegular(o.StatePath, fileio.MaxStateSize)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("cnm: %w", err)
	default:
		if err := json.Unmarshal(raw, &d.st); err != nil {
			return nil, fmt.Errorf("cnm: %s is not a Docker driver state file (%v); move it away to start over (Docker's meshd networks then need recreating)", o.StatePath, err)
		}
		if d.st.Version != stateVersion {
			return nil, fmt.Errorf("cnm: %s has version %d, this meshd reads %d", o.StatePath, d.st.Version, stateVersion)
		}
		if d.st.Networks == nil {
			d.st.Networks = map[string]*network{}
		}
		if d.st.Endpoints == nil {
			d.st.Endpoints = map[string]*endpoint{}
		}
	}
	d.collectLeases()
	d.calls = d.routes()
	d.now = time.Now
	return d, nil
}

func (d *Driver) collectLeases() {
	held := map[netip.Addr]bool{}
	for _, ep := range d.st.Endpoints {
		held[ep.Address.Addr()] = true
	}
	segs, _ := d.host()
	for _, s := range segs {
		if !s.Subnet.IsValid() {
			continue
		}
		addrs, err := d.leases.ours(cni.NetworkName(s.Name), s.Subnet)
		if err != nil {
			d.log.Warn("docker driver: cannot list address leases", "segment", s.Name, "err", err)
			continue
		}
		for _, a := range addrs {
			if !held[a] {
				if err := d.leases.release(cni.NetworkName(s.Name), a); err == nil {
					d.log.Info("docker driver: freed an address no endpoint holds", "segment", s.Name, "address", a)
				}
			}
		}
	}
}

// saveLocked writes the state file; every change is on disk before Docker
// hears it succeeded.
func (d *Driver) saveLocked() error {
	raw, err := json.MarshalIndent(&d.st, "", "  ")
	if err != nil {
		return err
	}
	if err := fileio.WriteAtomic(d.path, append(raw, '\n'), 0o600, fileio.Overwrite); err != nil {
		return fmt.Errorf("save Docker driver state: %w", err)
	}
	return nil
}

// segment finds name among the host's segments with its plan.
func (d *Driver) segment(name string) (cni.Segment, cni.Plan, int, error) {
	segs, mtu := d.host()
	for _, s := range segs {
		if s.Name != name {
			continue
		}
		if !s.Subnet.IsValid() {
			return s, cni.Plan{}, 0, fmt.Errorf("segment %q has no slice on this host yet (meshd is still claiming one); try again in a few seconds", name)
		}
		plan, err := cni.NewPlan(s, segs, mtu)
		return s, plan, mtu, err
	}
	return cni.Segment{}, cni.Plan{}, 0, fmt.Errorf("segment %q is not configured on this host (segments: %s)", name, describe(segs))
}

// bySlice finds the segment whose slice on this host is pool.
func (d *Driver) bySlice(pool netip.Prefix) (string, bool) {
	segs, _ := d.host()
	for _, s := range segs {
		if s.Subnet == pool {
			return s.Name, true
		}
	}
	return "", false
}

func describe(segs []cni.Segment) string {
	var parts []string
	for _, s := range segs {
		slice := "no slice yet"
		if s.Subnet.IsValid() {
			slice = s.Subnet.String()
		}
		parts = append(parts, fmt.Sprintf("%s %s", s.Name, slice))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// ---- NetworkDriver ----

func (d *Driver) createNetwork(req createNetworkRequest) error {
	if req.NetworkID == "" {
		return errors.New("CreateNetwork without a NetworkID")
	}
	if v, _ := req.Options[enableIPv6].(bool); v || len(req.IPv6Data) > 0 {
		return errIPv6
	}
	wanted, err := segmentOption(req.Options)
	if err != nil {
		return err
	}
	if len(req.IPv4Data) != 1 {
		return fmt.Errorf("a meshd network has exactly one IPv4 pool, got %d (leave out extra --subnet flags)", len(req.IPv4Data))
	}
	data := req.IPv4Data[0]
	if data.AddressSpace != addressSpace {
		return fmt.Errorf("the pool must come from meshd's IPAM driver: add --ipam-driver meshd (address space %q is not meshd's)", data.AddressSpace)
	}
	pool, err := netip.ParsePrefix(data.Pool)
	if err != nil {
		return fmt.Errorf("pool %q: %v", data.Pool, err)
	}
	seg, ok := d.bySlice(pool)
	if !ok {
		return fmt.Errorf("pool %s is not this host's slice of any segment (the slice may have moved: recreate the network)", pool)
	}
	if wanted != "" && wanted != seg {
		return fmt.Errorf("-o segment=%s, but the IPAM driver gave segment %s's slice %s: name the same segment with --ipam-opt segment=%s", wanted, seg, pool, wanted)
	}
	_, plan, mtu, err := d.segment(seg)
	if err != nil {
		return err
	}
	if gw, err := netip.ParsePrefix(data.Gateway); err != nil || gw.Addr() != plan.Gateway {
		return fmt.Errorf("gateway %q: segment %s's gateway on this host is %s (the bridge's address); leave out --gateway", data.Gateway, seg, plan.Gateway)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	for id, n := range d.st.Networks {
		if n.Segment == seg && id != req.NetworkID {
			return fmt.Errorf("segment %s already has Docker network %.12s on this host; attach containers to that one (one Docker network per segment)", seg, id)
		}
	}
	if err := d.dp.EnsureBridge(plan.Bridge, netip.PrefixFrom(plan.Gateway, pool.Bits()), mtu); err != nil {
		return fmt.Errorf("bridge %s: %w", plan.Bridge, err)
	}
	d.st.Networks[req.NetworkID] = &network{Segment: seg, Pool: pool, Gateway: plan.Gateway}
	delete(d.pending, seg)
	if err := d.saveLocked(); err != nil {
		delete(d.st.Networks, req.NetworkID)
		return err
	}
	d.log.Info("docker network created", "network", short(req.NetworkID), "segment", seg, "bridge", plan.Bridge)
	return nil
}

var errIPv6 = errors.New("meshd's Docker networks are IPv4 only: Docker 20.10 needs an IPv4 pool in every network, and a meshd network is one segment; leave out --ipv6 (IPv6 segments work with podman and CNI)")

// segmentOption reads -o segment=NAME; other -o keys are refused, so a
// typo is not silently ignored.
func segmentOption(opts map[string]any) (string, error) {
	generic, _ := opts[genericOptions].(map[string]any)
	var seg string
	keys := make([]string, 0, len(generic))
	for k := range generic {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case k == optSegment:
			s, ok := generic[k].(string)
			if !ok || s == "" {
				return "", errors.New("-o segment needs a segment name")
			}
			seg = s
		case strings.HasPrefix(k, dockerPrefix):
		default:
			return "", fmt.Errorf("unknown option -o %s; the meshd driver knows only -o segment=NAME", k)
		}
	}
	return seg, nil
}

func (d *Driver) deleteNetwork(req networkRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.st.Networks[req.NetworkID]
	if !ok {
		return nil // already gone: Docker retries
	}
	delete(d.st.Networks, req.NetworkID)
	if err := d.saveLocked(); err != nil {
		d.st.Networks[req.NetworkID] = n
		return err
	}
	// The bridge goes only when nothing (no podman container either) is
	// attached; then the next `docker network create` finds no route of
	// the slice on the host, and the CNI plugin recreates it on demand.
	if err := d.dp.RemoveBridge(cni.BridgeName(n.Segment)); err != nil {
		d.log.Warn("docker network deleted; its bridge stays", "segment", n.Segment, "err", err)
	}
	d.log.Info("docker network deleted", "network", short(req.NetworkID), "segment", n.Segment)
	return nil
}

func (d *Driver) createEndpoint(req createEndpointRequest) (createEndpointResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.st.Networks[req.NetworkID]
	if !ok {
		return createEndpointResponse{}, unknownNetwork(req.NetworkID)
	}
	if req.EndpointID == "" || req.Interface == nil || req.Interface.Address == "" {
		return createEndpointResponse{}, errors.New("CreateEndpoint needs an EndpointID and the address meshd's IPAM driver gave (is the network's IPAM driver meshd?)")
	}
	if req.Interface.AddressIPv6 != "" {
		return createEndpointResponse{}, errIPv6
	}
	addr, err := netip.ParsePrefix(req.Interface.Address)
	if err != nil || !n.Pool.Contains(addr.Addr()) {
		return createEndpointResponse{}, fmt.Errorf("address %q is not in the network's pool %s", req.Interface.Address, n.Pool)
	}
	if old, ok := d.st.Endpoints[req.EndpointID]; ok && old.Address == addr {
		return createEndpointResponse{}, nil // a retry
	}
	// RequestAddress reserved it; reassert, in case meshd restarted in
	// between and freed it as unheld.
	if _, err := d.leases.reserve(cni.NetworkName(n.Segment), addr.Addr(), poolID(n.Segment, n.Pool)); err != nil {
		return createEndpointResponse{}, fmt.Errorf("address %s: %w", addr.Addr(), err)
	}
	d.st.Endpoints[req.EndpointID] = &endpoint{Network: req.NetworkID, Address: addr, MAC: req.Interface.MacAddress}
	if err := d.saveLocked(); err != nil {
		delete(d.st.Endpoints, req.EndpointID)
		return createEndpointResponse{}, err
	}
	return createEndpointResponse{}, nil
}

func unknownNetwork(id string) error {
	return fmt.Errorf("network %.12s is not a meshd network on this host (meshd's state file lost it? recreate the network)", id)
}

func (d *Driver) deleteEndpoint(req endpointRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.st.Endpoints[req.EndpointID]
	if !ok {
		return nil
	}
	if ep.HostIf != "" {
		if err := d.dp.DelVeth(ep.HostIf); err != nil {
			return err
		}
	}
	delete(d.st.Endpoints, req.EndpointID)
	return d.saveLocked()
}

func (d *Driver) endpointInfo(req endpointRequest) (endpointInfoResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.st.Endpoints[req.EndpointID]
	if !ok {
		return endpointInfoResponse{}, fmt.Errorf("endpoint %.12s is not known to meshd", req.EndpointID)
	}
	info := map[string]any{"address": ep.Address.String()}
	if n, ok := d.st.Networks[ep.Network]; ok {
		info["segment"] = n.Segment
		info["bridge"] = cni.BridgeName(n.Segment)
	}
	if ep.HostIf != "" {
		info["host_interface"] = ep.HostIf
	}
	return endpointInfoResponse{Value: info}, nil
}

// Interface names: the host end stays on the bridge, the peer is what
// Docker moves into the container and renames to ethN.
const (
	hostIfPrefix = "mdh"
	peerIfPrefix = "mdc"
	ifIDLen      = 11 // 3 + 11 = 14 bytes, within IFNAMSIZ
)

func ifNames(endpointID string) (host, peer string) {
	id := endpointID
	if len(id) > ifIDLen {
		id = id[:ifIDLen]
	}
	return hostIfPrefix + id, peerIfPrefix + id
}

func (d *Driver) join(req joinRequest) (joinResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.st.Endpoints[req.EndpointID]
	if !ok {
		return joinResponse{}, fmt.Errorf("endpoint %.12s is not known to meshd (created while meshd's state was lost?); restart the container", req.EndpointID)
	}
	n, ok := d.st.Networks[ep.Network]
	if !ok {
		return joinResponse{}, unknownNetwork(ep.Network)
	}
	_, plan, mtu, err := d.segment(n.Segment)
	if err != nil {
		return joinResponse{}, err
	}
	if plan.Subnet != n.Pool {
		return joinResponse{}, fmt.Errorf("segment %s's slice on this host moved from %s to %s; recreate the Docker network", n.Segment, n.Pool, plan.Subnet)
	}
	var mac net.HardwareAddr
	if ep.MAC != "" {
		if mac, err = net.ParseMAC(ep.MAC); err != nil {
			return joinResponse{}, fmt.Errorf("MAC address %q: %v", ep.MAC, err)
		}
	}
	// After a reboot Docker restarts containers before anyone else made
	// the bridge.
	if err := d.dp.EnsureBridge(plan.Bridge, netip.PrefixFrom(plan.Gateway, n.Pool.Bits()), mtu); err != nil {
		return joinResponse{}, fmt.Errorf("bridge %s: %w", plan.Bridge, err)
	}
	host, peer := ifNames(req.EndpointID)
	if err := d.dp.AddVeth(plan.Bridge, host, peer, mtu, mac); err != nil {
		return joinResponse{}, err
	}
	// Routes another meshd endpoint already gave this container would
	// fail the join with "file exists" (a third segment's CIDR when the
	// container is on two).
	given := map[netip.Prefix]bool{}
	for id, other := range d.st.Endpoints {
		if id != req.EndpointID && req.SandboxKey != "" && other.Sandbox == req.SandboxKey {
			for _, r := range other.Routes {
				given[r] = true
			}
		}
	}
	resp := joinResponse{
		InterfaceName: &interfaceName{SrcName: peer, DstPrefix: "eth"},
		// No default route: the overlay is the segments, and meshd does
		// not masquerade to the outside.
		DisableGatewayService: true,
	}
	var routes []netip.Prefix
	for _, r := range plan.Routes {
		if !given[r] {
			routes = append(routes, r)
			resp.StaticRoutes = append(resp.StaticRoutes, staticRoute{Destination: r.String(), RouteType: routeNextHop, NextHop: plan.Gateway.String()})
		}
	}
	ep.Sandbox, ep.HostIf, ep.Routes = req.SandboxKey, host, routes
	if err := d.saveLocked(); err != nil {
		d.dp.DelVeth(host)
		ep.Sandbox, ep.HostIf, ep.Routes = "", "", nil
		return joinResponse{}, err
	}
	return resp, nil
}

func (d *Driver) leave(req endpointRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.st.Endpoints[req.EndpointID]
	if !ok {
		return nil
	}
	host := ep.HostIf
	if host == "" {
		host, _ = ifNames(req.EndpointID)
	}
	if err := d.dp.DelVeth(host); err != nil {
		return err
	}
	ep.Sandbox, ep.HostIf, ep.Routes = "", "", nil
	return d.saveLocked()
}

// ---- IpamDriver ----

// poolID names a pool by segment and slice, so a restarted meshd (or one
// whose slice moved) can tell what Docker refers to without saved state.
func poolID(segment string, pool netip.Prefix) string {
	return "meshd/" + segment + "/" + pool.String()
}

func parsePoolID(id string) (string, netip.Prefix, error) {
	rest, ok := strings.CutPrefix(id, "meshd/")
	seg, p, ok2 := strings.Cut(rest, "/")
	pool, err := netip.ParsePrefix(p)
	if !ok || !ok2 || err != nil || seg == "" {
		return "", netip.Prefix{}, fmt.Errorf("pool %q is not one of meshd's", id)
	}
	return seg, pool, nil
}

func (d *Driver) requestPool(req requestPoolRequest) (requestPoolResponse, error) {
	if req.V6 {
		return requestPoolResponse{}, errIPv6
	}
	if req.SubPool != "" {
		return requestPoolResponse{}, errors.New("--ip-range is not supported: meshd hands out addresses from the whole pool of this host's slice")
	}
	seg, err := d.poolSegment(req)
	if err != nil {
		return requestPoolResponse{}, err
	}
	s, plan, _, err := d.segment(seg)
	if err != nil {
		return requestPoolResponse{}, err
	}
	if !s.Subnet.Addr().Is4() {
		return requestPoolResponse{}, fmt.Errorf("segment %s is IPv6: %w", seg, errIPv6)
	}
	id := poolID(seg, s.Subnet)

	d.mu.Lock()
	defer d.mu.Unlock()
	for nid, n := range d.st.Networks {
		if n.Segment == seg {
			return requestPoolResponse{}, fmt.Errorf("segment %s already has Docker network %.12s on this host; attach containers to that one (one Docker network per segment)", seg, nid)
		}
	}
	if p, held := d.pending[seg]; held && d.now().Sub(p.at) < pendingTTL {
		// Docker asks again when it finds the pool routed on the host:
		// the segment's bridge exists because CNI containers use it.
		return requestPoolResponse{}, fmt.Errorf("Docker refused segment %s's slice %s because this host already routes it (the bridge %s of CNI/podman containers); add --subnet %s, which Docker takes as given", seg, s.Subnet, plan.Bridge, s.Subnet)
	}
	d.pending[seg] = pendingPool{id: id, at: d.now()}
	return requestPoolResponse{
		PoolID: id,
		Pool:   s.Subnet.String(),
		Data:   map[string]string{gatewayLabel: withBits(plan.Gateway, s.Subnet)},
	}, nil
}

// poolSegment decides which segment a pool request is for: Docker passes
// -o options only to the network driver, so the IPAM driver learns it
// from --ipam-opt segment=NAME, or --subnet (a slice of this host), or it
// is the host's only IPv4 segment.
func (d *Driver) poolSegment(req requestPoolRequest) (string, error) {
	var named string
	for k, v := range req.Options {
		switch {
		case k == optSegment:
			named = v
		case strings.HasPrefix(k, dockerPrefix):
		default:
			return "", fmt.Errorf("unknown option --ipam-opt %s; meshd's IPAM driver knows only --ipam-opt segment=NAME", k)
		}
	}
	if req.Pool != "" {
		pool, err := netip.ParsePrefix(req.Pool)
		if err != nil {
			return "", fmt.Errorf("--subnet %q: %v", req.Pool, err)
		}
		seg, ok := d.bySlice(pool)
		if !ok {
			segs, _ := d.host()
			return "", fmt.Errorf("--subnet %s is not this host's slice of any segment (%s)", pool, describe(segs))
		}
		if named != "" && named != seg {
			return "", fmt.Errorf("--subnet %s is segment %s's slice, not segment %s's", pool, seg, named)
		}
		return seg, nil
	}
	if named != "" {
		return named, nil
	}
	segs, _ := d.host()
	var v4 []string
	for _, s := range segs {
		if s.CIDR.Addr().Is4() {
			v4 = append(v4, s.Name)
		}
	}
	if len(v4) == 1 {
		return v4[0], nil
	}
	return "", fmt.Errorf("which segment? Docker gives -o options to the network driver only; tell the IPAM driver with --ipam-opt segment=NAME (segments on this host: %s)", describe(segs))
}

func (d *Driver) releasePool(req releasePoolRequest) error {
	seg, _, err := parsePoolID(req.PoolID)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pending[seg].id == req.PoolID {
		delete(d.pending, seg)
	}
	return nil
}

func (d *Driver) requestAddress(req requestAddressRequest) (requestAddressResponse, error) {
	seg, pool, err := parsePoolID(req.PoolID)
	if err != nil {
		return requestAddressResponse{}, err
	}
	_, plan, _, err := d.segment(seg)
	if err != nil {
		return requestAddressResponse{}, err
	}
	if plan.Subnet != pool {
		return requestAddressResponse{}, fmt.Errorf("segment %s's slice on this host moved from %s to %s; recreate the Docker network", seg, pool, plan.Subnet)
	}
	var want netip.Addr
	if req.Address != "" {
		if want, err = netip.ParseAddr(req.Address); err != nil {
			return requestAddressResponse{}, fmt.Errorf("address %q: %v", req.Address, err)
		}
	}
	if req.Options[requestAddressType] == gatewayLabel {
		if want.IsValid() && want != plan.Gateway {
			return requestAddressResponse{}, fmt.Errorf("--gateway %s: segment %s's gateway on this host is %s (the bridge's address); leave out --gateway", want, seg, plan.Gateway)
		}
		return requestAddressResponse{Address: withBits(plan.Gateway, pool)}, nil
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	netName := cni.NetworkName(seg)
	tag := poolID(seg, pool)
	if want.IsValid() {
		if !pool.Contains(want) || want == pool.Addr() || want == plan.Gateway || (want.Is4() && want == plan.RangeEnd.Next()) {
			return requestAddressResponse{}, fmt.Errorf("--ip %s: not a container address of segment %s's slice %s on this host", want, seg, pool)
		}
		created, err := d.leases.reserve(netName, want, tag)
		if err == nil && !created {
			err = errTaken
		}
		if err != nil {
			return requestAddressResponse{}, fmt.Errorf("--ip %s: %w", want, err)
		}
		return requestAddressResponse{Address: withBits(want, pool)}, nil
	}
	for a := plan.RangeStart; a.IsValid() && pool.Contains(a) && a.Compare(plan.RangeEnd) <= 0; a = a.Next() {
		created, err := d.leases.reserve(netName, a, tag)
		if created {
			return requestAddressResponse{Address: withBits(a, pool)}, nil
		}
		if err != nil && !errors.Is(err, errTaken) {
			return requestAddressResponse{}, err
		}
	}
	return requestAddressResponse{}, fmt.Errorf("no free address in segment %s's pool %s-%s on this host: all %d are in use by Docker and CNI containers", seg, plan.RangeStart, plan.RangeEnd, d.leases.inUse(netName, pool))
}

func (d *Driver) releaseAddress(req releaseAddressRequest) error {
	seg, pool, err := parsePoolID(req.PoolID)
	if err != nil {
		return err
	}
	a, err := netip.ParseAddr(req.Address)
	if err != nil {
		return fmt.Errorf("address %q: %v", req.Address, err)
	}
	if !pool.Contains(a) {
		return fmt.Errorf("address %s is not in pool %s", a, pool)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.leases.release(cni.NetworkName(seg), a)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
