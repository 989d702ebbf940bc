// Command sitebench runs the namespace benchmarks of several sites (issue
// 13): pod-to-pod throughput through two gateways against the direct path
// of one site, and cross-site convergence at 3 sites x 10 hosts (a new
// host reachable from another site, a gateway failover). bench/sites.sh
// builds it and calls it; it needs root. Every lab it creates is removed
// on exit, also on Ctrl-C or SIGTERM, and a lab left by a SIGKILLed run is
// removed by the next one (fixed prefixes).
//
//	sitebench throughput [flags]   gateways vs direct, side by side (bench/sites.sh throughput)
//	sitebench converge [flags]     new host and gateway failover at 3 x 10 hosts (bench/sites.sh converge)
//	sitebench cleanup PREFIX...    remove what a killed run left behind
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshd/meshd/lab"
)

// Lab prefixes. Fixed, so that the next run removes what a killed one
// left (lab.New cleans its own prefix first; sites.sh cleans all three).
const (
	prefixThroughput = "mbst"  // the two-site lab of the throughput benchmark
	prefixReference  = "mbsw"  // the flat lab of the standalone wireguard-go chain
	prefixConverge   = "mbscv" // the 3 x 10 lab of the convergence benchmark
)

var errUsage = errors.New("usage")

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "throughput":
		err = cmdThroughput(ctx, os.Args[2:])
	case "converge":
		err = cmdConverge(ctx, os.Args[2:])
	case "cleanup":
		for _, p := range os.Args[2:] {
			err = errors.Join(err, lab.CleanupStale(p))
		}
	default:
		usage()
		os.Exit(2)
	}
	if errors.Is(err, errUsage) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sitebench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: sitebench throughput|converge|cleanup [flags] (see bench/README.md, sites.sh)")
}

func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	return nil
}
