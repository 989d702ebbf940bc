package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/mesh"
)

// reload re-reads the configuration and applies the allow rules as one
// nftables transaction. Tunnels, peers and routes are not touched; other
// changed settings are reported as needing a restart rather than being
// applied half-way. Runs on the loop.
func (d *Daemon) reload() error {
	if d.opts.Reload == nil {
		return errors.New("this daemon was started without a config file to reload")
	}
	next, err := d.opts.Reload()
	if err != nil {
		return err
	}
	cur := d.config()
	// The data plane keeps the segments it started with until a restart,
	// so the rules are compiled against those, not the file's.
	running := *cur
	running.Allow = next.Allow
	ruleset, err := running.Policy()
	if err != nil {
		return fmt.Errorf("%w: the new allow rules do not fit the running segments (segment changes need a restart): %v", errBadRequest, err)
	}
	ruleset.Local = ownSlices(d.ann.local())
	if err := d.enforcer.Apply(ruleset); err != nil {
		return fmt.Errorf("apply allow-list: %w", err)
	}
	if ignored := restartOnly(cur, next); ignored {
		d.log.Warn("reload applied the allow rules only; other changed settings take effect after a restart")
	}
	d.mu.Lock()
	d.cfg = &running
	d.mu.Unlock()
	d.log.Info("reloaded allow rules", "rules", len(next.Allow))
	return nil
}

// applyPolicy installs the running allow rules with this host's current
// slices: again after someone removed the table, or because a claim moved
// a slice the no-plaintext guard must let through.
func (d *Daemon) applyPolicy() error {
	ruleset, err := d.config().Policy()
	if err != nil {
		return err
	}
	local := ownSlices(d.ann.local())
	ruleset.Local = local
	if err := d.enforcer.Apply(ruleset); err != nil {
		return err
	}
	d.guarded = local
	return nil
}

// ownSlices lists the slices this host holds now.
func ownSlices(l mesh.Local) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range l.Segments {
		if s.Subnet.IsValid() {
			out = append(out, s.Subnet)
		}
	}
	return out
}

// restartOnly reports whether anything besides the allow rules changed.
func restartOnly(cur, next *config.Config) bool {
	a, b := *cur, *next
	a.Allow, b.Allow = nil, nil
	return !reflect.DeepEqual(a, b)
}
