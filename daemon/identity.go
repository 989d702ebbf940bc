package daemon

import (
	"time"

	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/mesh"
)

// expiryThresholds are how long before its end the certificate in use
// is warned about, once each. The last, zero, is the end itself, from
// which every other host refuses this one's announcements.
var expiryThresholds = []time.Duration{30 * 24 * time.Hour, 7 * 24 * time.Hour, 24 * time.Hour, 0}

// renewFix is how an operator renews a certificate without a restart.
const renewFix = "sign a new certificate with 'meshd ca sign --force' and run 'meshd reload' (no restart needed)"

// warnExpiry logs each threshold the certificate in use has crossed,
// once; a reloaded certificate starts over. Runs on the loop.
func (d *Daemon) warnExpiry(now time.Time) {
	id := d.ann.identity()
	if !id.Enabled() {
		return
	}
	left := id.Cert.NotAfter.Sub(now)
	crossed := 0
	for _, th := range expiryThresholds {
		if left <= th {
			crossed++
		}
	}
	if crossed <= d.expiryWarned {
		return
	}
	d.expiryWarned = crossed
	notAfter := id.Cert.NotAfter.UTC().Format(time.RFC3339)
	if left <= 0 {
		d.log.Error("this host's certificate has expired: every other host refuses its announcements",
			"certificate", id.CertFile, "not_after", notAfter, "fix", renewFix)
		return
	}
	d.log.Warn("this host's certificate expires soon", "in", left.Round(time.Minute).String(),
		"certificate", id.CertFile, "not_after", notAfter, "fix", renewFix)
}

// identityStatus is this host's standing under the CA, nil without one.
func (d *Daemon) identityStatus(st *mesh.State, now time.Time) *control.Identity {
	id := d.ann.identity()
	if !id.Enabled() {
		return nil
	}
	out := &control.Identity{Mode: string(id.Mode), Certificate: id.Cert.Name,
		NotAfter: id.Cert.NotAfter.UTC().Format(time.RFC3339), ExpirySeconds: id.Cert.NotAfter.Sub(now).Seconds(), Unsigned: []string{}}
	if st != nil {
		out.Unsigned = append(out.Unsigned, st.Unsigned()...)
	}
	return out
}
