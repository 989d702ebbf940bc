package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/lab"
)

func newDemoCommand() *cobra.Command {
	var hosts int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Bring up a multi-host mesh in network namespaces on this machine, show it, clean up",
		Long: `Demo creates one network namespace per host joined by a veth underlay,
a pod namespace per segment on each, starts a real meshd in every host
(userspace WireGuard unless the kernel has it), waits until every pod
reaches every other pod of its segment, prints the mesh, then stops the
daemons and removes everything. Needs root and the ping binary.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if hosts < 2 || hosts > 50 {
				return usageError{fmt.Errorf("--hosts %d is out of range; use 2 to 50", hosts)}
			}
			if os.Geteuid() != 0 {
				return usageError{fmt.Errorf("demo creates network namespaces and needs root; run it with sudo")}
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find meshd binary: %w", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return lab.RunDemo(ctx, cmd.OutOrStdout(), self, hosts)
		},
	}
	cmd.Flags().IntVar(&hosts, "hosts", 3, "number of namespace hosts (2-50)")
	return cmd
}
