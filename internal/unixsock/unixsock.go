// Package unixsock creates the unix sockets meshd serves (the control
// socket, the embedded device's UAPI socket) with their final permissions
// from the moment anyone can reach them.
//
// bind(2) creates the socket file with the process umask applied, so a
// chmod afterwards leaves a window in which a permissive umask lets
// anyone connect; and setting the umask around the bind changes it for
// every goroutine of the daemon at once. Instead the socket is bound
// inside a fresh directory only meshd's user can enter, given its mode
// there, and only then linked to its real name.
package unixsock

import (
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Listen listens on a new unix socket at path whose file has mode from
// the start. path's directory must exist. Nothing at path is ever
// replaced: if something is there the error wraps fs.ErrExist, and the
// caller decides whether it is stale. The listener does not unlink path
// when it closes, so a successor's socket cannot be removed by mistake.
func Listen(path string, mode fs.FileMode) (*net.UnixListener, error) {
	// In path's directory, so that the link below stays on one
	// filesystem; MkdirTemp makes it 0700.
	private, err := os.MkdirTemp(filepath.Dir(path), ".meshd-sock-")
	if err != nil {
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	defer os.RemoveAll(private)
	ln, err := bindIn(private, "s")
	if err != nil {
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	bound := filepath.Join(private, "s")
	// A connect finds the socket by the file's inode, so the link serves
	// exactly like the name it was bound to; link, unlike rename, never
	// replaces what is already there.
	err = os.Chmod(bound, mode)
	if err == nil {
		err = os.Link(bound, path)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	return ln, nil
}

// bindIn binds a socket named name in dir through the directory's
// descriptor: a socket address holds at most 107 bytes, and dir's name,
// longer than path's by the private directory's, may not fit where path
// does.
func bindIn(dir, name string) (*net.UnixListener, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	return net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d/%s", fd, name), Net: "unix"})
}
