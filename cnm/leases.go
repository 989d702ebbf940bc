package cnm

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// leases reserves Docker containers' addresses in host-local's directory,
// the one meshd's conflists name as dataDir: host-local keeps one file per
// address in use, <dir>/<network>/<address>, created with O_EXCL. meshd
// creates its files the same way, so podman/containerd containers (host-
// local) and Docker containers (this driver) of one segment draw from the
// same pool without ever being handed the same address, and `ls` of that
// directory shows every address in use on the host.
//
// host-local writes "<container id>\r\n<ifname>" into its files and
// releases by matching that content; meshd's files start with
// leaseOwner, which no container ID does, so neither side ever removes
// the other's.
type leases struct {
	dir string
}

const leaseOwner = "meshd-docker"

// errTaken means another container (of either runtime) holds the address.
var errTaken = errors.New("in use")

func (l leases) path(network string, a netip.Addr) string {
	return filepath.Join(l.dir, network, a.String())
}

// reserve takes a for tag. created is false when this driver held it
// already under the same tag, which only CreateEndpoint accepts (it
// reasserts what RequestAddress took); errTaken means someone else has it.
func (l leases) reserve(network string, a netip.Addr, tag string) (created bool, err error) {
	if err := os.MkdirAll(filepath.Join(l.dir, network), 0o755); err != nil {
		return false, fmt.Errorf("lease directory: %w", err)
	}
	content := []byte(leaseOwner + "\r\n" + tag)
	f, err := os.OpenFile(l.path(network, a), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		if old, rerr := os.ReadFile(l.path(network, a)); rerr == nil && bytes.Equal(old, content) {
			return false, nil
		}
		return false, errTaken
	}
	if err != nil {
		return false, fmt.Errorf("reserve %s: %w", a, err)
	}
	_, err = f.Write(content)
	if err = errors.Join(err, f.Sync(), f.Close()); err != nil {
		os.Remove(f.Name())
		return false, fmt.Errorf("reserve %s: %w", a, err)
	}
	return true, nil
}

// release frees a if this driver holds it; anything else is left alone.
func (l leases) release(network string, a netip.Addr) error {
	p := l.path(network, a)
	if !l.isOurs(p) {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("release %s: %w", a, err)
	}
	return nil
}

func (l leases) isOurs(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.HasPrefix(string(b), leaseOwner+"\r\n")
}

// ours lists the addresses inside slice that this driver holds.
func (l leases) ours(network string, slice netip.Prefix) ([]netip.Addr, error) {
	entries, err := os.ReadDir(filepath.Join(l.dir, network))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	var out []netip.Addr
	for _, e := range entries {
		a, err := netip.ParseAddr(e.Name())
		if err != nil || !slice.Contains(a) {
			continue
		}
		if l.isOurs(filepath.Join(l.dir, network, e.Name())) {
			out = append(out, a)
		}
	}
	return out, nil
}

// inUse counts every lease inside slice, whoever holds it.
func (l leases) inUse(network string, slice netip.Prefix) int {
	entries, _ := os.ReadDir(filepath.Join(l.dir, network))
	n := 0
	for _, e := range entries {
		if a, err := netip.ParseAddr(e.Name()); err == nil && slice.Contains(a) {
			n++
		}
	}
	return n
}
