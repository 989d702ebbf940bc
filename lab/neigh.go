package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The kernel keeps one ARP table and one neighbour-discovery table for all
// network namespaces, capped by gc_thresh3 (1024 by default), and those
// limits can only be set from the initial namespace. A lab of N hosts on
// one bridge fills the table with about N² entries: at 50 hosts the
// kernel logs "neighbor table overflow", ARP fails and hosts see each
// other as down, which separate machines never would. So a lab big enough
// to need it raises the limits while it runs.
var neighLimitDirs = []string{"/proc/sys/net/ipv4/neigh/default", "/proc/sys/net/ipv6/neigh/default"}

// neighLimit is one limit the lab raised: what it was and what the lab set.
type neighLimit struct {
	path     string
	was, set int
}

// neighEntries is how many neighbour entries a lab needs: every host
// resolves every other host on the underlay, its pods resolve it, and it
// resolves its pods.
func neighEntries(hosts, segments int) int {
	return hosts * (hosts + 2*segments)
}

// raiseNeighLimits makes room for entries more neighbours than the table
// holds already (other labs may be running), leaving limits that are
// already high enough alone. It returns what it changed, for
// restoreNeighLimits.
func raiseNeighLimits(entries int) ([]neighLimit, error) {
	var raised []neighLimit
	for _, dir := range neighLimitDirs {
		for _, lim := range []struct {
			name string
			want int
		}{
			// thresh3 is the hard cap, thresh2 where garbage collection
			// starts to press; both get headroom over the lab's need.
			{"gc_thresh3", 4 * entries},
			{"gc_thresh2", 2 * entries},
		} {
			path := filepath.Join(dir, lim.name)
			cur, err := readIntFile(path)
			if os.IsNotExist(err) && strings.Contains(dir, "ipv6") {
				continue // a kernel without IPv6
			}
			if err != nil {
				return raised, err
			}
			if cur >= lim.want {
				continue
			}
			if err := os.WriteFile(path, []byte(strconv.Itoa(lim.want)), 0o644); err != nil {
				return raised, fmt.Errorf("lab: raise %s to %d for %d neighbour entries: %w", path, lim.want, entries, err)
			}
			raised = append(raised, neighLimit{path: path, was: cur, set: lim.want})
		}
	}
	return raised, nil
}

// restoreNeighLimits puts back what raiseNeighLimits changed, unless
// someone (another lab) has changed it since.
func restoreNeighLimits(raised []neighLimit) error {
	for i := len(raised) - 1; i >= 0; i-- {
		r := raised[i]
		if cur, err := readIntFile(r.path); err != nil || cur != r.set {
			continue
		}
		if err := os.WriteFile(r.path, []byte(strconv.Itoa(r.was)), 0o644); err != nil {
			return fmt.Errorf("lab: restore %s to %d: %w", r.path, r.was, err)
		}
	}
	return nil
}

func readIntFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("lab: %s: %w", path, err)
	}
	return n, nil
}
