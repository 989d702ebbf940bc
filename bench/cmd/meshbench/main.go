// Command meshbench runs meshd's namespace benchmarks: throughput against
// raw veth and standalone wireguard-go, the MTU check, and convergence
// times. bench/*.sh build it and call it; it needs root. Every lab it
// creates is removed on exit, also on Ctrl-C or SIGTERM.
//
//	meshbench throughput [flags]   TCP/UDP throughput table (bench/throughput.sh)
//	meshbench mtu [flags]          default-MTU check on 1500 and 1400 underlays (bench/mtu.sh)
//	meshbench converge [flags] N.. convergence, join, leave, failure times (bench/converge.sh)
//	meshbench crypto [-d 2s]       ChaCha20-Poly1305 ceiling only
//	meshbench cleanup PREFIX...    remove what a killed run left behind
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/meshd/meshd/bench"
	"github.com/meshd/meshd/lab"
)

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
	case "mtu":
		err = cmdMTU(ctx, os.Args[2:])
	case "converge":
		err = cmdConverge(ctx, os.Args[2:])
	case "crypto":
		err = cmdCrypto(os.Args[2:])
	case "report":
		err = cmdReport(os.Stdout, os.Args[2:])
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
		fmt.Fprintln(os.Stderr, "meshbench:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func usage() {
	fmt.Fprintln(os.Stderr, "usage: meshbench throughput|mtu|converge|crypto|report|cleanup [flags] (see bench/README.md)")
}

func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	return nil
}

func cmdCrypto(args []string) error {
	fs := flag.NewFlagSet("crypto", flag.ContinueOnError)
	d := fs.Duration("d", 2*time.Second, "measuring time per line")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	fmt.Printf("ChaCha20-Poly1305 (golang.org/x/crypto), %d-byte packets in %d-packet (64 KiB) batches, GOMAXPROCS=%d\n",
		bench.PacketSize, bench.BatchPackets, runtime.GOMAXPROCS(0))
	for _, r := range bench.Ceiling(*d) {
		fmt.Printf("  %-4s %d worker(s): %6.2f Gbit/s\n", r.Op, r.Workers, r.Gbps)
	}
	return nil
}
