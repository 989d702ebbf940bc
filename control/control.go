// Package control is meshd's local control plane: a root-only unix socket
// on which the running daemon answers status queries and reload requests,
// and the client the CLI uses to ask.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/internal/unixsock"
)

// Status is what `meshd status` shows; its JSON form is a public contract
// for scripts (`meshd status --json`).
type Status struct {
	Node     Node        `json:"node"`
	Peers    []Peer      `json:"peers"`
	Rejected []Rejection `json:"rejected"`
	// Reconciles counts completed reconcile passes; LastError is the most
	// recent failure, empty when the last pass succeeded.
	Reconciles int    `json:"reconciles"`
	LastError  string `json:"last_error,omitempty"`
	// Policy holds the allow-list counters: one entry per rule label
	// (allow[i], segment:NAME, default-deny, invalid, established,
	// link-local, mss-clamp).
	Policy []PolicyCounter `json:"policy"`
	// Repairs counts, by what was restored ("routes", "rules",
	// "nftables", "interface", "interface-config", "uapi-socket",
	// "peers"), how often meshd put back state someone else removed.
	Repairs map[string]int `json:"repairs"`
	// Missing lists state found gone and not yet restored, as
	// "what: why"; status --check fails while it is not empty.
	Missing []string `json:"missing,omitempty"`
	// Sites is how this host reaches every other site (a cluster of
	// several sites); status --check fails while one is unreachable.
	Sites []Site `json:"sites,omitempty"`
	// Failovers counts how often another site moved to another gateway
	// (of this site or of its own) since meshd started.
	Failovers int `json:"gateway_failovers"`
	// Probes are this host's checks of its site's gateways (only a few
	// hosts of a site with several gateways probe them).
	Probes []GatewayProbe `json:"gateway_probes,omitempty"`
	// Ejections counts how often this gateway drained because its site's
	// probes found it forwarding nothing; ProbeReports how often this
	// host reported a gateway so.
	Ejections    int `json:"gateway_ejections"`
	ProbeReports int `json:"gateway_reports"`
	// Identity is this host's certificate and trust mode; absent when
	// the cluster runs without a CA.
	Identity *Identity `json:"identity,omitempty"`
}

// GatewayProbe is one gateway of this host's site as its probes see it.
type GatewayProbe struct {
	Gateway string `json:"gateway"`
	// Targets is how many remote gateways are probed through it.
	Targets int `json:"targets"`
	// Failing counts the rounds in a row in which the gateway answered
	// but forwarded none of the probes; Reported is set while this host
	// reports it.
	Failing  int  `json:"failing"`
	Reported bool `json:"reported"`
	// Silent: in the last round nothing answered, not even the gateway
	// itself (it is down, or probes cannot be sent: see the log).
	Silent bool `json:"silent,omitempty"`
}

// Identity is this host's standing under the cluster CA.
type Identity struct {
	// Mode is "strict" or "transitional" (identity.mode).
	Mode string `json:"mode"`
	// Certificate is the name the host's certificate is issued to,
	// NotAfter its end of validity (RFC 3339), and ExpirySeconds how long
	// it is still valid: negative once it expired, when every other host
	// refuses this one.
	Certificate   string  `json:"certificate"`
	NotAfter      string  `json:"not_after"`
	ExpirySeconds float64 `json:"expiry_seconds"`
	// Unsigned names the members whose announcement carried no
	// certificate and was accepted (transitional mode): the hosts still
	// to be converted before the cluster can turn strict.
	Unsigned []string `json:"unsigned_accepted"`
}

// KeyringAnswer is what a gossip keyring operation ('meshd gossip-key')
// found on the members.
type KeyringAnswer struct {
	Response *KeyringResponse `json:"response"`
	Error    string           `json:"error"`
	// Absent lists the members the cluster knows that are not alive
	// (failed, left): serf's operation neither reaches nor counts them,
	// and they keep the keyring they had.
	Absent []Member `json:"absent,omitempty"`
}

// KeyringResponse is serf's key manager's answer, with keys given by
// their fingerprints (cluster.KeyFingerprint): never the keys themselves.
type KeyringResponse struct {
	Messages    map[string]string // member -> why it failed
	NumNodes    int               // live members asked
	NumResp     int
	NumErr      int
	Keys        map[string]int // fingerprint -> members holding it
	PrimaryKeys map[string]int // fingerprint -> members writing with it
}

// Member is a member of the cluster and its serf state.
type Member struct {
	Name  string `json:"name"`
	State string `json:"state"`
}

// ReloadRequest is what 'meshd reload' sends: the config file it read
// the control socket from, which must be the one the daemon runs with.
type ReloadRequest struct {
	Config string `json:"config,omitempty"`
}

// ReloadResult is what a reload (the request or SIGHUP) applied and what
// waits for a restart.
type ReloadResult struct {
	// Applied describes each change that took effect, e.g. "2 allow
	// rules" or "certificate h1 (/etc/meshd/host.crt), valid until ...".
	Applied []string `json:"applied"`
	// Restart lists the changed keys that take effect only at the next
	// start, e.g. "segments[1].cidr"; their running values stay.
	Restart []string `json:"restart"`
}

// Site is one other site as this host reaches it.
type Site struct {
	Name   string   `json:"name"`
	Blocks []string `json:"blocks"`
	// Gateway is the gateway of this host's site that carries the site's
	// traffic, Remote the other site's gateway at the end of its tunnel.
	Gateway string `json:"gateway,omitempty"`
	Remote  string `json:"remote,omitempty"`
	// Transit is the site traffic is relayed through when the two
	// sites' gateways have no direct path ("" when direct).
	Transit     string `json:"transit,omitempty"`
	Unreachable string `json:"unreachable,omitempty"`
}

// PolicyCounter is what one allow-list rule has matched since the last
// reload.
type PolicyCounter struct {
	Label   string `json:"label"`
	Action  string `json:"action"` // accept | drop | clamp (the TCP MSS clamp, see policy.LabelMSSClamp)
	Reason  string `json:"reason"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Node describes this host.
type Node struct {
	Name        string    `json:"name"`
	PublicKey   string    `json:"public_key"`
	Fingerprint string    `json:"fingerprint"`
	Mode        string    `json:"mode"` // kernel | userspace
	Interface   string    `json:"interface"`
	ListenPort  int       `json:"listen_port"`
	MTU         int       `json:"mtu"`
	Endpoint    string    `json:"endpoint"`
	Gossip      string    `json:"gossip"`
	Segments    []Segment `json:"segments"`
	// Site and role on a cluster of several sites.
	Site     string `json:"site"`
	Gateway  bool   `json:"gateway"`
	Draining bool   `json:"draining,omitempty"`
	// DrainReason says why a draining gateway drains.
	DrainReason string `json:"drain_reason,omitempty"`
	// NAT is a gateway without a public address; Observed is where the
	// public gateways see its tunnels come from.
	NAT      bool   `json:"nat,omitempty"`
	Observed string `json:"observed_endpoint,omitempty"`
	MeshAddr string `json:"mesh_addr,omitempty"`
}

// Segment is one of this host's segments and its slice.
type Segment struct {
	Name   string `json:"name"`
	CIDR   string `json:"cidr"`
	Subnet string `json:"subnet"`
	Table  int    `json:"table"`
}

// Peer is one remote member: configured peers carry WireGuard counters;
// failed or left members are listed with their serf state only.
type Peer struct {
	Name       string   `json:"name"`
	State      string   `json:"state"` // serf: alive | leaving | left | failed
	Configured bool     `json:"configured"`
	PublicKey  string   `json:"public_key,omitempty"`
	Endpoint   string   `json:"endpoint,omitempty"`
	Slices     []string `json:"slices,omitempty"`
	// Site is the peer's site; WAN marks a gateway of another site.
	Site string `json:"site,omitempty"`
	WAN  bool   `json:"wan,omitempty"`
	// Carries lists the other sites whose traffic goes through this peer.
	Carries []string `json:"carries,omitempty"`
	// LearnedEndpoint is where the peer's packets actually come from when
	// that differs from what it announced: a NAT's mapping, or a gateway
	// behind NAT that announced none.
	LearnedEndpoint string `json:"learned_endpoint,omitempty"`
	// Idle is a peer without keepalives that nothing was sent to for 3
	// minutes: its session may have lapsed, and that is fine.
	Idle bool `json:"idle,omitempty"`
	// HandshakeAgeSeconds is -1 when no handshake has completed yet.
	HandshakeAgeSeconds float64 `json:"handshake_age_seconds"`
	RxBytes             int64   `json:"rx_bytes"`
	TxBytes             int64   `json:"tx_bytes"`
}

// Rejection is an announcement meshd refused.
type Rejection struct {
	Member string `json:"member"`
	Reason string `json:"reason"`
}

// Provider is what the daemon exposes through the socket.
type Provider interface {
	Status() Status
}

// Limits of the control socket. It is root-only, but a broken script
// looping on `meshd status`, or anything that opens connections and never
// speaks, must not exhaust the daemon's file descriptors or goroutines:
// the reconciler needs both.
const (
	// MaxConns is how many connections are kept open at once. Past it,
	// the connection that has waited longest without a request in flight
	// is closed: a real client sends its request as soon as it connects,
	// so it is never the one that goes, however many silent ones arrive.
	MaxConns = 16
	// RequestTimeout bounds one request, including waiting for the
	// reconciler (30 s at most) and a keyring change across the cluster.
	RequestTimeout = 60 * time.Second
	// maxBody bounds what a request may send.
	maxBody = 64 << 10
)

// Server serves Provider on a unix socket.
type Server struct {
	path string
	// own is the socket file Listen made: Close removes the file at path
	// only while it is still that one, never a successor's.
	own  fs.FileInfo
	ln   net.Listener
	srv  *http.Server
	mux  *http.ServeMux
	done chan struct{}
	// conns is touched by the http server's connection goroutines.
	conns *connLimit
}

// connLimit keeps at most max connections open, evicting idle ones.
type connLimit struct {
	max int

	mu    sync.Mutex
	conns map[net.Conn]*connInfo
}

type connInfo struct {
	busy  bool      // a request is being served
	since time.Time // when it last became idle (or was accepted)
}

func newConnLimit(max int) *connLimit {
	return &connLimit{max: max, conns: map[net.Conn]*connInfo{}}
}

// track is the server's ConnState hook.
func (l *connLimit) track(c net.Conn, st http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch st {
	case http.StateNew:
		// A connection whose request already arrived counts as busy from
		// the start, so a burst of silent ones cannot push it out before
		// its request is read.
		pc, _ := c.(*peekedConn)
		l.conns[c] = &connInfo{since: time.Now(), busy: pc != nil && pc.ready}
		if len(l.conns) > l.max {
			l.evictLocked(c)
		}
	case http.StateActive:
		if ci := l.conns[c]; ci != nil {
			ci.busy = true
		}
	case http.StateIdle:
		if ci := l.conns[c]; ci != nil {
			ci.busy, ci.since = false, time.Now()
		}
	case http.StateHijacked, http.StateClosed:
		delete(l.conns, c)
	}
}

// peekListener notes whether a connection's first bytes are already
// there when it is accepted.
type peekListener struct{ net.Listener }

type peekedConn struct {
	net.Conn
	ready bool
}

func (l peekListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &peekedConn{Conn: c, ready: pending(c)}, nil
}

// pending peeks without blocking or consuming.
func pending(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, _ = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	})
	return n > 0
}

// evictLocked closes the connection idle the longest; when every one is
// busy, the newcomer goes.
func (l *connLimit) evictLocked(newcomer net.Conn) {
	var victim net.Conn
	var oldest time.Time
	for c, ci := range l.conns {
		if !ci.busy && (victim == nil || ci.since.Before(oldest)) {
			victim, oldest = c, ci.since
		}
	}
	if victim == nil {
		victim = newcomer
	}
	delete(l.conns, victim)
	victim.Close()
}

// serve bounds request bodies before any handler reads them.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	s.mux.ServeHTTP(w, r)
}

// CheckPath refuses a control_socket path holding anything but a socket:
// a typo pointing it at a config file or a directory must not cost the
// operator that file. A missing path is fine; a socket is Listen's to
// judge (live or stale).
func CheckPath(path string) error {
	info, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return &config.Error{Key: "control_socket", Problem: fmt.Sprintf("cannot inspect %s: %v", path, err),
			Fix: "point control_socket at a path meshd can create, e.g. /run/meshd/meshd.sock"}
	case info.Mode()&fs.ModeSocket == 0:
		return &config.Error{Key: "control_socket", Problem: fmt.Sprintf("%s exists and is a %s, not a socket; meshd would have to delete it", path, fileKind(info.Mode())),
			Fix: "move that file away, or point control_socket elsewhere, e.g. /run/meshd/meshd.sock"}
	}
	return nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m.IsRegular():
		return "regular file"
	}
	return "special file"
}

// Live reports whether a daemon answers on the socket at path.
func Live(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// RemoveStale removes the socket at path when nothing answers on it, as a
// killed daemon leaves it; anything else stays. It reports whether it
// removed one.
func RemoveStale(path string) (bool, error) {
	if err := CheckPath(path); err != nil {
		return false, err
	}
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if Live(path) {
		return false, fmt.Errorf("control socket %s is served by a running meshd; stop it first, or set control_socket to another path", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("remove stale control socket %s: %w", path, err)
	}
	return true, nil
}

// Listen creates the socket (0600: status shows keys and topology) and
// starts serving. A stale socket from a crashed run is replaced; a live
// one means another daemon runs and is an error, and anything that is not
// a socket is a config error (see CheckPath) and stays untouched.
func Listen(path string, p Provider) (*Server, error) {
	if err := CheckPath(path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w", err)
	}
	if _, err := RemoveStale(path); err != nil {
		return nil, err
	}
	// 0600 from the start, never replacing a socket another daemon made
	// since RemoveStale looked; removeOwnSocket unlinks it at Close.
	ln, err := unixsock.Listen(path, 0o600)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket: %w", err)
	}
	own, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(p.Status())
	})
	s := &Server{path: path, own: own, ln: peekListener{ln}, mux: mux, done: make(chan struct{}), conns: newConnLimit(MaxConns)}
	s.srv = &http.Server{
		ConnState:         s.conns.track,
		Handler:           http.TimeoutHandler(http.HandlerFunc(s.serve), RequestTimeout, "meshd: the request took too long\n"),
		ReadHeaderTimeout: 2 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      RequestTimeout + 5*time.Second,
		IdleTimeout:       10 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(s.ln)
	}()
	return s, nil
}

// removeOwnSocket unlinks the socket file if it is still the one Listen
// made.
func (s *Server) removeOwnSocket() {
	if info, err := os.Lstat(s.path); err == nil && os.SameFile(info, s.own) {
		os.Remove(s.path)
	}
}

// Handle adds an endpoint (e.g. reload) before or while serving.
func (s *Server) Handle(pattern string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, h)
}

// closeGrace is how long Close lets requests in flight finish.
const closeGrace = 2 * time.Second

// Close stops serving and removes the socket; requests still running
// after closeGrace have their connections closed, so Close is bounded and
// leaves nothing open behind it. Safe to call twice.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		// Shutdown only waits: the connections it gave up on stay open,
		// and their clients wait for the request timeout.
		s.srv.Close()
		err = fmt.Errorf("requests still running after %s were cut off", closeGrace)
	}
	<-s.done
	s.removeOwnSocket()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ErrNoDaemon means nothing answers on the control socket.
var ErrNoDaemon = errors.New("no meshd is running")

// Client talks to a running daemon.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{
		// Longer than the daemon's own 30 s wait for its reconciler and
		// than a keyring change across a large cluster, so a slow answer
		// is not mistaken for a missing daemon.
		Timeout: 90 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Status fetches the daemon's status.
func (c *Client) Status() (*Status, error) {
	var st Status
	if err := c.do(http.MethodGet, "/v1/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// do calls an endpoint and decodes a JSON answer into out (if non-nil).
func (c *Client) do(method, path string, out any) error {
	return c.doBody(method, path, "", out)
}

func (c *Client) doBody(method, path, body string, out any) error {
	req, err := http.NewRequest(method, "http://meshd"+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return fmt.Errorf("meshd did not answer on %s in time: %w", c.path, err)
	}
	if err != nil {
		return fmt.Errorf("%w (control socket %s: %v); start it with `meshd run`, or pass the --config it runs with", ErrNoDaemon, c.path, errors.Unwrap(err))
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read answer from meshd: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return &RemoteError{Status: resp.StatusCode, Message: strings.TrimSpace(string(answer))}
	}
	if out != nil {
		if err := json.Unmarshal(answer, out); err != nil {
			return fmt.Errorf("decode answer from meshd: %w", err)
		}
	}
	return nil
}

// RemoteError is a request the daemon refused; Status 400 means the
// request's input (e.g. the config file to reload) was bad.
type RemoteError struct {
	Status  int
	Message string
}

func (e *RemoteError) Error() string { return "the daemon refused: " + e.Message }

// BadInput reports whether the daemon blamed the input (config) rather
// than itself.
func (e *RemoteError) BadInput() bool { return e.Status == http.StatusBadRequest }

// PostJSON sends body to a POST endpoint and decodes its JSON answer.
func (c *Client) PostJSON(path, body string, out any) error {
	return c.doBody(http.MethodPost, path, body, out)
}

// Post calls a POST endpoint (e.g. /v1/reload) and returns the daemon's
// text answer.
func (c *Client) Post(path string) error {
	return c.do(http.MethodPost, path, nil)
}
