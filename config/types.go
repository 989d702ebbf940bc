// Package config reads meshd's TOML configuration (through viper, with
// MESHD_SECTION_KEY environment overrides) and validates it before anything
// on the host is touched.
package config

import (
	"net/netip"
	"time"

	"github.com/meshd/meshd/policy"
)

// Config is the validated, defaulted configuration. Every field has been
// checked by Load; consumers never re-validate.
type Config struct {
	NodeName      string // default: hostname
	DataDir       string // holds the WireGuard private key and serf snapshot
	ControlSocket string
	LogLevel      string // debug | info | warn | error
	LogFormat     string // text | json

	Cluster   Cluster
	Site      Site
	WAN       WAN
	WireGuard WireGuard
	Routing   Routing
	Segments  []Segment
	Identity  Identity
	// Allow holds the [[allow]] rules as written; policy.Compile has
	// accepted them against Segments.
	Allow []policy.Rule
	// CNIConfDir receives one CNI conflist per segment; "" disables them.
	CNIConfDir string
	// CNIIPAMDir is host-local's lease directory, shared with the Docker
	// driver's address reservations.
	CNIIPAMDir string
	// DockerPluginSocket serves Docker's network and IPAM plugin API; ""
	// disables it.
	DockerPluginSocket string
	Metrics            Metrics
	// UntrackedSameSegment turns on the same-segment fast path: overlay
	// traffic within a segment skips conntrack (policy.Ruleset.Untracked).
	UntrackedSameSegment bool
}

// Cluster configures serf membership.
type Cluster struct {
	BindAddr      netip.Addr
	BindPort      int
	AdvertiseAddr netip.Addr // default: BindAddr
	Join          []string   // host:port seeds, retried in the background forever
	GossipKeyFile string
	// GossipKey is the decoded content of GossipKeyFile (16, 24 or 32 bytes).
	GossipKey []byte
	// GossipKeyring is where serf persists the keyring once keys are
	// rotated; it takes precedence over GossipKey at start.
	GossipKeyring string
	// Profile picks serf's timer set; ProbeInterval, when non-zero,
	// overrides its probe interval (and so how soon a dead host is
	// dropped).
	Profile       Profile
	ProbeInterval time.Duration
}

// Mode picks the WireGuard implementation.
type Mode string

const (
	ModeAuto      Mode = "auto"
	ModeKernel    Mode = "kernel"
	ModeUserspace Mode = "userspace"
)

// WireGuard configures the tunnel device.
type WireGuard struct {
	Interface           string
	ListenPort          int
	Mode                Mode
	MTU                 int            // 0: derive from the underlay
	Endpoint            netip.AddrPort // advertised; default AdvertiseAddr:ListenPort
	PersistentKeepalive int            // seconds, 0 disables (meshd keeps NATed tunnels open itself)
}

// Routing configures where meshd's routes and rules live in the kernel.
type Routing struct {
	TableBase    int // segment i uses table TableBase+i
	RulePriority int // rules use RulePriority and RulePriority+1
}

// Segment is one named overlay network and this host's slice of it.
type Segment struct {
	Name string
	CIDR netip.Prefix
	// Subnet is the configured slice; invalid (zero) when the host claims
	// a free slice of HostPrefix bits at run time.
	Subnet     netip.Prefix
	HostPrefix int
	// SiteBlock is this host's site's block of the segment (one route
	// per segment in every other site); invalid on a single site.
	SiteBlock netip.Prefix
}
