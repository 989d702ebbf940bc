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
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
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

// Server serves Provider on a unix socket.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// Listen creates the socket (0600: status shows keys and topology) and
// starts serving. A stale socket from a crashed run is replaced; a live
// one means another daemon runs and is an error.
func Listen(path string, p Provider) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is served by another running meshd; stop it first or set control_socket", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict control socket %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(p.Status())
	})
	s := &Server{path: path, ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// Handle adds an endpoint (e.g. reload) before or while serving.
func (s *Server) Handle(pattern string, h http.HandlerFunc) {
	s.srv.Handler.(*http.ServeMux).HandleFunc(pattern, h)
}

// Close stops serving and removes the socket. Safe to call twice.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	os.Remove(s.path)
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
