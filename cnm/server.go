package cnm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/net/netutil"

	"github.com/meshd/meshd/internal/unixsock"
)

// Bounds of the plugin socket. Docker keeps a few connections open and
// sends small requests; anything slower or larger is not Docker.
const (
	maxConns          = 32
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 90 * time.Second
	maxHeaderBytes    = 16 << 10
)

// Server is the plugin socket.
type Server struct {
	path string
	own  os.FileInfo // the socket file Listen made
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// Listen serves h on the unix socket path (root only, 0600), creating its
// directory. A socket left by a crashed meshd is replaced; one another
// process still answers on is an error.
func Listen(path string, h http.Handler) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("docker plugin socket: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	// 0600 from the start; never replacing a socket another process made
	// since removeStale looked.
	ln, err := unixsock.Listen(path, 0o600)
	if err != nil {
		return nil, fmt.Errorf("docker plugin socket: %w", err)
	}
	own, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("docker plugin socket: %w", err)
	}
	s := &Server{
		path: path,
		own:  own,
		ln:   netutil.LimitListener(ln, maxConns),
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(s.ln) // returns ErrServerClosed on Close
	}()
	return s, nil
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("docker plugin socket: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("docker plugin socket %s exists and is not a socket; move it away or set docker_plugin_socket to another path", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("docker plugin socket %s is served by another process (another meshd?); stop it or set docker_plugin_socket to another path", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("docker plugin socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("docker plugin socket: %w", err)
	}
	return nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops serving, lets calls in flight finish (bounded), and removes
// the socket, so Docker retries until a restarted meshd listens again.
// Nothing in the kernel changes: containers keep their network. Safe to
// call twice.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	// Only its own: a successor may have made the socket at path by now.
	if info, lerr := os.Lstat(s.path); lerr == nil && os.SameFile(info, s.own) {
		if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
