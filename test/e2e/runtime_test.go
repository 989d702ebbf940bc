package e2e

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/lab"
)

// Container runtimes on lab hosts: podman (CNI backend) and dockerd, each
// with its own state directories inside the host's directory, run in the
// host's network namespace. The image is a rootfs of Debian's
// busybox-static: no registry is involved.

const busyboxBin = "/bin/busybox"

// The machine allows containers these limits and no more; higher ones
// fail in runc with "setrlimit ... operation not permitted".
var containerUlimits = []string{"nofile=1024:1024", "nproc=1000:1000"}

var rootfsOnce struct {
	sync.Once
	dir, tarball string
	err          error
}

// busyboxRootfs builds, once per test binary, a directory and a tarball
// holding busybox-static and its applet links.
func busyboxRootfs(t *testing.T) (dir, tarball string) {
	t.Helper()
	rootfsOnce.Do(func() {
		base := filepath.Dir(meshdBin)
		rootfsOnce.dir = filepath.Join(base, "rootfs")
		rootfsOnce.tarball = filepath.Join(base, "rootfs.tar")
		rootfsOnce.err = makeRootfs(rootfsOnce.dir, rootfsOnce.tarball)
	})
	if rootfsOnce.err != nil {
		t.Fatalf("busybox rootfs: %v", rootfsOnce.err)
	}
	return rootfsOnce.dir, rootfsOnce.tarball
}

func makeRootfs(dir, tarball string) error {
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	bb, err := os.ReadFile(busyboxBin)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), bb, 0o755); err != nil {
		return err
	}
	for _, applet := range []string{"sh", "ping", "nc", "ip", "sleep", "cat", "echo", "ls", "true", "hostname"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644); err != nil {
		return err
	}
	f, err := os.Create(tarball)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(path)
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = rel
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	return errors.Join(err, tw.Close(), f.Close())
}

// runIn runs argv inside the host's network namespace with nsenter, which
// (unlike ip netns exec) leaves /sys and its cgroups as they are.
func runIn(ctx context.Context, ns string, env []string, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + ns, "--"}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// podman is one lab host's podman: its own storage, run directory and
// containers.conf (CNI backend reading meshd's conflists from the host's
// cni_conf_dir).
type podman struct {
	t    *testing.T
	host *lab.Host
	dir  string
	ids  []string // containers started, for the cleanup
}

// libcniCache is where podman's CNI library caches each attachment; a
// successful CNI DEL removes the entry.
const libcniCache = "/var/lib/cni/results"

func newPodman(t *testing.T, h *lab.Host) *podman {
	t.Helper()
	testenv.RequireTools(t, "podman", "nsenter", busyboxBin)
	p := &podman{t: t, host: h, dir: filepath.Join(h.Dir(), "podman")}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`[containers]
default_ulimits = [%q, %q]
[network]
network_backend = "cni"
network_config_dir = %q
cni_plugin_dirs = [%q]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
`, containerUlimits[0], containerUlimits[1], filepath.Join(h.Dir(), "cni"), cniPath)
	if err := os.WriteFile(p.conf(), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// Registered before any container starts: cleanups run last-in
	// first-out, so containers go before the lab's namespaces.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := p.run(ctx, "rm", "--force", "--all", "--time", "0"); err != nil {
			t.Errorf("podman cleanup on %s: %v", h.Name(), err)
		}
		// Only a failed teardown leaves entries; the machine keeps none.
		for _, id := range p.ids {
			left, _ := filepath.Glob(filepath.Join(libcniCache, "*-"+id+"-*"))
			for _, f := range left {
				t.Logf("removing %s left by a failed CNI DEL", f)
				os.Remove(f)
			}
		}
	})
	return p
}

func (p *podman) conf() string { return filepath.Join(p.dir, "containers.conf") }

func (p *podman) run(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"podman", "--root", filepath.Join(p.dir, "root"), "--runroot", filepath.Join(p.dir, "run"),
		"--tmpdir", filepath.Join(p.dir, "tmp"), "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"}, args...)
	return runIn(ctx, p.host.NS(), []string{"CONTAINERS_CONF=" + p.conf()}, argv...)
}

// must runs a podman command as a user would, failing the test on error.
func (p *podman) must(args ...string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := p.run(ctx, args...)
	if err != nil {
		p.t.Fatalf("podman on %s: %v", p.host.Name(), err)
	}
	return out
}

// start runs a detached container from the busybox rootfs on network.
func (p *podman) start(name, network string, cmd ...string) {
	p.t.Helper()
	rootfs, _ := busyboxRootfs(p.t)
	id := p.must(append([]string{"run", "--detach", "--name", name, "--network", network, "--cap-add", "NET_RAW", "--rootfs", rootfs}, cmd...)...)
	p.ids = append(p.ids, strings.TrimSpace(id))
}

func (p *podman) exec(name string, cmd ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return p.run(ctx, append([]string{"exec", name}, cmd...)...)
}

func (p *podman) pid(name string) int {
	p.t.Helper()
	pid, err := strconv.Atoi(p.must("inspect", "--format", "{{.State.Pid}}", name))
	if err != nil || pid <= 0 {
		p.t.Fatalf("pid of %s: %d %v", name, pid, err)
	}
	return pid
}

// docker is one lab host's dockerd. It runs in a mount namespace of its
// own where the host's plugin directory is mounted over
// /run/docker/plugins: every lab host's meshd serves its own plugin
// socket, and each dockerd finds its own there, as on a real host.
type docker struct {
	t    *testing.T
	host *lab.Host
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

const dockerPlugins = "/run/docker/plugins"

func startDocker(t *testing.T, h *lab.Host) *docker {
	t.Helper()
	testenv.RequireTools(t, "dockerd", "/usr/bin/docker", "unshare", "nsenter", busyboxBin)
	d := &docker{t: t, host: h, dir: filepath.Join(h.Dir(), "dk"), done: make(chan struct{})}
	for _, dir := range []string{d.dir, filepath.Dir(h.DockerPluginSocket()), dockerPlugins} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{
		"--data-root", filepath.Join(d.dir, "data"), "--exec-root", filepath.Join(d.dir, "x"),
		"-H", "unix://" + d.socket(), "--pidfile", filepath.Join(d.dir, "pid"),
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
		"--storage-driver", "vfs", "--containerd-namespace", "meshd-e2e", "--containerd-plugins-namespace", "meshd-e2e-plugins",
	}
	for _, u := range containerUlimits {
		args = append(args, "--default-ulimit", u)
	}
	script := fmt.Sprintf("mount --bind %s %s && exec nsenter --net=/run/netns/%s -- dockerd \"$@\"",
		filepath.Dir(h.DockerPluginSocket()), dockerPlugins, h.NS())
	logf, err := os.Create(filepath.Join(d.dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script, "dockerd"}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); logf.Close(); close(d.done) }()
	t.Cleanup(d.close)
	waitFor(t, 60*time.Second, "dockerd on "+h.Name(), func() error {
		select {
		case <-d.done:
			return fmt.Errorf("dockerd exited:\n%s", d.log())
		default:
		}
		_, err := d.run(context.Background(), "version", "--format", "{{.Server.Version}}")
		return err
	})
	_, tarball := busyboxRootfs(t)
	d.must("import", tarball, testImage)
	return d
}

const testImage = "meshd-e2e-busybox:latest"

func (d *docker) socket() string { return filepath.Join(d.dir, "docker.sock") }

func (d *docker) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	return tail(string(b), 40)
}

// close removes every container (so no container process outlives the
// test) and stops dockerd; its mount namespace, and the mounts in it, go
// with its last process.
func (d *docker) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if ids, err := d.run(ctx, "ps", "--all", "--quiet"); err == nil && ids != "" {
		if _, err := d.run(ctx, append([]string{"rm", "--force"}, strings.Fields(ids)...)...); err != nil {
			d.t.Errorf("docker cleanup on %s: %v", d.host.Name(), err)
		}
	}
	if d.t.Failed() {
		d.t.Logf("---- %s dockerd log (tail) ----\n%s", d.host.Name(), d.log())
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
}

func (d *docker) run(ctx context.Context, args ...string) (string, error) {
	// Debian's client, the same version as the daemon.
	cmd := exec.CommandContext(ctx, "/usr/bin/docker", append([]string{"--host", "unix://" + d.socket()}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s on %s: %w\n%s", strings.Join(args, " "), d.host.Name(), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func (d *docker) must(args ...string) string {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := d.run(ctx, args...)
	if err != nil {
		d.t.Fatal(err)
	}
	return out
}

func (d *docker) start(name, network string, cmd ...string) {
	d.t.Helper()
	d.must(append([]string{"run", "--detach", "--name", name, "--network", network, "--cap-add", "NET_RAW", testImage}, cmd...)...)
}

func (d *docker) exec(name string, cmd ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return d.run(ctx, append([]string{"exec", name}, cmd...)...)
}

func (d *docker) pid(name string) int {
	d.t.Helper()
	pid, err := strconv.Atoi(d.must("inspect", "--format", "{{.State.Pid}}", name))
	if err != nil || pid <= 0 {
		d.t.Fatalf("pid of %s: %d %v", name, pid, err)
	}
	return pid
}

// attachNetns names a container's network namespace under /run/netns
// with the lab's prefix (so the lab removes the name), for the host's
// ping and Go sockets to run inside it.
func attachNetns(t *testing.T, l *lab.Lab, name string, pid int) string {
	t.Helper()
	ns := l.Prefix() + "-" + name
	run(t, "", "ip", "netns", "attach", ns, strconv.Itoa(pid))
	return ns
}

// containerIPv4 is the address on the container's eth0.
func containerIPv4(t *testing.T, ns string) netip.Prefix {
	t.Helper()
	out := run(t, ns, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "inet" && i+1 < len(f) {
			p, err := netip.ParsePrefix(f[i+1])
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	t.Fatalf("no IPv4 address on eth0 in %s:\n%s", ns, out)
	return netip.Prefix{}
}

// busyboxPing pings from inside a container, as a user's `exec ping`.
func busyboxPing(exec func(string, ...string) (string, error), name string, to netip.Addr) error {
	_, err := exec(name, "ping", "-c", "1", "-W", "2", to.String())
	return err
}
