package cnm

import "net/netip"

// The wire types of Docker's libnetwork plugin protocol, as Docker 20.10
// sends and reads them (libnetwork drivers/remote/api and
// ipams/remote/api). Field names are the JSON keys: Go's encoding
// matches them case-insensitively, as Docker's own decoder does.

const (
	// contentType is what Docker's plugin client sends and accepts.
	contentType = "application/vnd.docker.plugins.v1+json"

	networkDriver = "NetworkDriver"
	ipamDriver    = "IpamDriver"

	// genericOptions holds the -o key=value pairs of `docker network
	// create` inside CreateNetworkRequest.Options.
	genericOptions = "com.docker.network.generic"
	enableIPv6     = "com.docker.network.enable_ipv6"
	// gatewayLabel marks the gateway request in RequestAddress's options
	// and carries the gateway in RequestPoolResponse.Data.
	gatewayLabel       = "com.docker.network.gateway"
	requestAddressType = "RequestAddressType"
	dockerPrefix       = "com.docker."

	// optSegment names the segment, as -o segment=NAME (network driver)
	// and --ipam-opt segment=NAME (IPAM driver).
	optSegment = "segment"

	// addressSpace is the only one the IPAM driver has: segments and
	// slices are the daemon's, not Docker's.
	addressSpace = "meshd"
)

type activateResponse struct {
	Implements []string
}

// errResponse answers a network driver call that failed; Docker reads Err.
type errResponse struct {
	Err string
}

// ipamErrResponse answers an IPAM call that failed; Docker's IPAM client
// reads Error (and an HTTP error status's body as Err), so both are set.
type ipamErrResponse struct {
	Error string
	Err   string
}

type capabilitiesResponse struct {
	Scope             string
	ConnectivityScope string
}

type ipamData struct {
	AddressSpace string
	Pool         string
	Gateway      string
	AuxAddresses map[string]string
}

type createNetworkRequest struct {
	NetworkID string
	Options   map[string]any
	IPv4Data  []ipamData
	IPv6Data  []ipamData
}

type networkRequest struct {
	NetworkID string
}

type endpointInterface struct {
	Address     string `json:",omitempty"`
	AddressIPv6 string `json:",omitempty"`
	MacAddress  string `json:",omitempty"`
}

type createEndpointRequest struct {
	NetworkID  string
	EndpointID string
	Interface  *endpointInterface
	Options    map[string]any
}

type createEndpointResponse struct {
	// Interface carries only what the driver chose itself; meshd takes
	// Docker's address and MAC, so it is always empty.
	Interface *endpointInterface `json:",omitempty"`
}

type endpointRequest struct {
	NetworkID  string
	EndpointID string
}

type endpointInfoResponse struct {
	Value map[string]any
}

type joinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxKey string
	Options    map[string]any
}

type interfaceName struct {
	SrcName   string
	DstPrefix string
}

// Route types of a StaticRoute (libnetwork types.NEXTHOP, CONNECTED).
const routeNextHop = 0

type staticRoute struct {
	Destination string
	RouteType   int
	NextHop     string
}

type joinResponse struct {
	InterfaceName         *interfaceName
	Gateway               string
	GatewayIPv6           string
	StaticRoutes          []staticRoute
	DisableGatewayService bool
}

type ipamCapabilitiesResponse struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

type addressSpacesResponse struct {
	LocalDefaultAddressSpace  string
	GlobalDefaultAddressSpace string
}

type requestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

type requestPoolResponse struct {
	PoolID string
	Pool   string
	Data   map[string]string
}

type releasePoolRequest struct {
	PoolID string
}

type requestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

type requestAddressResponse struct {
	Address string
	Data    map[string]string
}

type releaseAddressRequest struct {
	PoolID  string
	Address string
}

// withBits renders an address in the CIDR form Docker parses, with the
// pool's prefix length.
func withBits(a netip.Addr, pool netip.Prefix) string {
	return netip.PrefixFrom(a, pool.Bits()).String()
}
