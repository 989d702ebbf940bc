package daemon

import (
	"context"

	"github.com/meshd/meshd/cni"
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
// move when lost, and the CNI configs must follow the slice held now.
func (d *Daemon) syncCNI(local mesh.Local) error {
	var segs []cni.Segment
	for _, s := range local.Segments {
		if s.Subnet.IsValid() {
			segs = append(segs, cni.Segment{Name: s.Name, CIDR: s.CIDR, Subnet: s.Subnet})
		}
	}
	return d.cni.Write(segs, d.under.MTU)
}
