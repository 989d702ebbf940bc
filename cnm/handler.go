package cnm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// maxBody bounds a request; Docker's largest (CreateNetwork) is a few KiB.
const maxBody = 1 << 20

// ServeHTTP answers one plugin call. Docker POSTs JSON to /<Interface>.<Method>.
// A body that is not JSON gets HTTP 400; a call that cannot be carried out
// gets HTTP 200 with the protocol's error field ({"Err": ...} for the
// network driver, {"Error": ...} for IPAM), which Docker shows the user
// as "remote: <message>".
func (d *Driver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, errResponse{Err: "plugin calls are POST requests"})
		return
	}
	method := strings.TrimPrefix(r.URL.Path, "/")
	iface, _, _ := strings.Cut(method, ".")
	h, ok := d.calls[method]
	if !ok {
		// 404 tells Docker an optional call is not implemented.
		writeJSON(w, http.StatusNotFound, errResponse{Err: fmt.Sprintf("meshd does not implement %s", method)})
		return
	}
	body := http.MaxBytesReader(w, r.Body, maxBody)
	resp, err := h(json.NewDecoder(body))
	switch {
	case errors.As(err, new(badRequest)):
		writeJSON(w, http.StatusBadRequest, failure(iface, err))
	case err != nil:
		d.log.Warn("docker plugin call failed", "call", method, "err", err)
		writeJSON(w, http.StatusOK, failure(iface, err))
	default:
		writeJSON(w, http.StatusOK, resp)
	}
}

func failure(iface string, err error) any {
	if iface == ipamDriver {
		return ipamErrResponse{Error: err.Error(), Err: err.Error()}
	}
	return errResponse{Err: err.Error()}
}

type badRequest struct{ error }

// call adapts a typed method to the dispatch table: it decodes the
// request (an empty body is an empty request: Docker sends none for the
// capability calls) and returns the response to encode.
func call[Req, Resp any](fn func(Req) (Resp, error)) func(*json.Decoder) (any, error) {
	return func(dec *json.Decoder) (any, error) {
		var req Req
		if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
			return nil, badRequest{fmt.Errorf("request is not valid JSON: %w", err)}
		}
		return fn(req)
	}
}

// noResp adapts a method whose success carries no data.
func noResp[Req any](fn func(Req) error) func(Req) (struct{}, error) {
	return func(r Req) (struct{}, error) { return struct{}{}, fn(r) }
}

func constant(v any) func(*json.Decoder) (any, error) {
	return func(*json.Decoder) (any, error) { return v, nil }
}

type empty struct{}

func (d *Driver) routes() map[string]func(*json.Decoder) (any, error) {
	return map[string]func(*json.Decoder) (any, error){
		"Plugin.Activate": constant(activateResponse{Implements: []string{networkDriver, ipamDriver}}),

		"NetworkDriver.GetCapabilities":             constant(capabilitiesResponse{Scope: "local", ConnectivityScope: "local"}),
		"NetworkDriver.CreateNetwork":               call(noResp(d.createNetwork)),
		"NetworkDriver.DeleteNetwork":               call(noResp(d.deleteNetwork)),
		"NetworkDriver.CreateEndpoint":              call(d.createEndpoint),
		"NetworkDriver.DeleteEndpoint":              call(noResp(d.deleteEndpoint)),
		"NetworkDriver.EndpointOperInfo":            call(d.endpointInfo),
		"NetworkDriver.Join":                        call(d.join),
		"NetworkDriver.Leave":                       call(noResp(d.leave)),
		"NetworkDriver.DiscoverNew":                 constant(empty{}),
		"NetworkDriver.DiscoverDelete":              constant(empty{}),
		"NetworkDriver.ProgramExternalConnectivity": constant(empty{}),
		"NetworkDriver.RevokeExternalConnectivity":  constant(empty{}),
		"NetworkDriver.AllocateNetwork":             call(noResp(func(empty) error { return errLocalScope })),
		"NetworkDriver.FreeNetwork":                 call(noResp(func(empty) error { return errLocalScope })),

		"IpamDriver.GetCapabilities":         constant(ipamCapabilitiesResponse{}),
		"IpamDriver.GetDefaultAddressSpaces": constant(addressSpacesResponse{LocalDefaultAddressSpace: addressSpace, GlobalDefaultAddressSpace: addressSpace}),
		"IpamDriver.RequestPool":             call(d.requestPool),
		"IpamDriver.ReleasePool":             call(noResp(d.releasePool)),
		"IpamDriver.RequestAddress":          call(d.requestAddress),
		"IpamDriver.ReleaseAddress":          call(noResp(d.releaseAddress)),
	}
}

var errLocalScope = errors.New("meshd networks are local-scope (each host serves its own slice); swarm-scoped allocation is not supported")

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
