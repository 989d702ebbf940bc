package daemon

import (
	"context"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/metrics"
)

// startMetrics serves Prometheus metrics when [metrics] listen is set. A
// port that cannot be bound fails startup rather than running blind.
func (d *Daemon) startMetrics(ctx context.Context) error {
	cfg := d.config()
	if cfg.Metrics.Listen == "" {
		return nil
	}
	m := metrics.New(d.Status)
	mctx, stop := context.WithCancel(ctx)
	if err := metrics.Serve(mctx, cfg.Metrics.Listen, m.Registry(), d.log); err != nil {
		stop()
		return err
	}
	d.undo("metrics listener", func() error { stop(); return nil })
	d.metrics = m
	return nil
}

// syncCNI runs every reconcile: claimed slices appear after the join and
// move when lost, and the CNI configs must follow the slice held now. The
// files stay when meshd stops (see cni.Write).
func (d *Daemon) syncCNI(local mesh.Local) error {
	return d.cni.Write(cniSegments(local), d.cniOptions())
}
