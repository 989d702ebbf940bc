package cnm

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/cni"
)

// fakeDataplane records what the driver asked of the kernel. Like the
// kernel, it refuses a veth on a bridge that does not exist and a second
// link with a name in use; DelVeth of a missing link succeeds.
type fakeDataplane struct {
	mu      sync.Mutex
	ops     []string
	bridges map[string]string // name -> gateway prefix
	veths   map[string]string // host end -> bridge
}

func newFake() *fakeDataplane {
	return &fakeDataplane{bridges: map[string]string{}, veths: map[string]string{}}
}

func (f *fakeDataplane) EnsureBridge(name string, gw netip.Prefix, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("bridge %s %s mtu %d", name, gw, mtu))
	f.bridges[name] = gw.String()
	return nil
}

func (f *fakeDataplane) RemoveBridge(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for h, br := range f.veths {
		if br == name {
			return fmt.Errorf("%s still has %s attached", name, h)
		}
	}
	f.ops = append(f.ops, "del bridge "+name)
	delete(f.bridges, name)
	return nil
}

func (f *fakeDataplane) AddVeth(bridge, host, peer string, mtu int, mac net.HardwareAddr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.bridges[bridge]; !ok {
		return fmt.Errorf("bridge %s: link not found", bridge)
	}
	delete(f.veths, host)
	f.ops = append(f.ops, fmt.Sprintf("veth %s/%s on %s mtu %d mac %q", host, peer, bridge, mtu, mac.String()))
	f.veths[host] = bridge
	return nil
}

func (f *fakeDataplane) DelVeth(host string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.veths[host]; ok {
		f.ops = append(f.ops, "del veth "+host)
		delete(f.veths, host)
	}
	return nil
}

func (f *fakeDataplane) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ops := f.ops
	f.ops = nil
	return ops
}

var (
	blue   = cni.Segment{Name: "blue", CIDR: netip.MustParsePrefix("10.42.0.0/16"), Subnet: netip.MustParsePrefix("10.42.1.0/24")}
	green  = cni.Segment{Name: "green", CIDR: netip.MustParsePrefix("10.43.0.0/16"), Subnet: netip.MustParsePrefix("10.43.1.0/24")}
	six    = cni.Segment{Name: "six", CIDR: netip.MustParsePrefix("fd42::/48"), Subnet: netip.MustParsePrefix("fd42:0:0:1::/64")}
	netID  = strings.Repeat("a1", 32)
	netID2 = strings.Repeat("b2", 32)
	epID   = strings.Repeat("e3", 32)
	epID2  = strings.Repeat("f4", 32)
)

type env struct {
	t      *testing.T
	dir    string
	fake   *fakeDataplane
	d      *Driver
	segs   []cni.Segment
	leases string
}

func newEnv(t *testing.T, segs ...cni.Segment) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), fake: newFake(), segs: segs}
	e.leases = filepath.Join(e.dir, "networks")
	e.restart()
	return e
}

// restart builds a new Driver on the same files and "kernel", as a
// restarted meshd does.
func (e *env) restart() {
	e.t.Helper()
	d, err := New(Options{
		Host:      func() ([]cni.Segment, int) { return e.segs, 1420 },
		StatePath: filepath.Join(e.dir, "docker.json"),
		LeaseDir:  e.leases,
		Dataplane: e.fake,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.d = d
}

// call posts body to /method as Docker's plugin client does and decodes
// the answer.
func (e *env) call(method, body string) (int, map[string]any) {
	e.t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/"+method, strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	e.d.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		e.t.Fatalf("%s: answer is not JSON: %q", method, rec.Body.String())
	}
	return rec.Code, out
}

// ok calls and fails the test on an error answer.
func (e *env) ok(method, body string) map[string]any {
	e.t.Helper()
	code, out := e.call(method, body)
	if code != http.StatusOK || out["Err"] != nil && out["Err"] != "" || out["Error"] != nil && out["Error"] != "" {
		e.t.Fatalf("%s %s: HTTP %d %v", method, body, code, out)
	}
	return out
}

// fails calls and wants an error answer containing want.
func (e *env) fails(method, body, want string) {
	e.t.Helper()
	code, out := e.call(method, body)
	msg, _ := out["Err"].(string)
	if strings.HasPrefix(method, ipamDriver) {
		msg, _ = out["Error"].(string)
	}
	if code != http.StatusOK || !strings.Contains(msg, want) {
		e.t.Fatalf("%s %s: HTTP %d %v; want an error containing %q", method, body, code, out, want)
	}
}

func (e *env) leaseFiles(segment string) []string {
	entries, _ := os.ReadDir(filepath.Join(e.leases, cni.NetworkName(segment)))
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}

// The bodies below are what Docker 20.10 (libnetwork as vendored in it:
// drivers/remote/driver.go, ipams/remote/remote.go, network.go,
// endpoint.go) sends for each user command, in order.

func createNetworkSeq(e *env, ipamOpts string) {
	e.t.Helper()
	// docker network create -d meshd --ipam-driver meshd --ipam-opt segment=blue blue
	act := e.ok("Plugin.Activate", "")
	if impl := fmt.Sprint(act["Implements"]); impl != "[NetworkDriver IpamDriver]" {
		e.t.Fatalf("Implements %s", impl)
	}
	if got := e.ok("NetworkDriver.GetCapabilities", ""); got["Scope"] != "local" {
		e.t.Fatalf("capabilities %v", got)
	}
	e.ok("IpamDriver.GetCapabilities", "")
	if got := e.ok("IpamDriver.GetDefaultAddressSpaces", ""); got["LocalDefaultAddressSpace"] != addressSpace {
		e.t.Fatalf("address spaces %v", got)
	}
	pool := e.ok("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Pool":"","SubPool":"","Options":`+ipamOpts+`,"V6":false}`)
	if pool["Pool"] != "10.42.1.0/24" || pool["PoolID"] != "meshd/blue/10.42.1.0/24" {
		e.t.Fatalf("RequestPool answered %v", pool)
	}
	// The gateway came with the pool (Data), so Docker asks for none.
	if gw := pool["Data"].(map[string]any)[gatewayLabel]; gw != "10.42.1.1/24" {
		e.t.Fatalf("gateway %v", gw)
	}
	e.ok("NetworkDriver.CreateNetwork", `{"NetworkID":"`+netID+`","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"segment":"blue"}},"IPv4Data":[{"AddressSpace":"meshd","Gateway":"10.42.1.1/24","Pool":"10.42.1.0/24"}],"IPv6Data":[]}`)
}

const blueBridge = "mbr-blue"

func TestDockerLifecycle(t *testing.T) {
	e := newEnv(t, blue, green, six)
	createNetworkSeq(e, `{"segment":"blue"}`)
	if ops := e.fake.take(); !slices.Equal(ops, []string{"bridge mbr-blue 10.42.1.1/24 mtu 1420"}) {
		t.Errorf("network create did %q", ops)
	}

	// docker run --network blue ...
	addr := e.ok("IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"","Options":{}}`)
	if addr["Address"] != "10.42.1.10/24" {
		t.Fatalf("first address %v, want the pool's start 10.42.1.10/24 (host-local's rangeStart)", addr)
	}
	e.ok("NetworkDriver.CreateEndpoint", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","Interface":{"Address":"10.42.1.10/24","AddressIPv6":"","MacAddress":"02:42:0a:2a:01:0a"},"Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}`)
	join := e.ok("NetworkDriver.Join", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","SandboxKey":"/var/run/docker/netns/0123abcd","Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}`)
	e.ok("NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","Options":{}}`)
	host, peer := "mdh"+epID[:11], "mdc"+epID[:11]
	if ops := e.fake.take(); !slices.Equal(ops, []string{
		"bridge mbr-blue 10.42.1.1/24 mtu 1420",
		fmt.Sprintf("veth %s/%s on mbr-blue mtu 1420 mac \"02:42:0a:2a:01:0a\"", host, peer),
	}) {
		t.Errorf("run did %q", ops)
	}
	wantJoin := map[string]any{
		"InterfaceName": map[string]any{"SrcName": peer, "DstPrefix": "eth"},
		"Gateway":       "", "GatewayIPv6": "",
		"StaticRoutes": []any{
			map[string]any{"Destination": "10.42.0.0/17", "RouteType": 0.0, "NextHop": "10.42.1.1"},
			map[string]any{"Destination": "10.42.128.0/17", "RouteType": 0.0, "NextHop": "10.42.1.1"},
			map[string]any{"Destination": "10.43.0.0/16", "RouteType": 0.0, "NextHop": "10.42.1.1"},
		},
		"DisableGatewayService": true,
	}
	if got, want := fmt.Sprint(join), fmt.Sprint(wantJoin); got != want {
		t.Errorf("Join answered\n%s\nwant\n%s", got, want)
	}
	info := e.ok("NetworkDriver.EndpointOperInfo", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`"}`)
	if v := info["Value"].(map[string]any); v["segment"] != "blue" || v["address"] != "10.42.1.10/24" {
		t.Errorf("EndpointOperInfo %v", info)
	}
	if got := e.leaseFiles("blue"); !slices.Equal(got, []string{"10.42.1.10"}) {
		t.Errorf("lease files %v", got)
	}

	// docker rm -f
	e.ok("NetworkDriver.RevokeExternalConnectivity", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`"}`)
	e.ok("NetworkDriver.Leave", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`"}`)
	e.ok("NetworkDriver.DeleteEndpoint", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`"}`)
	e.ok("IpamDriver.ReleaseAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"10.42.1.10"}`)
	if ops := e.fake.take(); !slices.Equal(ops, []string{"del veth " + host}) {
		t.Errorf("rm did %q", ops)
	}
	if got := e.leaseFiles("blue"); len(got) != 0 {
		t.Errorf("lease files left after rm: %v", got)
	}

	// docker network rm blue
	e.ok("NetworkDriver.DeleteNetwork", `{"NetworkID":"`+netID+`"}`)
	e.ok("IpamDriver.ReleaseAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"10.42.1.1"}`)
	e.ok("IpamDriver.ReleasePool", `{"PoolID":"meshd/blue/10.42.1.0/24"}`)
	if ops := e.fake.take(); !slices.Equal(ops, []string{"del bridge mbr-blue"}) {
		t.Errorf("network rm did %q", ops)
	}
	// And the segment can have a network again.
	createNetworkSeq(e, `{"segment":"blue"}`)
}

// TestRestart: a new Driver on the same state file and lease directory
// answers for the network and endpoint an earlier one created, and frees
// an address reserved for an endpoint that never got recorded.
func TestRestart(t *testing.T) {
	e := newEnv(t, blue, green)
	createNetworkSeq(e, `{"segment":"blue"}`)
	e.ok("IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"","Options":{}}`)
	e.ok("NetworkDriver.CreateEndpoint", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","Interface":{"Address":"10.42.1.10/24"},"Options":{}}`)
	e.ok("NetworkDriver.Join", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","SandboxKey":"/var/run/docker/netns/1","Options":{}}`)
	// Reserved, then meshd died before CreateEndpoint.
	e.ok("IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"","Options":{}}`)
	e.fake.take()

	e.restart()
	if ops := e.fake.take(); len(ops) != 0 {
		t.Errorf("a restart changed the kernel: %q", ops)
	}
	if got := e.leaseFiles("blue"); !slices.Equal(got, []string{"10.42.1.10"}) {
		t.Errorf("after restart leases %v, want only the endpoint's", got)
	}
	// A second container on the existing network.
	addr := e.ok("IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"","Options":{}}`)
	if addr["Address"] != "10.42.1.11/24" {
		t.Errorf("second address %v", addr)
	}
	e.ok("NetworkDriver.CreateEndpoint", `{"NetworkID":"`+netID+`","EndpointID":"`+epID2+`","Interface":{"Address":"10.42.1.11/24"},"Options":{}}`)
	e.ok("NetworkDriver.Join", `{"NetworkID":"`+netID+`","EndpointID":"`+epID2+`","SandboxKey":"/var/run/docker/netns/2","Options":{}}`)
	// The first container stops.
	e.ok("NetworkDriver.Leave", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`"}`)
	e.ok("NetworkDriver.DeleteEndpoint", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`"}`)
	e.ok("IpamDriver.ReleaseAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"10.42.1.10"}`)
	if got := e.leaseFiles("blue"); !slices.Equal(got, []string{"10.42.1.11"}) {
		t.Errorf("leases %v", got)
	}
	// Calls Docker repeats are answered as done.
	e.ok("NetworkDriver.Leave", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`"}`)
	e.ok("NetworkDriver.DeleteEndpoint", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`"}`)
	e.ok("IpamDriver.ReleaseAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"10.42.1.10"}`)
}

// TestSharedPool: addresses held by host-local (podman/CNI containers)
// are skipped and never released by the Docker driver.
func TestSharedPool(t *testing.T) {
	e := newEnv(t, blue)
	dir := filepath.Join(e.leases, "meshd-blue")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.42.1.10", "10.42.1.11", "10.42.1.13"} {
		if err := os.WriteFile(filepath.Join(dir, a), []byte("0123456789abcdef\r\neth0"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.restart()               // a start does not free host-local's leases
	createNetworkSeq(e, `{}`) // the only IPv4 segment needs no name
	for _, want := range []string{"10.42.1.12/24", "10.42.1.14/24"} {
		if got := e.ok("IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"","Options":{}}`); got["Address"] != want {
			t.Errorf("got %v, want %s", got["Address"], want)
		}
	}
	e.fails("IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"10.42.1.13","Options":{}}`, "10.42.1.13: in use")
	e.ok("IpamDriver.ReleaseAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"10.42.1.11"}`)
	if got := e.leaseFiles("blue"); len(got) != 5 {
		t.Errorf("leases %v: host-local's must survive", got)
	}
	// --ip inside the slice but outside host-local's range is fine.
	if got := e.ok("IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"10.42.1.5","Options":{}}`); got["Address"] != "10.42.1.5/24" {
		t.Errorf("--ip: %v", got)
	}
	e.fails("IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"10.42.1.1","Options":{}}`, "not a container address")
}

func TestExhaustedPool(t *testing.T) {
	tiny := cni.Segment{Name: "tiny", CIDR: netip.MustParsePrefix("10.9.0.0/24"), Subnet: netip.MustParsePrefix("10.9.0.16/29")}
	e := newEnv(t, tiny)
	e.ok("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"tiny"}}`)
	var got []string
	for range 5 {
		got = append(got, e.ok("IpamDriver.RequestAddress", `{"PoolID":"meshd/tiny/10.9.0.16/29","Options":{}}`)["Address"].(string))
	}
	if want := []string{"10.9.0.18/29", "10.9.0.19/29", "10.9.0.20/29", "10.9.0.21/29", "10.9.0.22/29"}; !slices.Equal(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
	e.fails("IpamDriver.RequestAddress", `{"PoolID":"meshd/tiny/10.9.0.16/29","Options":{}}`, "no free address in segment tiny's pool 10.9.0.18-10.9.0.22 on this host: all 5 are in use")
}

// TestRequestErrors: what a user gets wrong comes back as a message
// naming the fix, in the field Docker reads.
func TestRequestErrors(t *testing.T) {
	e := newEnv(t, blue, green, six)
	for _, tc := range []struct{ method, body, want string }{
		{"IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{}}`, "--ipam-opt segment=NAME"},
		{"IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"red"}}`, `segment "red" is not configured on this host (segments: blue 10.42.1.0/24, green 10.43.1.0/24, six fd42:0:0:1::/64)`},
		{"IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segmnet":"blue"}}`, "unknown option --ipam-opt segmnet"},
		{"IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"blue"},"V6":true}`, "leave out --ipv6"},
		{"IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"six"}}`, "segment six is IPv6"},
		{"IpamDriver.RequestPool", `{"AddressSpace":"meshd","Pool":"10.42.2.0/24","Options":{}}`, "--subnet 10.42.2.0/24 is not this host's slice"},
		{"IpamDriver.RequestPool", `{"AddressSpace":"meshd","Pool":"10.43.1.0/24","Options":{"segment":"blue"}}`, "segment green's slice, not segment blue's"},
		{"IpamDriver.RequestPool", `{"AddressSpace":"meshd","SubPool":"10.42.1.128/25","Options":{"segment":"blue"}}`, "--ip-range"},
		{"IpamDriver.RequestAddress", `{"PoolID":"default/10.42.1.0/24"}`, "not one of meshd's"},
		{"IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.9.0/24"}`, "slice on this host moved from 10.42.9.0/24 to 10.42.1.0/24"},
		{"IpamDriver.RequestAddress", `{"PoolID":"meshd/blue/10.42.1.0/24","Address":"10.42.1.7","Options":{"RequestAddressType":"com.docker.network.gateway"}}`, "leave out --gateway"},
		{"NetworkDriver.CreateEndpoint", `{"NetworkID":"` + netID2 + `","EndpointID":"` + epID + `","Interface":{"Address":"10.42.1.10/24"}}`, "is not a meshd network on this host"},
		{"NetworkDriver.Join", `{"NetworkID":"` + netID2 + `","EndpointID":"` + epID + `","SandboxKey":"/x"}`, "not known to meshd"},
		{"NetworkDriver.CreateNetwork", `{"NetworkID":"` + netID2 + `","Options":{"com.docker.network.generic":{"segment":"blue"}},"IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"10.42.1.0/24","Gateway":"10.42.1.1/24"}]}`, "add --ipam-driver meshd"},
		{"NetworkDriver.CreateNetwork", `{"NetworkID":"` + netID2 + `","Options":{"com.docker.network.generic":{"vlan":"7"}},"IPv4Data":[{"AddressSpace":"meshd","Pool":"10.42.1.0/24","Gateway":"10.42.1.1/24"}]}`, "unknown option -o vlan"},
		{"NetworkDriver.CreateNetwork", `{"NetworkID":"` + netID2 + `","Options":{"com.docker.network.generic":{"segment":"green"}},"IPv4Data":[{"AddressSpace":"meshd","Pool":"10.42.1.0/24","Gateway":"10.42.1.1/24"}]}`, "--ipam-opt segment=green"},
		{"NetworkDriver.CreateNetwork", `{"NetworkID":"` + netID2 + `","Options":{"com.docker.network.enable_ipv6":true},"IPv4Data":[{"AddressSpace":"meshd","Pool":"10.42.1.0/24","Gateway":"10.42.1.1/24"}]}`, "IPv4 only"},
		{"NetworkDriver.AllocateNetwork", `{"NetworkID":"x"}`, "local-scope"},
	} {
		e.fails(tc.method, tc.body, tc.want)
	}

	for _, body := range []string{`{"NetworkID":`, `[1,2]`, `{"NetworkID":7}`} {
		code, out := e.call("NetworkDriver.CreateNetwork", body)
		if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(out["Err"]), "not valid JSON") {
			t.Errorf("body %s: HTTP %d %v, want 400 with Err", body, code, out)
		}
	}
	code, out := e.call("IpamDriver.RequestPool", `{`)
	if code != http.StatusBadRequest || out["Error"] == nil || out["Err"] == nil {
		t.Errorf("IPAM bad JSON: HTTP %d %v, want 400 with Error and Err", code, out)
	}
	if code, out := e.call("NetworkDriver.Bogus", `{}`); code != http.StatusNotFound || out["Err"] == nil {
		t.Errorf("unknown call: HTTP %d %v, want 404", code, out)
	}
	if got := e.fake.take(); len(got) != 0 {
		t.Errorf("failed calls changed the kernel: %q", got)
	}
}

// TestOneNetworkPerSegment: a second network on a segment is refused, and
// Docker's retry after finding the slice already routed (a CNI bridge)
// gets an answer that names --subnet.
func TestOneNetworkPerSegment(t *testing.T) {
	e := newEnv(t, blue, green)
	e.ok("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"blue"}}`)
	e.fails("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"blue"}}`, "add --subnet 10.42.1.0/24")
	e.ok("IpamDriver.ReleasePool", `{"PoolID":"meshd/blue/10.42.1.0/24"}`)
	// With --subnet Docker checks no routes and asks once.
	e.ok("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Pool":"10.42.1.0/24","Options":{}}`)
	e.ok("NetworkDriver.CreateNetwork", `{"NetworkID":"`+netID+`","Options":{},"IPv4Data":[{"AddressSpace":"meshd","Gateway":"10.42.1.1/24","Pool":"10.42.1.0/24"}]}`)
	e.fails("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"blue"}}`, "already has Docker network "+netID[:12])
	e.fails("NetworkDriver.CreateNetwork", `{"NetworkID":"`+netID2+`","Options":{},"IPv4Data":[{"AddressSpace":"meshd","Gateway":"10.42.1.1/24","Pool":"10.42.1.0/24"}]}`, "one Docker network per segment")
	// A pool Docker never released (it died in between) blocks the
	// segment only for a while.
	e.ok("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"green"}}`)
	e.fails("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"green"}}`, "add --subnet")
	e.d.now = func() time.Time { return time.Now().Add(pendingTTL) }
	e.ok("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"green"}}`)
	// The same create again (Docker retrying) is fine.
	e.ok("NetworkDriver.CreateNetwork", `{"NetworkID":"`+netID+`","Options":{},"IPv4Data":[{"AddressSpace":"meshd","Gateway":"10.42.1.1/24","Pool":"10.42.1.0/24"}]}`)
}

// TestMultiAttachRoutes: a container on blue and green (docker network
// connect) gets each route once; with three segments the shared third
// one comes from the first network only.
func TestMultiAttachRoutes(t *testing.T) {
	red := cni.Segment{Name: "red", CIDR: netip.MustParsePrefix("10.44.0.0/16"), Subnet: netip.MustParsePrefix("10.44.1.0/24")}
	e := newEnv(t, blue, green, red)
	createNetworkSeq(e, `{"segment":"blue"}`)
	e.ok("IpamDriver.RequestPool", `{"AddressSpace":"meshd","Options":{"segment":"green"}}`)
	e.ok("NetworkDriver.CreateNetwork", `{"NetworkID":"`+netID2+`","Options":{},"IPv4Data":[{"AddressSpace":"meshd","Gateway":"10.43.1.1/24","Pool":"10.43.1.0/24"}]}`)
	e.ok("NetworkDriver.CreateEndpoint", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","Interface":{"Address":"10.42.1.10/24"}}`)
	e.ok("NetworkDriver.CreateEndpoint", `{"NetworkID":"`+netID2+`","EndpointID":"`+epID2+`","Interface":{"Address":"10.43.1.10/24"}}`)
	routes := func(j map[string]any) []string {
		var out []string
		for _, r := range j["StaticRoutes"].([]any) {
			m := r.(map[string]any)
			out = append(out, m["Destination"].(string)+" via "+m["NextHop"].(string))
		}
		return out
	}
	j1 := e.ok("NetworkDriver.Join", `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","SandboxKey":"/var/run/docker/netns/c1"}`)
	j2 := e.ok("NetworkDriver.Join", `{"NetworkID":"`+netID2+`","EndpointID":"`+epID2+`","SandboxKey":"/var/run/docker/netns/c1"}`)
	if got, want := routes(j1), []string{"10.42.0.0/17 via 10.42.1.1", "10.42.128.0/17 via 10.42.1.1", "10.43.0.0/16 via 10.42.1.1", "10.44.0.0/16 via 10.42.1.1"}; !slices.Equal(got, want) {
		t.Errorf("first join routes %v, want %v", got, want)
	}
	if got, want := routes(j2), []string{"10.43.0.0/17 via 10.43.1.1", "10.43.128.0/17 via 10.43.1.1", "10.42.0.0/16 via 10.43.1.1"}; !slices.Equal(got, want) {
		t.Errorf("second join routes %v, want %v", got, want)
	}
}

// TestServeSocket runs the handler on a real unix socket, as Docker
// reaches it, and checks the socket's life: a stale one is replaced, a
// live one refused, Close removes it.
func TestServeSocket(t *testing.T) {
	e := newEnv(t, blue)
	path := filepath.Join(e.dir, "plugins", "meshd.sock")
	srv, err := Listen(path, e.d)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	resp, err := client.Post("http://plugin/Plugin.Activate", contentType, nil)
	if err != nil {
		t.Fatal(err)
	}
	var act activateResponse
	err = json.NewDecoder(resp.Body).Decode(&act)
	resp.Body.Close()
	if err != nil || len(act.Implements) != 2 || resp.Header.Get("Content-Type") != contentType {
		t.Errorf("activate: %+v %v %s", act, err, resp.Header.Get("Content-Type"))
	}
	if _, err := Listen(path, e.d); err == nil || !strings.Contains(err.Error(), "served by another process") {
		t.Errorf("second Listen on a live socket: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	// A socket file nobody serves (a crash) is replaced.
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	srv2, err := Listen(path, e.d)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	srv2.Close()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, e.d); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file: %v", err)
	}
}

func TestCorruptStateRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "docker.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{Host: func() ([]cni.Segment, int) { return nil, 1420 }, StatePath: path, LeaseDir: dir, Dataplane: newFake()})
	if err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Errorf("New on a corrupt state file: %v", err)
	}
}
