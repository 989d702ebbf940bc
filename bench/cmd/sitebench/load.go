package main

import (
	"github.com/meshd/meshd/bench/internal/procstat"
	"github.com/meshd/meshd/lab"
)

// benchNetns returns the inodes of every namespace of the given lab
// prefixes, so their processes (meshd, iperf3, wireguard-go) count as the
// benchmark's own.
func benchNetns(prefixes ...string) map[uint64]bool {
	var names []string
	for _, p := range prefixes {
		ns, _ := lab.ListNetns(p)
		names = append(names, ns...)
	}
	return procstat.NetnsInodes(names)
}
