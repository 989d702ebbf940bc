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

	"github.com/meshd/meshd/internal/fileio"
)

// Write puts one conflist per segment into dir and returns their paths.
// Everything is rendered before anything is written, so invalid input
// leaves dir untouched. Files from an earlier run for segments no longer
// configured are removed, so a runtime cannot attach pods to a segment
// this host stopped routing. An empty dir disables CNI configs: Write
// does nothing.
//
// A segment without a slice yet (Subnet invalid: still being claimed)
// gets no file, and an earlier one is removed; its CIDR is still routed
// from the other segments' containers.
//
// meshd does not remove its files on shutdown: a runtime needs a
// container's conflist to run CNI DEL (podman rm, a pod's teardown), and
// a restart then rewrites the same bytes, so a runtime watching the
// directory sees no change.
func Write(dir string, segs []Segment, o Options) ([]string, error) {
	if dir == "" {
		return nil, nil
	}
	docs, err := renderAll(segs, o)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cni: create %s: %w", dir, err)
	}
	var paths []string
	keep := map[string]bool{}
	for _, s := range segs {
		doc, ok := docs[s.Name]
		if !ok {
			continue
		}
		path := filepath.Join(dir, FileName(s.Name))
		if err := writeFile(path, doc); err != nil {
			return paths, err
		}
		paths = append(paths, path)
		keep[path] = true
	}
	return paths, pruneStale(dir, keep)
}

// Remove deletes the conflists of segs from dir, leaving any file of that
// name meshd did not write. Missing files are not an error. It is for
// uninstalling: the daemon keeps its files when it stops (see Write).
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

func renderAll(segs []Segment, o Options) (map[string][]byte, error) {
	docs := map[string][]byte{}
	bridges := map[string]string{}
	names := map[string]bool{}
	for _, s := range segs {
		if names[s.Name] {
			return nil, fmt.Errorf("cni: segment %q is listed twice", s.Name)
		}
		names[s.Name] = true
		if !s.Subnet.IsValid() {
			continue
		}
		b := BridgeName(s.Name)
		if other, dup := bridges[b]; dup {
			return nil, fmt.Errorf("cni: segments %q and %q would share bridge %s", other, s.Name, b)
		}
		bridges[b] = s.Name
		doc, err := Render(s, segs, o)
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

// Writer keeps one directory's conflists for the daemon.
type Writer struct{ dir string }

// NewWriter returns a writer for dir; an empty dir disables it.
func NewWriter(dir string) *Writer { return &Writer{dir: dir} }

// Write is the package-level Write for the writer's directory.
func (w *Writer) Write(segs []Segment, o Options) error {
	_, err := Write(w.dir, segs, o)
	return err
}
