package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/meshd/meshd/internal/fileio"
)

// Write puts one conflist per segment into dir and returns their paths.
// Everything is rendered before anything is written, so invalid input
// leaves dir untouched. Files from an earlier run for segments no longer
// configured are removed, so a runtime cannot attach pods to a segment
// this host stopped routing. An empty dir disables CNI configs: Write
// does nothing.
func Write(dir string, segs []Segment, mtu int) ([]string, error) {
	if dir == "" {
		return nil, nil
	}
	docs, err := renderAll(segs, mtu)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cni: create %s: %w", dir, err)
	}
	var paths []string
	keep := map[string]bool{}
	for _, s := range segs {
		path := filepath.Join(dir, FileName(s.Name))
		if err := writeFile(path, docs[s.Name]); err != nil {
			return paths, err
		}
		paths = append(paths, path)
		keep[path] = true
	}
	return paths, pruneStale(dir, keep)
}

// Remove deletes the conflists of segs from dir, leaving any file of that
// name meshd did not write. Missing files are not an error: Remove runs
// on every shutdown, including after a failed start.
func Remove(dir string, segs []Segment) error {
	if dir == "" {
		return nil
	}
	var errs []error
	for _, s := range segs {
		if err := removeOwn(filepath.Join(dir, FileName(s.Name))); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func renderAll(segs []Segment, mtu int) (map[string][]byte, error) {
	docs := map[string][]byte{}
	bridges := map[string]string{}
	for _, s := range segs {
		if _, dup := docs[s.Name]; dup {
			return nil, fmt.Errorf("cni: segment %q is listed twice", s.Name)
		}
		b := BridgeName(s.Name)
		if other, dup := bridges[b]; dup {
			return nil, fmt.Errorf("cni: segments %q and %q would share bridge %s", other, s.Name, b)
		}
		bridges[b] = s.Name
		doc, err := Render(s, mtu)
		if err != nil {
			return nil, err
		}
		docs[s.Name] = doc
	}
	return docs, nil
}

// writeFile replaces path atomically: a runtime watching the directory
// (containerd uses inotify) must never load a half-written file. An
// unchanged file is left alone so a restart causes no reload there.
func writeFile(path string, doc []byte) error {
	old, err := os.ReadFile(path)
	switch {
	case err == nil && bytes.Equal(old, doc):
		return nil
	case err == nil && !isOwn(old):
		return fmt.Errorf("cni: %s exists and was not written by meshd; move it away or set cni_conf_dir to another directory", path)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("cni: %w", err)
	}
	// 0644: runtimes may read as another user. The temporary name does
	// not end in .conflist, so runtimes skip it.
	if err := fileio.WriteAtomic(path, doc, 0o644, fileio.Overwrite); err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	return nil
}

func pruneStale(dir string, keep map[string]bool) error {
	matches, err := filepath.Glob(filepath.Join(dir, filePrefix+"*"+fileSuffix))
	if err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	var errs []error
	for _, m := range matches {
		if !keep[m] {
			errs = append(errs, removeOwn(m))
		}
	}
	return errors.Join(errs...)
}

func removeOwn(path string) error {
	doc, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	if !isOwn(doc) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cni: %w", err)
	}
	return nil
}

// isOwn reports whether a conflist carries meshd's marker; the file name
// alone could be an operator's.
func isOwn(doc []byte) bool {
	var d struct {
		Meshd *marker `json:"meshd"`
	}
	return json.Unmarshal(doc, &d) == nil && d.Meshd != nil && d.Meshd.Managed &&
		strings.TrimSpace(d.Meshd.Segment) != ""
}

// Writer keeps one directory's conflists for one daemon and remembers
// which files it wrote, so that Remove deletes those and nothing else: a
// second meshd whose start failed must not take the running daemon's
// configs with it. Safe for concurrent use.
type Writer struct {
	dir string

	mu      sync.Mutex
	written map[string]bool
}

// NewWriter returns a writer for dir; an empty dir disables it.
func NewWriter(dir string) *Writer { return &Writer{dir: dir, written: map[string]bool{}} }

// Write is the package-level Write, remembering the files.
func (w *Writer) Write(segs []Segment, mtu int) error {
	paths, err := Write(w.dir, segs, mtu)
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range paths {
		w.written[p] = true
	}
	return err
}

// Remove deletes the conflists this writer wrote.
func (w *Writer) Remove() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	for p := range w.written {
		if err := removeOwn(p); err != nil {
			errs = append(errs, err)
		}
		delete(w.written, p)
	}
	return errors.Join(errs...)
}
