package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// defaultStopGrace is how long Stop waits after SIGTERM before SIGKILL.
const defaultStopGrace = 15 * time.Second

// Meshd's fixed ports; every host has its own namespace, so they can all
// use the same ones.
const (
	gossipPort    = 7946
	wireguardPort = 51820
)

// Host is one namespace "machine" of the lab.
type Host struct {
	lab       *Lab
	index     int
	slices    map[string]Slice
	stopGrace time.Duration
	// In a multi-site lab: the host's site, its 1-based position there
	// and whether it is one of the site's gateways. site is nil in a
	// flat lab.
	site    *Site
	sitePos int
	gateway bool

	mu   sync.Mutex
	proc *process // the latest meshd started, nil before Start
}

type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // Wait's result, valid after done
}

// Index is the host's 1-based number.
func (h *Host) Index() int { return h.index }

// Name is the host's node name, "h<i>".
func (h *Host) Name() string { return "h" + strconv.Itoa(h.index) }

// NS is the host's network namespace.
func (h *Host) NS() string { return h.lab.spec.Prefix + "-" + h.Name() }

// PodNS is the namespace of the host's pod on segment.
func (h *Host) PodNS(segment string) string { return h.NS() + "-" + segment }

// Slice returns the host's share of segment; ok is false for an unknown
// segment.
func (h *Host) Slice(segment string) (s Slice, ok bool) {
	s, ok = h.slices[segment]
	return s, ok
}

// PodAddr is the address of the host's pod on segment (zero if unknown).
func (h *Host) PodAddr(segment string) netip.Addr { return h.slices[segment].Pod }

// Gateway is the host's own address on the pod link of segment.
func (h *Host) Gateway(segment string) netip.Addr { return h.slices[segment].Gateway }

// Subnet is the host's slice of segment.
func (h *Host) Subnet(segment string) netip.Prefix { return h.slices[segment].Subnet }

// UnderlayAddr is the host's address on the switch; in a multi-site lab
// that is its site's bridge, so it is SiteAddr.
func (h *Host) UnderlayAddr() netip.Addr {
	if h.site != nil {
		return h.SiteAddr()
	}
	return UnderlayAddr(h.lab.spec.IPv6Underlay, h.index)
}

// Interface is the WireGuard interface name meshd is configured with. It
// embeds the prefix because /var/run/wireguard is shared by all namespaces.
func (h *Host) Interface() string { return wgInterfaceName(h.lab.spec.Prefix, h.index) }

// UAPISocket is where a userspace WireGuard device of this host listens.
func (h *Host) UAPISocket() string { return filepath.Join(wgSocketDir, h.Interface()+".sock") }

// Dir is the host's working directory.
func (h *Host) Dir() string { return filepath.Join(h.lab.dir, h.Name()) }

// ConfigPath is where WriteConfig puts meshd.toml.
func (h *Host) ConfigPath() string { return filepath.Join(h.Dir(), "meshd.toml") }

// LogPath is the file meshd's stdout and stderr are appended to.
func (h *Host) LogPath() string { return filepath.Join(h.Dir(), "meshd.log") }

// ControlSocket is the control_socket of the host's config.
func (h *Host) ControlSocket() string { return filepath.Join(h.Dir(), "meshd.sock") }

// IPAMDir is the cni_ipam_dir of the host's config: host-local's leases
// of its containers, apart from the machine's /var/lib/cni/networks.
func (h *Host) IPAMDir() string { return filepath.Join(h.Dir(), "ipam") }

// DockerPluginSocket is the docker_plugin_socket of the host's config. A
// dockerd of this host finds it when that directory is mounted over its
// /run/docker/plugins (every host's meshd has its own).
func (h *Host) DockerPluginSocket() string { return filepath.Join(h.Dir(), "plugins", "meshd.sock") }

// DataDir is the data_dir of the host's config.
func (h *Host) DataDir() string { return filepath.Join(h.Dir(), "data") }

// printer writes one line of a config.
type printer func(format string, args ...any)

// Config renders meshd's TOML configuration for this host; extra is
// appended verbatim, e.g. [[allow]] tables. In a multi-site lab the serf
// pool is the host's site, and [site], [wan] (gateways only) and each
// segment's site_block are added.
func (h *Host) Config(extra string) string {
	var b strings.Builder
	p := printer(func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) })
	p("node_name = %s", tomlString(h.Name()))
	p("data_dir = %s", tomlString(h.DataDir()))
	p("control_socket = %s", tomlString(h.ControlSocket()))
	p("cni_conf_dir = %s", tomlString(filepath.Join(h.Dir(), "cni")))
	p("cni_ipam_dir = %s", tomlString(h.IPAMDir()))
	p("docker_plugin_socket = %s", tomlString(h.DockerPluginSocket()))
	p("log_level = %s", tomlString("debug"))
	p("")
	p("[cluster]")
	p("bind_addr = %s", tomlString(h.UnderlayAddr().String()))
	p("bind_port = %d", gossipPort)
	var seeds []netip.Addr
	for _, o := range h.clusterPeers() {
		seeds = append(seeds, o.UnderlayAddr())
	}
	p("join = [%s]", tomlSeeds(seeds, gossipPort))
	p("gossip_key_file = %s", tomlString(h.lab.GossipKeyFile()))
	h.writeSiteConfig(p)
	p("")
	p("[wireguard]")
	p("interface = %s", tomlString(h.Interface()))
	p("listen_port = %d", wireguardPort)
	p("mode = %s", tomlString(h.lab.spec.Mode))
	for _, seg := range h.lab.spec.Segments {
		p("")
		p("[[segments]]")
		p("name = %s", tomlString(seg.Name))
		p("cidr = %s", tomlString(seg.CIDR))
		if h.site != nil {
			p("site_block = %s", tomlString(h.site.Block(seg.Name).String()))
		}
		p("subnet = %s", tomlString(h.Subnet(seg.Name).String()))
	}
	if extra != "" {
		p("")
		b.WriteString(extra)
		if !strings.HasSuffix(extra, "\n") {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// tomlSeeds renders addrs with port as the items of a TOML array of
// strings.
func tomlSeeds(addrs []netip.Addr, port uint16) string {
	items := make([]string, len(addrs))
	for i, a := range addrs {
		items[i] = tomlString(netip.AddrPortFrom(a, port).String())
	}
	return strings.Join(items, ", ")
}

// tomlString quotes s as a TOML basic string. strconv.Quote is not enough:
// TOML has no \x escapes.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// WriteConfig writes Config(extra) to ConfigPath.
func (h *Host) WriteConfig(extra string) (string, error) {
	path := h.ConfigPath()
	if err := os.WriteFile(path, []byte(h.Config(extra)), 0o644); err != nil {
		return "", fmt.Errorf("lab: write %s config: %w", h.Name(), err)
	}
	return path, nil
}

// Start runs "<bin> run --config <ConfigPath> <args...>" inside the host's
// namespace, appending its output to LogPath. A config without extras is
// written first if none exists yet. The process gets its own process group,
// so a terminal's Ctrl-C reaches only the caller, which then stops meshd
// deliberately; and it dies with the caller if the caller is killed.
func (h *Host) Start(bin string, args ...string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc != nil && !h.proc.exited() {
		return fmt.Errorf("lab: %s: meshd already running (pid %d)", h.Name(), h.proc.cmd.Process.Pid)
	}
	if _, err := os.Stat(h.ConfigPath()); errors.Is(err, os.ErrNotExist) {
		if _, err := h.WriteConfig(""); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(h.LogPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lab: %s: open log: %w", h.Name(), err)
	}
	argv := append([]string{"netns", "exec", h.NS(), bin, "run", "--config", h.ConfigPath()}, args...)
	// A marker makes restarts visible in the log.
	fmt.Fprintf(logf, "=== lab %s: ip %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	p, err := spawn(argv, logf)
	if err != nil {
		return fmt.Errorf("lab: %s: start %s in netns %s: %w", h.Name(), bin, h.NS(), err)
	}
	h.proc = p
	return nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal targets the whole process group: anything meshd spawned goes too.
// The group stays valid until the leader is reaped, which only happens after
// done is closed.
func (p *process) signal(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

func (h *Host) current() *process {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.proc
}

// Running reports whether the meshd started last is still alive.
func (h *Host) Running() bool {
	p := h.current()
	return p != nil && !p.exited()
}

// Pid of the meshd started last, 0 if never started.
func (h *Host) Pid() int {
	if p := h.current(); p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// Stop sends SIGTERM and waits; after 15 s it sends SIGKILL. It returns an
// error if meshd had to be killed or exited non-zero (also if it had already
// exited that way before Stop).
func (h *Host) Stop() error {
	p := h.current()
	if p == nil {
		return fmt.Errorf("lab: %s: meshd was never started", h.Name())
	}
	killed, err := p.terminate(h.stopGrace)
	switch {
	case err != nil:
		return fmt.Errorf("lab: %s: SIGTERM meshd: %w", h.Name(), err)
	case killed:
		return fmt.Errorf("lab: %s: meshd ignored SIGTERM for %s and was killed (log %s)", h.Name(), h.stopGrace, h.LogPath())
	case p.err != nil:
		return fmt.Errorf("lab: %s: meshd exited: %w (log %s)", h.Name(), p.err, h.LogPath())
	}
	return nil
}

// Kill sends SIGKILL and waits for meshd to be gone. Its exit status is of
// no interest: the point of Kill is simulating a crash.
func (h *Host) Kill() error {
	p := h.current()
	if p == nil {
		return nil
	}
	if err := p.signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("lab: %s: SIGKILL meshd: %w", h.Name(), err)
	}
	<-p.done
	return nil
}

// Wait blocks until the meshd started last exits or timeout passes, and
// returns its exit error; useful for tests expecting meshd to refuse a
// config.
func (h *Host) Wait(timeout time.Duration) error {
	p := h.current()
	if p == nil {
		return fmt.Errorf("lab: %s: meshd was never started", h.Name())
	}
	if p.exited() {
		return p.err
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("lab: %s: meshd still running after %s", h.Name(), timeout)
	}
}

// Log returns everything meshd wrote so far (all runs).
func (h *Host) Log() string {
	b, err := os.ReadFile(h.LogPath())
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return string(b)
}

// StopHosts stops meshd on every host of hosts that runs it, all at once,
// and returns their errors joined.
func StopHosts(hosts []*Host) error {
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		if h.Running() {
			wg.Go(func() { errs[i] = h.Stop() })
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}
