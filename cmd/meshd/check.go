package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/daemon"
)

func newCheckCommand() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate a config and this host against it, changing nothing",
		Long: `Check validates everything 'meshd run' would before it creates anything:
the config file and every file it names (gossip key, saved keyring,
WireGuard key, certificates), data_dir, that bind_addr is on this host,
that no segment overlaps the host's own network, its gossip and WireGuard
endpoints or the routes to its seeds, and that wireguard.interface does
not belong to another program. Nothing on the host is created or changed.

Exit codes: 0 ready to run, 2 a problem named with its key and fix.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			if err := daemon.Check(cfg, daemon.HostSystem().Host); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (node %s, %d segments, %d allow rules, interface %s)\n",
				path, cfg.NodeName, len(cfg.Segments), len(cfg.Allow), cfg.WireGuard.Interface)
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	return cmd
}
