package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/policy"
)

func newReloadCommand() *cobra.Command {
	var path, socket string
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Re-read the allow rules and apply them atomically (same as SIGHUP)",
		Long: `Reload asks the running daemon to re-read its config file and apply the
[[allow]] rules as one nftables transaction. Tunnels are not touched:
established allowed flows keep flowing, newly denied ones stop. A config
with errors is refused (exit 2) and the running rules stay in place.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sock, err := controlSocket(path, socket)
			if err != nil {
				return err
			}
			if err := control.NewClient(sock).Post("/v1/reload"); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "reloaded")
			return nil
		},
	}
	addClientFlags(cmd, &path, &socket)
	return cmd
}

func newPolicyCommand() *cobra.Command {
	pol := &cobra.Command{Use: "policy", Short: "Inspect allow-lists"}
	var path, from, to, port string
	explain := &cobra.Command{
		Use:   "explain",
		Short: "Print the verdict for a packet and the rule (or default) that decides it",
		Long: `Explain evaluates a packet against the [[allow]] rules of --config with the
same compiled rule list that meshd turns into nftables rules, so a change
can be previewed before 'meshd reload'. No daemon is needed.

Example:
  meshd policy explain --config meshd.toml --from 10.42.1.10 --to 10.43.2.10 --port tcp/8080`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return usageError{fmt.Errorf("--from and --to are required; see 'meshd policy explain --help'")}
			}
			src, err := netip.ParseAddr(from)
			if err != nil {
				return usageError{fmt.Errorf("--from %q is not an IP address", from)}
			}
			dst, err := netip.ParseAddr(to)
			if err != nil {
				return usageError{fmt.Errorf("--to %q is not an IP address", to)}
			}
			ps, err := policy.ParsePort(port)
			if err != nil {
				return usageError{fmt.Errorf("--port: %w", err)}
			}
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			rs, err := cfg.Policy()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), rs.Explain(src, dst, ps.Proto, ps.From))
			return nil
		},
	}
	addConfigFlag(explain, &path)
	explain.Flags().StringVar(&from, "from", "", "source address (required)")
	explain.Flags().StringVar(&to, "to", "", "destination address (required)")
	explain.Flags().StringVar(&port, "port", "any", "protocol and port: tcp/8080, udp/53, icmp or any")
	pol.AddCommand(explain)
	return pol
}
