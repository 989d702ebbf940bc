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
	ruleset, err := next.Policy()
	if err != nil {
		return err
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

// serveReload hands the request to the reconciler goroutine, the only one
// that changes the data plane, and reports its answer.
func (d *Daemon) serveReload(w http.ResponseWriter, r *http.Request) {
	answer := make(chan error, 1)
	select {
	case d.reloads <- answer:
	case <-r.Context().Done():
		return
	case <-time.After(30 * time.Second):
		http.Error(w, "the daemon is busy; try again", http.StatusServiceUnavailable)
		return
	}
	if err := <-answer; err != nil {
		status := http.StatusInternalServerError
		if config.IsConfigError(err) {
			status = http.StatusBadRequest
		}
		http.Error(w, err.Error(), status)
		return
	}
	w.Write([]byte("reloaded\n"))
}
