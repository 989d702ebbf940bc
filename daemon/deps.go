package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/cni"
	"github.com/meshd/meshd/cnm"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/wgdev"
)

// The daemon reaches the host only through the interfaces below, so its
// whole lifecycle (start order, undo, reconcile, reload, rotation,
// shutdown, crash cleanup) runs in tests against in-memory fakes.

// Cluster is the membership engine (serf, package cluster).
type Cluster interface {
	Members() []mesh.Member
	// SetTags republishes this host's announcement.
	SetTags(map[string]string) error
	// LamportTime orders slice claims the same way on every host.
	LamportTime() uint64
	// KeyringOp runs a gossip keyring operation on every member.
	KeyringOp(op, key string) (*cluster.KeyResponse, error)
	// Failed delivers why the cluster stopped on its own (a lost name
	// conflict); it is closed by Leave.
	Failed() <-chan error
	// Broadcast sends a user event to every member, best effort.
	Broadcast(name string, payload []byte) error
	// Ask queries the members whose tags match filter and returns the
	// answers that arrived within timeout.
	Ask(name string, payload []byte, filter map[string]string, timeout time.Duration) ([]cluster.Answer, error)
	// Retire tells every member that a member failed, as this host
	// learnt elsewhere before the pool's own failure detection could;
	// the member, if alive, refutes it. It returns at once.
	Retire(name string)
	// Rejoin announces this member alive again, newer than any leave
	// intent the pool holds for it. It returns at once.
	Rejoin()
	// Leave announces a graceful leave and stops. Safe to call twice.
	Leave() error
}

// Device is the WireGuard interface and the wgctrl client that configures
// it.
type Device interface {
	wgdev.Device
	wgdev.Client
	// SetAddrs makes the interface's addresses exactly addrs: the host's
	// mesh address on a cluster of several sites, none otherwise.
	SetAddrs(addrs []netip.Prefix) error
}

// Router programs the per-segment tables and rules (package routes).
type Router interface {
	// Set reads the kernel back and makes it equal cfg; Set(nil)
	// removes everything meshd owns, whoever installed it.
	Set(cfg *mesh.RouteConfig) error
	// SetFrom trusts that the kernel holds prev.
	SetFrom(prev, cfg *mesh.RouteConfig) error
	// Writes is the number of kernel writes so far: a read-back pass
	// that had to write restored something someone else removed.
	Ops() int
}

// Enforcer owns meshd's nftables table (package policy).
type Enforcer interface {
	Apply(*policy.Ruleset) error
	// Flush removes the table, whoever installed it.
	Flush() error
	Counters() ([]policy.Counter, error)
	// Intact reports whether the table is installed as last applied.
	Intact() error
}

// ConfigWriter keeps the container runtimes' network configs (CNI
// conflists) equal to this host's slices. They stay when meshd stops: a
// runtime needs a container's conflist to tear its network down.
type ConfigWriter interface {
	Write(segs []cni.Segment, o cni.Options) error
}

// Underlay is what the host decides that the config may leave open.
type Underlay struct {
	// Advertise is the gossip address other hosts reach this one at.
	Advertise netip.Addr
	// Endpoint is the announced WireGuard endpoint.
	Endpoint netip.AddrPort
	// MTU is the tunnel MTU.
	MTU int
}

// System creates everything the daemon does to the host. HostSystem is
// the real one; tests substitute fakes field by field.
type System struct {
	// Host answers the checks made before anything is created.
	Host HostView
	// Lock keeps a second daemon out of this network namespace: it
	// would start by "cleaning up" the first one's state.
	Lock func() (io.Closer, error)
	// Underlay resolves addresses and MTU the config left to the host.
	Underlay func(*config.Config) (Underlay, error)
	// Router opens the route programmer; the closer releases its handle.
	Router func(*slog.Logger) (Router, io.Closer, error)
	// WatchRoutes calls kick when a route or rule meshd owns is deleted,
	// until ctx ends; it returns an error when the subscription breaks.
	WatchRoutes func(ctx context.Context, kick func()) error
	// Enforcer opens meshd's nftables table for the interface.
	Enforcer func(iface string, log *slog.Logger) (Enforcer, io.Closer, error)
	// Device creates the WireGuard interface.
	Device func(wgdev.Options) (Device, error)
	// Join starts membership; kick must not block.
	Join func(cluster.MembershipConfig, func()) (Cluster, error)
	// ConfigWriter writes CNI conflists into dir ("" disables them).
	ConfigWriter func(dir string) ConfigWriter
	// ContainerDataplane creates bridges and veths for the Docker
	// driver; only asked for when docker_plugin_socket is set.
	ContainerDataplane func() (cnm.Dataplane, io.Closer, error)
	// Echo sends one ICMP echo from src to dst through whatever the
	// routes say, and waits for the reply until ctx ends.
	Echo func(ctx context.Context, src, dst netip.Addr) error
}
