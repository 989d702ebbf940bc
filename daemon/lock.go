package daemon

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
)

// lockNamespace holds an abstract unix socket, which lives in the
// network namespace rather than the file system. A second meshd in the
// same namespace would otherwise start by "cleaning up" the first one's
// routes, rules and nftables table, since it finds them by their marks;
// this lock makes it stop before it touches anything.
func lockNamespace() (io.Closer, error) {
	ln, err := net.Listen("unix", "@meshd-netns-lock")
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, errors.New("another meshd is already running in this network namespace; stop it first (two daemons would fight over the same routes and nftables table)")
	}
	if err != nil {
		return nil, fmt.Errorf("take the per-namespace lock: %w", err)
	}
	return ln, nil
}
