package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"time"

	"github.com/meshd/meshd/config"
)

// reload re-reads the configuration and applies the allow rules as one
// nftables transaction. Tunnels, peers and routes are not touched; other
// changed settings are reported as needing a restart rather than being
// applied half-way. Runs on the reconciler goroutine.
func (d *Daemon) reload() error {
	if d.opts.Reload == nil {
		return errors.New("this daemon was started without a config file to reload")
	}
	next, err := d.opts.Reload()
	if err != nil {
		return err
	}
	// The data plane keeps the segments it started with until a restart,
	// so the rules are compiled against those, not the file's.
	running := *d.cfg
	running.Allow = next.Allow
	ruleset, err := running.Policy()
	if err != nil {
		return fmt.Errorf("%w: the new allow rules do not fit the running segments (segment changes need a restart): %v", errBadRequest, err)
	}
	if err := d.policy.Apply(ruleset); err != nil {
		return fmt.Errorf("apply allow-list: %w", err)
	}
	if ignored := restartOnly(d.cfg, next); ignored {
		d.log.Warn("reload applied the allow rules only; other changed settings take effect after a restart")
	}
	d.cfg.Allow = next.Allow
	d.log.Info("reloaded allow rules", "rules", len(next.Allow))
	return nil
}

// restartOnly reports whether anything besides the allow rules changed.
func restartOnly(cur, next *config.Config) bool {
	a, b := *cur, *next
	a.Allow, b.Allow = nil, nil
	return !reflect.DeepEqual(a, b)
}

func (d *Daemon) serveReload(w http.ResponseWriter, r *http.Request) {
	if err := d.onReconciler(r, d.reload); err != nil {
		writeError(w, err)
		return
	}
	w.Write([]byte("reloaded\n"))
}

// request is work for the reconciler goroutine, the only one that
// changes the data plane.
type request struct {
	fn     func() error
	answer chan error
}

// onReconciler runs fn on the reconciler goroutine and waits for it.
func (d *Daemon) onReconciler(r *http.Request, fn func() error) error {
	req := request{fn: fn, answer: make(chan error, 1)}
	select {
	case d.requests <- req:
	case <-d.stopping:
		return errStopping
	case <-r.Context().Done():
		return r.Context().Err()
	case <-time.After(30 * time.Second):
		return errBusy
	}
	return <-req.answer
}

var errStopping = errors.New("the daemon is shutting down")

var errBusy = errors.New("the daemon is busy; try again")

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

// errBadRequest marks a request whose input was wrong (exit 2 in the CLI).
var errBadRequest = errors.New("bad request")
