package daemon

import (
	"fmt"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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
	if d.cfg.DockerPluginSocket == "" {
		return nil
	}
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	d.defer_(func() error { nl.Close(); return nil })
	drv, err := cnm.New(cnm.Options{
		Host:      d.containerSegments,
		StatePath: filepath.Join(d.cfg.DataDir, dockerStateFile),
		LeaseDir:  d.cfg.CNIIPAMDir,
		Dataplane: cnm.NewNetlink(nl),
		Log:       d.log,
	})
	if err != nil {
		return err
	}
	srv, err := cnm.Listen(d.cfg.DockerPluginSocket, drv)
	if err != nil {
		return fmt.Errorf("%w (docker_plugin_socket; \"\" disables the Docker driver)", err)
	}
	d.defer_(srv.Close)
	d.log.Info("serving Docker's network plugin API", "socket", srv.Path())
	return nil
}

// containerSegments is every segment with the slice held now (invalid
// while being claimed) and the tunnel MTU; safe from any goroutine.
func (d *Daemon) containerSegments() ([]cni.Segment, int) {
	return cniSegments(d.localCopy()), d.mtu
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
	return cni.Options{MTU: d.mtu, IPAMDir: d.cfg.CNIIPAMDir}
}
