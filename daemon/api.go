package daemon

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/crypto"
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
	if err := a.d.onLoop(r, a.d.reload); err != nil {
		writeError(w, err)
		return
	}
	w.Write([]byte("reloaded\n"))
}

func (a *api) rotateKey(w http.ResponseWriter, r *http.Request) {
	var pub wgtypes.Key
	err := a.d.onLoop(r, func() (err error) {
		pub, err = a.d.rotateKey()
		return err
	})
	if err != nil {
		writeError(w, err)
		return
	}
	json.NewEncoder(w).Encode(map[string]string{"public_key": pub.String(), "fingerprint": crypto.Fingerprint(pub)})
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
	resp, err := a.d.members.KeyringOp(op, key)
	if err != nil {
		a.d.log.Warn("gossip keyring operation incomplete", "op", op, "err", err)
	} else {
		a.d.log.Info("gossip keyring operation done", "op", op)
	}
	out := map[string]any{"response": resp}
	if err != nil {
		out["error"] = err.Error()
	}
	json.NewEncoder(w).Encode(out)
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
	// errBadRequest marks a request whose input was wrong (exit 2 in the
	// CLI).
	errBadRequest = errors.New("bad request")
)

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case config.IsConfigError(err), errors.Is(err, errBadRequest):
		status = http.StatusBadRequest
	case errors.Is(err, errBusy), errors.Is(err, errStopping):
		status = http.StatusServiceUnavailable
	}
	http.Error(w, err.Error(), status)
}
