// Package unixsock creates the unix sockets meshd serves (the control
// socket, the embedded device's UAPI socket, the Docker plugin socket)
// with their final permissions from the moment anyone can reach them.
//
// bind(2) creates the socket file with the process umask applied, so a
// chmod afterwards leaves a window in which a permissive umask lets
// anyone connect; and setting the umask around the bind changes it for
// every goroutine of the daemon at once. Instead the socket is bound
// inside a fresh directory only meshd's user can enter, given its mode
// there, and only then linked to its real name.
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// MaxPath is the longest path a socket address holds (sizeof sun_path
// less the terminating NUL): a longer one could be bound through a
// directory descriptor, and then never connected to.
const MaxPath = 107

// Listen listens on a new unix socket at path whose file has mode from
// the start. path's directory must exist. Nothing at path is ever
// replaced: if something is there the error wraps fs.ErrExist, and the
// caller decides whether it is stale. The listener does not unlink path
// when it closes, so a successor's socket cannot be removed by mistake.
func Listen(path string, mode fs.FileMode) (*net.UnixListener, error) {
	if len(path) > MaxPath {
		return nil, fmt.Errorf("unix socket %s: the path is %d bytes, more than the %d a socket address holds", path, len(path), MaxPath)
	}
	// In path's directory, so that the link below stays on one
	// filesystem; MkdirTemp makes it 0700.
	private, err := os.MkdirTemp(filepath.Dir(path), ".meshd-sock-")
	if err != nil {
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	defer os.RemoveAll(private)
	bound := filepath.Join(private, "s")
	ln, err := bind(bound)
	if err != nil {
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	// A connect finds the socket by the file's inode, so the link serves
	// exactly like the name it was bound to; link, unlike rename, never
	// replaces what is already there.
	if err := os.Chmod(bound, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	if err := os.Link(bound, path); err != nil {
		ln.Close()
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("unix socket %s: the path is taken: %w", path, fs.ErrExist)
		}
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	return ln, nil
}

// bind binds a socket at path, through its directory's descriptor when
// path is too long for a socket address: the private directory's name
// makes it longer than the path the socket ends up at, which fits.
func bind(path string) (*net.UnixListener, error) {
	if len(path) <= MaxPath {
		return net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	}
	dir := filepath.Dir(path)
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	return net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path)), Net: "unix"})
}
