package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/control"
)

func newRotateKeyCommand() *cobra.Command {
	var path, socket string
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Replace this host's WireGuard key; peers learn the new one through gossip",
		Long: `Rotate-key makes the running daemon generate a new WireGuard private key,
save it in data_dir, put it on the interface and announce the new public
key. Every peer swaps the old key for the new one; sessions re-handshake
and established connections continue.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sock, err := controlSocket(path, socket)
			if err != nil {
				return err
			}
			var out map[string]string
			if err := control.NewClient(sock).PostJSON("/v1/rotate-key", "", &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new WireGuard key %s (%s)\n", out["fingerprint"], out["public_key"])
			return nil
		},
	}
	addClientFlags(cmd, &path, &socket)
	return cmd
}

// keyringAnswer is what the daemon relays from serf's key manager.
type keyringAnswer struct {
	Response *struct {
		Messages    map[string]string
		NumNodes    int
		NumResp     int
		NumErr      int
		Keys        map[string]int
		PrimaryKeys map[string]int
	} `json:"response"`
	Error string `json:"error"`
}

func newGossipKeyCommand() *cobra.Command {
	var path, socket string
	cmd := &cobra.Command{
		Use:   "gossip-key install KEY | use KEY | remove KEY | list",
		Short: "Rotate the cluster's gossip encryption key through serf's keyring",
		Long: `Gossip-key changes the gossip keyring on every member at once (serf's key
manager). Rotation without a partition:

  meshd gossip-key install NEW    # every host can now read NEW
  meshd gossip-key use NEW        # every host now writes with NEW
  meshd gossip-key remove OLD     # OLD is no longer accepted

KEY "-" reads the key from standard input, keeping it out of ps and the
shell history.

Each host saves its keyring (cluster.gossip_keyring), so restarts keep the
new key. Exits 1 when any member failed or did not answer.`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 1 && args[0] == "list":
				return nil
			case len(args) == 2 && (args[0] == "install" || args[0] == "use" || args[0] == "remove"):
				return nil
			}
			return usageError{fmt.Errorf("usage: meshd gossip-key install KEY | use KEY | remove KEY | list")}
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			sock, err := controlSocket(path, socket)
			if err != nil {
				return err
			}
			key := ""
			if len(args) == 2 {
				key = args[1]
			}
			if key == "-" {
				// Keeps the key out of ps and shell history.
				raw, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 256))
				if err != nil {
					return err
				}
				key = strings.TrimSpace(string(raw))
			}
			var ans keyringAnswer
			if err := control.NewClient(sock).PostJSON("/v1/gossip-key/"+args[0], key, &ans); err != nil {
				return err
			}
			return printKeyring(cmd, args[0], ans)
		},
	}
	addClientFlags(cmd, &path, &socket)
	return cmd
}

func printKeyring(cmd *cobra.Command, op string, ans keyringAnswer) error {
	out := cmd.OutOrStdout()
	r := ans.Response
	if r == nil {
		return fmt.Errorf("gossip-key %s: %s", op, ans.Error)
	}
	fmt.Fprintf(out, "%s: %d of %d members answered, %d failed\n", op, r.NumResp, r.NumNodes, r.NumErr)
	if op == "list" {
		keys := make([]string, 0, len(r.Keys))
		for k := range r.Keys {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			primary := ""
			if r.PrimaryKeys[k] > 0 {
				primary = fmt.Sprintf("  primary on %d", r.PrimaryKeys[k])
			}
			fmt.Fprintf(out, "  %s  installed on %d%s\n", k, r.Keys[k], primary)
		}
	}
	var failed []string
	for node, msg := range r.Messages {
		failed = append(failed, node+": "+msg)
	}
	sort.Strings(failed)
	if ans.Error != "" || r.NumErr > 0 || r.NumResp < r.NumNodes {
		return checkFailed{fmt.Sprintf("gossip-key %s incomplete: %s %s", op, ans.Error, strings.Join(failed, "; "))}
	}
	return nil
}
