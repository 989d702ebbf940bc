package unixsock

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestListenWithItsModeAndNothingLeft: under a umask that would leave the
// socket open to everyone, the file still has the mode asked for, answers
// connections, and no private directory is left next to it.
func TestListenWithItsModeAndNothingLeft(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	// As long as a socket address allows (107 bytes), so that the
	// private directory's name would not fit.
	dir := t.TempDir()
	if pad := 107 - len(dir) - len("/") - len("/x/ctl.sock"); pad > 0 {
		dir = filepath.Join(dir, strings.Repeat("d", pad))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "x", "ctl.sock")
	if len(path) > 107 {
		t.Fatalf("test path is %d bytes, more than a socket address holds", len(path))
	}
	if err := os.Mkdir(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	info, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode()&os.ModeSocket == 0 || info.Mode().Perm() != 0o600 {
		t.Errorf("%s is %v, want a socket with mode 0600", path, info.Mode())
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connect to %s: %v", path, err)
	}
	c.Close()
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("%s holds %d entries, want only the socket: %v", filepath.Dir(path), len(entries), entries)
	}
	// Closing must not take the name with it: a successor may own it by then.
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("the listener's Close removed %s: %v", path, err)
	}
}

// TestListenNeverReplaces: whatever already sits at the path stays, and
// the error says it exists.
func TestListenNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "taken")
	if err := os.WriteFile(path, []byte("someone else's"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(path, 0o600)
	if !errors.Is(err, fs.ErrExist) {
		if ln != nil {
			ln.Close()
		}
		t.Fatalf("Listen on an existing file = %v, want an error wrapping fs.ErrExist", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("the error does not name %s: %v", path, err)
	}
	if b, _ := os.ReadFile(path); string(b) != "someone else's" {
		t.Errorf("the existing file changed: %q", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%s holds %d entries after a failed Listen, want 1: %v", dir, len(entries), entries)
	}
}

// TestListenRefusesAPathNoClientCouldDial: a path longer than a socket
// address is refused up front, and nothing is created.
func TestListenRefusesAPathNoClientCouldDial(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, strings.Repeat("p", MaxPath))
	if ln, err := Listen(path, 0o600); err == nil || !strings.Contains(err.Error(), "107") {
		if ln != nil {
			ln.Close()
		}
		t.Fatalf("Listen(%d-byte path) = %v, want an error naming the 107-byte limit", len(path), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("%s holds %v after a refused Listen", dir, entries)
	}
}
