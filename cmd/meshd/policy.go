package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/segment"
)

func newReloadCommand() *cobra.Command {
	var path, socket string
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Apply the config's allow rules and [identity] now, and name what needs a restart (same as SIGHUP)",
		Long: `Reload asks the running daemon to re-read the config file it was started
with and to apply what can change while it runs:

  - the [[allow]] rules, as one nftables transaction: tunnels are not
    touched, established allowed flows keep flowing, newly denied ones stop;
  - [identity]: a renewed certificate and key (same CA, name and site), the
    cluster CA turned on or off, identity.mode; announced to every host at
    once. A different CA takes a restart.

Every other changed key takes effect only at the next start. Reload names
each one (e.g. segments[1].cidr, wireguard.listen_port), keeps its running
value, and exits 1 after applying what it could. A config with errors is
refused (exit 2) and nothing changes.

A reload always applies the file the daemon runs with. --config (default
/etc/meshd/meshd.toml) finds the daemon's control socket and must be that
file; --socket reaches a daemon directly, which re-reads its own file.
Giving both is refused.

Exit codes: 0 every change applied, 1 some changes wait for a restart (or
the daemon failed), 2 bad flags or a bad config.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("config") && cmd.Flags().Changed("socket") {
				return usageError{fmt.Errorf("--config and --socket together: a reload applies the file the daemon runs with, so pass --config with that file, or --socket alone")}
			}
			sock, err := controlSocket(path, socket)
			if err != nil {
				return err
			}
			var req control.ReloadRequest
			if socket == "" {
				if req.Config, err = filepath.Abs(path); err != nil {
					return err
				}
			}
			body, err := json.Marshal(req)
			if err != nil {
				return err
			}
			var res control.ReloadResult
			if err := control.NewClient(sock).PostJSON("/v1/reload", string(body), &res); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "reloaded: %s\n", strings.Join(res.Applied, "; "))
			if len(res.Restart) > 0 {
				return checkFailed{fmt.Sprintf("not applied: %s changed, which takes effect only when meshd restarts (systemctl restart meshd); the running values stay in force until then",
					strings.Join(res.Restart, ", "))}
			}
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
		Short: "Print the verdict for packets and the rule (or default) that decides it",
		Long: `Explain evaluates packets against the [[allow]] rules of --config with the
same compiled rule list that meshd turns into nftables rules, so a change
can be previewed before 'meshd reload'. No daemon is needed.

--from and --to take an address, a CIDR or a segment name. --port takes
one port (tcp/8080), a range (tcp/8080-9000), a protocol (tcp, udp, icmp)
or "any" (the default: ICMP, TCP and UDP on every port, and every other
protocol). A question whose packets do not all get the same verdict is
answered in parts, one line each, joining neighbouring ports and
addresses that share a verdict:

  tcp/8080: allow (rule allow[0]: blue -> green tcp/8080)
  tcp/8081-9000: deny (default: different segments blue -> green)

Examples:
  meshd policy explain --config meshd.toml --from 10.42.1.10 --to 10.43.2.10 --port tcp/8080
  meshd policy explain --config meshd.toml --from blue --to green`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return usageError{fmt.Errorf("--from and --to are required; see 'meshd policy explain --help'")}
			}
			for flag, v := range map[string]string{"--from": from, "--to": to} {
				if _, ok := parseExplainEnd(v); !ok && !segment.ValidName(v) {
					return usageError{fmt.Errorf("%s %q is not an address, a CIDR or a segment name", flag, v)}
				}
			}
			ps, err := policy.ParsePort(port)
			if err != nil {
				return usageError{fmt.Errorf("--port: %w", err)}
			}
			cfg, err := config.LoadClient(path)
			if err != nil {
				return err
			}
			src, err := explainEnd("--from", from, cfg)
			if err != nil {
				return err
			}
			dst, err := explainEnd("--to", to, cfg)
			if err != nil {
				return err
			}
			rs, err := cfg.Policy()
			if err != nil {
				return err
			}
			printExplanation(cmd.OutOrStdout(), rs.ExplainAll(src.prefix, dst.prefix, ps), src, dst)
			return nil
		},
	}
	addConfigFlag(explain, &path)
	explain.Flags().StringVar(&from, "from", "", "source: address, CIDR or segment name (required)")
	explain.Flags().StringVar(&to, "to", "", "destination: address, CIDR or segment name (required)")
	explain.Flags().StringVar(&port, "port", "any", "protocol and ports: tcp/8080, udp/53, tcp/8000-8100, tcp, icmp or any")
	pol.AddCommand(explain)
	return pol
}

// explainTarget is one end of an explained packet as the user named it.
type explainTarget struct {
	prefix netip.Prefix
	// name is how lines call the whole of prefix: the segment's name or
	// the CIDR ("" for a single address, which is never split).
	name string
}

// parseExplainEnd reads an address or a CIDR.
func parseExplainEnd(s string) (explainTarget, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return explainTarget{prefix: netip.PrefixFrom(a, a.BitLen())}, true
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return explainTarget{prefix: p.Masked(), name: p.Masked().String()}, true
	}
	return explainTarget{}, false
}

func explainEnd(flag, s string, cfg *config.Config) (explainTarget, error) {
	if t, ok := parseExplainEnd(s); ok {
		return t, nil
	}
	var names []string
	for _, seg := range cfg.Segments {
		if seg.Name == s {
			return explainTarget{prefix: seg.CIDR, name: s}, nil
		}
		names = append(names, seg.Name)
	}
	return explainTarget{}, usageError{fmt.Errorf("%s %q is neither an address nor a CIDR, and the config defines no such segment; use one of: %s",
		flag, s, strings.Join(names, ", "))}
}

// printExplanation prints a single verdict as before ranges were
// explained, and otherwise one line per part, naming only what tells
// the parts apart: the addresses of an end only when the answer splits
// that end.
func printExplanation(out io.Writer, parts []policy.Part, src, dst explainTarget) {
	if len(parts) == 1 && parts[0].Traffic == "" {
		fmt.Fprintln(out, parts[0].Verdict)
		return
	}
	split := func(t explainTarget, span func(policy.Part) policy.Span) bool {
		return slices.ContainsFunc(parts, func(p policy.Part) bool { return span(p) != policy.SpanOf(t.prefix) })
	}
	srcSplit := split(src, func(p policy.Part) policy.Span { return p.Src })
	dstSplit := split(dst, func(p policy.Part) policy.Span { return p.Dst })
	end := func(word string, t explainTarget, s policy.Span, shown bool) string {
		switch {
		case !shown:
			return ""
		case s == policy.SpanOf(t.prefix):
			return word + " " + t.name
		}
		return word + " " + s.String()
	}
	for _, p := range parts {
		var what []string
		for _, w := range []string{end("from", src, p.Src, srcSplit), end("to", dst, p.Dst, dstSplit), p.Traffic} {
			if w != "" {
				what = append(what, w)
			}
		}
		fmt.Fprintf(out, "%s: %s\n", strings.Join(what, " "), p.Verdict)
	}
}
