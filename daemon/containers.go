package daemon

import (
	"fmt"
	"path/filepath"

	"github.com/meshd/meshd/cni"
	"github.com/meshd/meshd/cnm"
	"github.com/meshd/meshd/mesh"
)

// dockerStateFile holds the Docker driver's networks and endpoints.
const dockerStateFile = "docker.json"

// startContainers serves Docker's network and IPAM plugin API on
// docker_plugin_socket. Teardown only closes the socket: bridges, veths
// and addresses of running containers stay, as do the CNI conflists
// (syncCNI), so neither runtime loses a container's network while meshd
// restarts or stops.
func (d *Daemon) startContainers() error {
	cfg := d.config()
	if cfg.DockerPluginSocket == "" {
		return nil
	}
	dp, closeDP, err := d.sys.ContainerDataplane()
	if err != nil {
		return err
	}
	d.undo("container data plane handle", closeDP.Close)
	drv, err := cnm.New(cnm.Options{
		Host:      d.containerSegments,
		StatePath: filepath.Join(cfg.DataDir, dockerStateFile),
		LeaseDir:  cfg.CNIIPAMDir,
		Dataplane: dp,
		Log:       d.log,
	})
	if err != nil {
		return err
	}
	srv, err := cnm.Listen(cfg.DockerPluginSocket, drv)
	if err != nil {
		return fmt.Errorf("%w (docker_plugin_socket; \"\" disables the Docker driver)", err)
	}
	d.undo("Docker plugin socket", srv.Close)
	d.log.Info("serving Docker's network plugin API", "socket", srv.Path())
	return nil
}

// containerSegments is every segment with the slice held now (invalid
// while being claimed) and the tunnel MTU; safe from any goroutine.
func (d *Daemon) containerSegments() ([]cni.Segment, int) {
	return cniSegments(d.ann.local()), d.under.MTU
}

func cniSegments(local mesh.Local) []cni.Segment {
	segs := make([]cni.Segment, len(local.Segments))
	for i, s := range local.Segments {
		segs[i] = cni.Segment{Name: s.Name, CIDR: s.CIDR, Subnet: s.Subnet}
	}
	return segs
}

// cniOptions are what every conflist shares.
func (d *Daemon) cniOptions() cni.Options {
	return cni.Options{MTU: d.under.MTU, IPAMDir: d.config().CNIIPAMDir}
}
