package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/mesh"
)

// reload re-reads the configuration and applies what can change while
// meshd runs: the allow rules and the same-segment fast path, as one
// nftables transaction, and the
// [identity] files and mode (a renewed certificate, the CA turned on or
// off, the trust mode), announced at once. Tunnels, peers and routes are
// not touched. Every other changed key is named in the result as waiting
// for a restart, and its running value stays in force rather than being
// applied half-way. Runs on the loop.
func (d *Daemon) reload() (control.ReloadResult, error) {
	res := control.ReloadResult{Applied: []string{}, Restart: []string{}}
	if d.opts.Reload == nil {
		return res, errors.New("this daemon was started without a config file to reload")
	}
	next, err := d.opts.Reload()
	if err != nil {
		return res, err
	}
	cur := d.config()
	// The data plane keeps the segments it started with until a restart,
	// so the rules are compiled against those, not the file's.
	running := *cur
	running.Allow, running.UntrackedSameSegment = next.Allow, next.UntrackedSameSegment
	ruleset, err := running.Policy()
	if err != nil {
		return res, fmt.Errorf("%w: the new allow rules do not fit the running segments (segment changes need a restart): %v", errBadRequest, err)
	}
	changed := config.Diff(cur, next)
	newID, idChange := reloadableIdentity(&running, next.Identity, changed)
	ruleset.Local = ownSlices(d.ann.local())
	if err := d.enforcer.Apply(ruleset); err != nil {
		return res, fmt.Errorf("apply allow-list: %w", err)
	}
	// The guard now spares exactly these slices; a stale record would
	// make the next pass apply the table again (and reset its counters).
	d.guarded = ruleset.Local
	res.Applied = append(res.Applied, allowRules(len(next.Allow)))
	if cur.UntrackedSameSegment != next.UntrackedSameSegment {
		res.Applied = append(res.Applied, fmt.Sprintf("policy.untracked_same_segment = %v", next.UntrackedSameSegment))
	}
	if idChange != "" {
		running.Identity = newID
		d.ann.setIdentity(newID)
		d.expiryWarned = 0 // a new certificate gets its own warnings
		res.Applied = append(res.Applied, idChange)
		if err := d.ann.publish(); err != nil {
			d.log.Warn("announcing the reloaded identity failed; retrying", "err", err)
		}
		d.Kick()
	}
	for _, k := range changed {
		if k == "allow" || k == "policy.untracked_same_segment" || (idChange != "" && isIdentityKey(k)) {
			continue
		}
		res.Restart = append(res.Restart, k)
	}
	d.mu.Lock()
	d.cfg = &running
	d.mu.Unlock()
	d.log.Info("reloaded", "applied", strings.Join(res.Applied, "; "), "rules", len(next.Allow))
	if len(res.Restart) > 0 {
		d.log.Warn("reload left changed settings for the next start; their running values stay in force", "restart", strings.Join(res.Restart, ", "))
	}
	return res, nil
}

func allowRules(n int) string {
	if n == 1 {
		return "1 allow rule"
	}
	return fmt.Sprintf("%d allow rules", n)
}

func isIdentityKey(k string) bool { return strings.HasPrefix(k, "identity.") }

// reloadableIdentity decides whether the file's [identity] can replace
// the running one without a restart, and says what the change is. It
// can, unless it would swap one CA for another (every host must move
// together, and a restart makes that explicit) or the new certificate
// does not fit the settings meshd runs with (say, it is for a node_name
// or site that only takes effect at the next start). Turning the CA on
// is the first step of a rollout in transitional mode, so it reloads.
func reloadableIdentity(running *config.Config, next config.Identity, changed []string) (config.Identity, string) {
	cur := running.Identity
	if !slices.ContainsFunc(changed, isIdentityKey) {
		return cur, ""
	}
	if cur.Enabled() && next.Enabled() && !bytes.Equal(cur.CA, next.CA) {
		return cur, ""
	}
	if next.Enabled() && running.CheckIdentity(next) != nil {
		return cur, ""
	}
	switch {
	case !next.Enabled():
		return next, "the cluster CA turned off: announcements are neither signed nor checked"
	case !cur.Enabled():
		return next, fmt.Sprintf("the cluster CA in %s mode, signing with %s", next.Mode, describeCert(next))
	case !bytes.Equal(cur.Cert.Marshal(), next.Cert.Marshal()) || !cur.Key.Equal(next.Key):
		what := describeCert(next)
		if next.Mode != cur.Mode {
			what += fmt.Sprintf(", identity.mode %s", next.Mode)
		}
		return next, what
	}
	if next.Mode != cur.Mode {
		return next, fmt.Sprintf("identity.mode %s", next.Mode)
	}
	return next, "the [identity] file paths (same CA, certificate and key)"
}

func describeCert(id config.Identity) string {
	return fmt.Sprintf("certificate %s (%s), valid until %s", id.Cert.Name, id.CertFile, id.Cert.NotAfter.UTC().Format(time.RFC3339))
}

// checkReloadPath refuses a reload asked for with another config file
// than the one this daemon reads: the request would apply a file the
// operator did not mean. Files are compared as files, not by name.
func (d *Daemon) checkReloadPath(asked string) error {
	own := d.opts.ConfigPath
	if asked == "" || own == "" {
		return nil
	}
	a, aerr := os.Stat(asked)
	o, oerr := os.Stat(own)
	if aerr == nil && oerr == nil && os.SameFile(a, o) {
		return nil
	}
	return fmt.Errorf("%w: this meshd reads %s, not %s: edit that file and reload, or restart meshd with --config %s to use the other",
		errBadRequest, own, asked, asked)
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
