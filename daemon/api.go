package daemon

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/cluster"
	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/mesh"
)

// api is the control socket's write side: each handler validates its
// input and hands the change to the loop, the only goroutine that changes
// the data plane or this host's identity.
type api struct {
	d *Daemon
}

func newAPI(d *Daemon) *api { return &api{d: d} }

func (a *api) register(s *control.Server) {
	s.Handle("POST /v1/reload", a.reload)
	s.Handle("POST /v1/rotate-key", a.rotateKey)
	s.Handle("POST /v1/gossip-key/{op}", a.gossipKey)
}

func (a *api) reload(w http.ResponseWriter, r *http.Request) {
	var req control.ReloadRequest
	// An empty body is a client that names no file (--socket alone).
	if body, _ := io.ReadAll(io.LimitReader(r.Body, 4096)); len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			writeError(w, fmt.Errorf("%w: reload request is not JSON: %v", errBadRequest, err))
			return
		}
	}
	if err := a.d.checkReloadPath(req.Config); err != nil {
		writeError(w, err)
		return
	}
	answerFromLoop(a.d, w, r, a.d.reload)
}

func (a *api) rotateKey(w http.ResponseWriter, r *http.Request) {
	answerFromLoop(a.d, w, r, func() (map[string]string, error) {
		pub, err := a.d.rotateKey()
		return map[string]string{"public_key": pub.String(), "fingerprint": crypto.Fingerprint(pub)}, err
	})
}

// answerFromLoop runs fn on the loop and answers with its result as JSON,
// or with its error.
func answerFromLoop[T any](d *Daemon, w http.ResponseWriter, r *http.Request, fn func() (T, error)) {
	var out T
	err := d.onLoop(r, func() (err error) {
		out, err = fn()
		return err
	})
	if err != nil {
		writeError(w, err)
		return
	}
	json.NewEncoder(w).Encode(out)
}

// gossipKey runs a serf keyring operation across the whole cluster. It
// runs on the request's goroutine: serf's key manager is safe for
// concurrent use and waits for every member's answer, which must not
// stall the loop.
func (a *api) gossipKey(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 256))
	key, op := string(body), r.PathValue("op")
	switch op {
	case "list":
	case "install", "use", "remove":
		if raw, derr := base64.StdEncoding.DecodeString(key); derr != nil || (len(raw) != 16 && len(raw) != 24 && len(raw) != 32) {
			writeError(w, fmt.Errorf("%w: the key must be base64 of 16, 24 or 32 bytes (meshd keygen gossip makes one)", errBadRequest))
			return
		}
	default:
		writeError(w, fmt.Errorf("%w: unknown keyring operation %q", errBadRequest, op))
		return
	}
	members := a.d.siteCluster()
	if members == nil {
		writeError(w, errNotJoined)
		return
	}
	resp, err := members.KeyringOp(op, key)
	out := control.KeyringAnswer{Response: fingerprinted(resp), Absent: absentMembers(members)}
	if err != nil {
		out.Error = err.Error()
	}
	if err != nil || len(out.Absent) > 0 {
		a.d.log.Warn("gossip keyring operation incomplete", "op", op, "err", err, "absent", out.Absent)
	} else {
		a.d.log.Info("gossip keyring operation done", "op", op)
	}
	json.NewEncoder(w).Encode(out)
}

// absentMembers are the members serf knows but did not ask: a keyring
// operation only reaches live members, and a host that misses a rotation
// is locked out once its keys are removed.
func absentMembers(c Cluster) []control.Member {
	var out []control.Member
	for _, m := range c.Members() {
		if m.Status != mesh.StatusAlive {
			out = append(out, control.Member{Name: m.Name, State: string(m.Status)})
		}
	}
	slices.SortFunc(out, func(x, y control.Member) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// fingerprinted replaces the keys of serf's answer with their
// fingerprints: the answer leaves the daemon, the keys need not.
func fingerprinted(r *cluster.KeyResponse) *control.KeyringResponse {
	if r == nil {
		return nil
	}
	out := &control.KeyringResponse{Messages: r.Messages, NumNodes: r.NumNodes, NumResp: r.NumResp, NumErr: r.NumErr,
		Keys: map[string]int{}, PrimaryKeys: map[string]int{}}
	for k, n := range r.Keys {
		out.Keys[cluster.KeyFingerprint(k)] = n
	}
	for k, n := range r.PrimaryKeys {
		out.PrimaryKeys[cluster.KeyFingerprint(k)] = n
	}
	return out
}

// request is work for the loop.
type request struct {
	fn     func() error
	answer chan error
}

// loopWait bounds how long a request waits for the loop to take it.
const loopWait = 30 * time.Second

// onLoop runs fn on the loop goroutine and waits for it.
func (d *Daemon) onLoop(r *http.Request, fn func() error) error {
	req := request{fn: fn, answer: make(chan error, 1)}
	select {
	case d.requests <- req:
	case <-d.stopping:
		return errStopping
	case <-r.Context().Done():
		return r.Context().Err()
	case <-time.After(loopWait):
		return errBusy
	}
	select {
	case err := <-req.answer:
		return err
	case <-r.Context().Done():
		return r.Context().Err()
	}
}

var (
	errStopping = errors.New("the daemon is shutting down")
	errBusy     = errors.New("the daemon is busy; try again")
	// errNotJoined answers what needs the cluster while the daemon is
	// still starting: the control socket serves before the join.
	errNotJoined = errors.New("not joined yet: the daemon is still joining the cluster; try again in a moment")
	// errBadRequest marks a request whose input was wrong (exit 2 in the
	// CLI).
	errBadRequest = errors.New("bad request")
)

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case config.IsConfigError(err), errors.Is(err, errBadRequest):
		status = http.StatusBadRequest
	case errors.Is(err, errBusy), errors.Is(err, errStopping), errors.Is(err, errNotJoined):
		status = http.StatusServiceUnavailable
	}
	http.Error(w, err.Error(), status)
}
