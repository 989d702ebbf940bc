package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/control"
)

// maxHandshakeAge is WireGuard's REKEY_AFTER_TIME plus slack: a live
// session with traffic or keepalives handshakes at least every two
// minutes, so an older handshake means the tunnel is not working.
const maxHandshakeAge = 3 * time.Minute

// checkFailed is a health check that ran and found a problem (exit 1),
// as opposed to a usage error.
type checkFailed struct{ msg string }

func (e checkFailed) Error() string { return e.msg }

func newStatusCommand() *cobra.Command {
	var path, socket string
	var asJSON, check bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this host, its peers and their tunnels",
		Long: `Status asks the running daemon (over its control socket) for this host's
identity and segments and, for every peer, its serf state, endpoint,
slices, latest handshake and traffic counters.

--check exits 0 only when every alive peer this host sends to has
completed a handshake in the last 3 minutes, no state of meshd's is
missing, IP forwarding is on and every other site is reachable (usable as
a health probe), 1 otherwise, naming each problem. A peer without
keepalives that nothing was sent to for 3 minutes is idle, and needs no
recent handshake. With a cluster CA, --check also fails when this host's
certificate has expired (the cause of every missing handshake then) or
expires within a day.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sock, err := controlSocket(path, socket)
			if err != nil {
				return err
			}
			st, err := control.NewClient(sock).Status()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
			} else if !check {
				printStatus(out, st)
			}
			if check {
				return healthCheck(out, st, !asJSON)
			}
			return nil
		},
	}
	addClientFlags(cmd, &path, &socket)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print machine-readable JSON")
	cmd.Flags().BoolVar(&check, "check", false, "exit 1 unless every alive peer has a handshake younger than 3 minutes")
	return cmd
}

// expiringSoon is when status --check starts failing ahead of a
// certificate's expiry: time to renew it before other hosts refuse this
// one.
const expiringSoon = 24 * time.Hour

func healthCheck(out io.Writer, st *control.Status, verbose bool) error {
	var bad []string
	expired := false
	if id := st.Identity; id != nil {
		left := time.Duration(id.ExpirySeconds * float64(time.Second))
		switch {
		case left <= 0:
			// Every peer refuses this host, so none has a handshake:
			// naming each would hide the one cause.
			expired = true
			bad = append(bad, fmt.Sprintf("certificate %s expired at %s: every other host refuses this one; %s", id.Certificate, id.NotAfter, renewHint))
		case left < expiringSoon:
			bad = append(bad, fmt.Sprintf("certificate %s expires in %s (at %s); %s", id.Certificate, left.Round(time.Minute), id.NotAfter, renewHint))
		}
	}
	for _, m := range st.Missing {
		bad = append(bad, "missing (meshd is restoring it) "+m)
	}
	for _, site := range st.Sites {
		if site.Unreachable != "" {
			bad = append(bad, fmt.Sprintf("site %s unreachable: %s", site.Name, site.Unreachable))
		}
	}
	for _, p := range st.Peers {
		if p.State != "alive" || expired {
			continue
		}
		switch {
		case !p.Configured:
			bad = append(bad, p.Name+": not configured")
		case p.Idle:
			// No keepalives and nothing to send: no handshake is due.
		case p.HandshakeAgeSeconds < 0:
			bad = append(bad, p.Name+": no handshake yet")
		case p.HandshakeAgeSeconds > maxHandshakeAge.Seconds():
			bad = append(bad, fmt.Sprintf("%s: last handshake %s ago", p.Name, age(p.HandshakeAgeSeconds)))
		}
	}
	if len(bad) > 0 {
		return checkFailed{"unhealthy: " + strings.Join(bad, "; ")}
	}
	if verbose {
		fmt.Fprintf(out, "healthy: %d alive peers with recent handshakes\n", countAlive(st))
	}
	return nil
}

func countAlive(st *control.Status) int {
	n := 0
	for _, p := range st.Peers {
		if p.State == "alive" {
			n++
		}
	}
	return n
}

func printStatus(out io.Writer, st *control.Status) {
	n := st.Node
	fmt.Fprintf(out, "node %s  key %s (%s)  %s %s  mtu %d  endpoint %s  gossip %s\n",
		n.Name, n.Fingerprint, n.PublicKey, n.Mode, n.Interface, n.MTU, n.Endpoint, n.Gossip)
	if len(st.Sites) > 0 || n.Gateway {
		role := "host"
		if n.Gateway {
			role = "gateway"
			if n.Draining {
				why := n.DrainReason
				if why == "" {
					why = "cannot forward"
				}
				role += " (draining: " + why + ")"
			}
			if n.NAT {
				role += " behind NAT"
				if n.Observed != "" {
					role += ", seen from " + n.Observed
				}
			}
		}
		fmt.Fprintf(out, "site %s  %s  mesh address %s\n", n.Site, role, orDash(n.MeshAddr))
	}
	printIdentity(out, st.Identity)
	for _, s := range n.Segments {
		fmt.Fprintf(out, "segment %s %s  slice %s  table %d\n", s.Name, s.CIDR, s.Subnet, s.Table)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tSTATE\tENDPOINT\tSLICES\tHANDSHAKE\tRX\tTX\tPATH")
	for _, p := range st.Peers {
		hs := "-"
		if p.Configured {
			hs = "never"
			if p.HandshakeAgeSeconds >= 0 {
				hs = age(p.HandshakeAgeSeconds) + " ago"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.State, orDash(p.Endpoint),
			orDash(strings.Join(p.Slices, ",")), hs, bytesHuman(p.RxBytes), bytesHuman(p.TxBytes), peerPath(p))
	}
	tw.Flush()
	printSites(out, st.Sites)
	printProbes(out, st.Probes)
	if len(st.Rejected) > 0 {
		fmt.Fprintln(out, "\nrejected announcements:")
		for _, r := range st.Rejected {
			fmt.Fprintf(out, "  %s: %s\n", r.Member, r.Reason)
		}
	}
	printPolicy(out, st.Policy)
	printRepairs(out, st)
	if st.LastError != "" {
		fmt.Fprintf(out, "\nlast reconcile error: %s\n", st.LastError)
	}
}

// renewHint is how a certificate is renewed without a restart.
const renewHint = "renew it with 'meshd ca sign --force' and 'meshd reload'"

func printIdentity(out io.Writer, id *control.Identity) {
	if id == nil {
		return
	}
	left := time.Duration(id.ExpirySeconds * float64(time.Second))
	validity := fmt.Sprintf("valid until %s (%s left)", id.NotAfter, days(left))
	if left <= 0 {
		validity = fmt.Sprintf("EXPIRED at %s: every other host refuses this one; %s", id.NotAfter, renewHint)
	}
	fmt.Fprintf(out, "identity: certificate %s %s; mode %s", id.Certificate, validity, id.Mode)
	if id.Mode == "transitional" {
		if len(id.Unsigned) == 0 {
			fmt.Fprint(out, ", no unsigned members left (identity.mode = \"strict\" is safe here)")
		} else {
			fmt.Fprintf(out, ", accepting unsigned announcements from %d members: %s", len(id.Unsigned), strings.Join(id.Unsigned, ", "))
		}
	}
	fmt.Fprintln(out)
}

func age(seconds float64) string {
	return (time.Duration(seconds) * time.Second).Round(time.Second).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func printPolicy(out io.Writer, counters []control.PolicyCounter) {
	if len(counters) == 0 {
		return
	}
	fmt.Fprintln(out, "\npolicy counters (since the last reload):")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  RULE\tACTION\tREASON\tPACKETS\tBYTES")
	for _, c := range counters {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\n", c.Label, c.Action, c.Reason, c.Packets, bytesHuman(int64(c.Bytes)))
	}
	tw.Flush()
}

func printRepairs(out io.Writer, st *control.Status) {
	for _, m := range st.Missing {
		fmt.Fprintf(out, "\nmissing, being restored: %s", m)
	}
	if len(st.Missing) > 0 {
		fmt.Fprintln(out)
	}
	if len(st.Repairs) == 0 {
		return
	}
	kinds := make([]string, 0, len(st.Repairs))
	for k := range st.Repairs {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s %d", k, st.Repairs[k])
	}
	fmt.Fprintf(out, "\nrestored after someone else removed them: %s\n", strings.Join(parts, ", "))
}

// peerPath says how a peer is reached and what it carries.
func peerPath(p control.Peer) string {
	path := "direct"
	if p.WAN {
		path = "WAN tunnel to site " + p.Site
	}
	if p.LearnedEndpoint != "" {
		path += " (endpoint learnt from its handshakes)"
	}
	if len(p.Carries) > 0 {
		path += "; carries sites " + strings.Join(p.Carries, ",")
	}
	return path
}

func printSites(out io.Writer, sites []control.Site) {
	if len(sites) == 0 {
		return
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tBLOCKS\tPATH")
	for _, s := range sites {
		path := "via gateway " + s.Gateway + " to " + s.Remote
		if s.Transit != "" {
			path += ", relayed by site " + s.Transit
		}
		if s.Unreachable != "" {
			path = "unreachable: " + s.Unreachable
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, strings.Join(s.Blocks, ","), path)
	}
	tw.Flush()
}

// printProbes shows this host's checks of its site's gateways, one line.
func printProbes(out io.Writer, probes []control.GatewayProbe) {
	if len(probes) == 0 {
		return
	}
	parts := make([]string, len(probes))
	for i, p := range probes {
		state := "forwards"
		switch {
		case p.Failing > 0:
			state = fmt.Sprintf("forwarded nothing for %d rounds", p.Failing)
		case p.Silent:
			state = "no answer at all (down, or probes cannot be sent: see the log)"
		}
		if p.Reported {
			state += ", reported"
		}
		parts[i] = fmt.Sprintf("%s %s (%d remote gateways probed)", p.Gateway, state, p.Targets)
	}
	fmt.Fprintf(out, "gateway probes: %s\n", strings.Join(parts, "; "))
}
