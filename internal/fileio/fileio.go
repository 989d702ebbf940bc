// Package fileio reads and writes meshd's own small files: keys,
// certificates, keyrings and saved state. Reads are bounded and refuse
// anything but a regular file, because a path that points at /dev/zero
// would grow memory without limit and a FIFO would hang the start. Writes
// go through a synced temporary file and a rename, so a crash never leaves
// a truncated key or a half-written state file behind.
package fileio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Error says what is wrong with a file and how to fix it. It is a
// configuration problem, not a crash: the CLI maps it to exit code 2.
type Error struct {
	Path    string
	Problem string
	Fix     string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s; %s", e.Path, e.Problem, e.Fix)
}

// Limits for the files meshd reads. They are far above any valid content
// and far below what would hurt.
const (
	MaxKeySize   = 4 << 10
	MaxCertSize  = 64 << 10
	MaxStateSize = 1 << 20
)

// ReadRegular returns the content of path, which must be a regular file
// (a symlink to one is fine) of at most max bytes. A missing file is
// returned as an error wrapping fs.ErrNotExist; a symlink whose target is
// missing is an *Error, never "not exist", so a caller that creates
// missing files cannot replace a secret that is simply not mounted yet.
func ReadRegular(path string, max int64) ([]byte, error) {
	if err := checkDangling(path); err != nil {
		return nil, err
	}
	// O_NONBLOCK keeps the open of a FIFO from waiting for a writer; it
	// changes nothing for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := CheckRegular(path, info); err != nil {
		return nil, err
	}
	if info.Size() > max {
		return nil, &Error{Path: path, Problem: fmt.Sprintf("is %d bytes, more than the %d a file of this kind can hold", info.Size(), max),
			Fix: "check the path: it points at the wrong file"}
	}
	// The size can change under us; read at most one byte past the limit
	// to tell.
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, &Error{Path: path, Problem: fmt.Sprintf("grew past %d bytes while being read", max), Fix: "check the path: it points at the wrong file"}
	}
	return data, nil
}

// CheckRegular refuses directories, devices, FIFOs and sockets by name.
func CheckRegular(path string, info fs.FileInfo) error {
	mode := info.Mode()
	if mode.IsRegular() {
		return nil
	}
	what := "not a regular file"
	switch {
	case mode.IsDir():
		what = "a directory"
	case mode&fs.ModeNamedPipe != 0:
		what = "a FIFO"
	case mode&fs.ModeDevice != 0, mode&fs.ModeCharDevice != 0:
		what = "a device"
	case mode&fs.ModeSocket != 0:
		what = "a socket"
	}
	return &Error{Path: path, Problem: "is " + what + ", not a regular file", Fix: "point it at the file itself"}
}

func checkDangling(path string) error {
	li, err := os.Lstat(path)
	if err != nil || li.Mode()&fs.ModeSymlink == 0 {
		return nil // a missing path or a plain file: the open tells
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		target, _ := os.Readlink(path)
		return &Error{Path: path, Problem: fmt.Sprintf("is a symlink to %s, which does not exist", target),
			Fix: "mount or restore the target (a secrets volume not mounted yet?), or remove the link"}
	}
	return nil
}

// Private reports whether other users can read the file, for keys that
// must be refused (not silently fixed) when they may have leaked.
func Private(info fs.FileInfo) bool { return info.Mode().Perm()&0o077 == 0 }

// Replace controls what WriteAtomic does when path exists.
type Replace bool

const (
	// Overwrite replaces an existing file atomically.
	Overwrite Replace = true
	// Exclusive fails with fs.ErrExist when path exists, atomically: a
	// file that appeared meanwhile is never replaced.
	Exclusive Replace = false
)

// WriteAtomic writes data to path with mode perm through a synced
// temporary file in the same directory (so runtimes watching it with
// inotify never see half a file) and a rename, then syncs the directory.
// The temporary name starts with a dot and does not end like the target,
// so directory scanners (CNI runtimes) skip it.
func WriteAtomic(path string, data []byte, perm fs.FileMode, replace Replace) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if err := fill(tmp, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if replace {
		err = os.Rename(tmp.Name(), path)
	} else {
		err = os.Link(tmp.Name(), path)
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", path, fs.ErrExist)
	}
	if err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	return syncDir(dir)
}

// fill sets the mode explicitly (CreateTemp makes 0600, and umask must not
// widen or narrow what the caller asked for) and syncs before the rename
// makes the file visible.
func fill(f *os.File, data []byte, perm fs.FileMode) error {
	err := f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
