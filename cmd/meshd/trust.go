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
		Use:   "gossip-key",
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
		// Without a subcommand, or with an unknown one, this is a usage
		// error (exit 2), as it was before the subcommands had their own
		// help.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown gossip-key operation %q; see 'meshd gossip-key --help'", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{fmt.Errorf("usage: meshd gossip-key install KEY | use KEY | remove KEY | list; see 'meshd gossip-key --help'")}
		},
	}
	addClientFlags(cmd, &path, &socket)
	op := func(name string, withKey bool, short, long string) *cobra.Command {
		use, want, what := name, 0, "no arguments"
		if withKey {
			use, want, what = name+" KEY", 1, "one KEY (base64, or - to read it from standard input)"
		}
		return &cobra.Command{
			Use:   use,
			Short: short,
			Long:  long,
			Args: func(cmd *cobra.Command, a []string) error {
				if len(a) != want {
					return usageError{fmt.Errorf("meshd gossip-key %s takes %s, got %q; see 'meshd gossip-key %s --help'", name, what, a, name)}
				}
				return nil
			},
			RunE: func(cmd *cobra.Command, a []string) error {
				key := ""
				if withKey {
					key = a[0]
				}
				return keyringOp(cmd, name, key, path, socket)
			},
		}
	}
	cmd.AddCommand(
		op("install", true, "Add KEY to every member's keyring, for reading only",
			`Install adds KEY to the keyring of every member. Members then accept gossip
encrypted with KEY but keep writing with their primary key, so installing
never partitions the cluster. Next: 'meshd gossip-key use KEY'.

KEY is base64 of 16, 24 or 32 bytes ('meshd keygen gossip' makes one);
"-" reads it from standard input, keeping it out of ps and the shell
history. Exits 1 when any member failed or did not answer.`),
		op("use", true, "Make KEY, already installed everywhere, the key every member writes with",
			`Use makes KEY the primary key of every member: gossip is encrypted with it
from now on. Install KEY everywhere first ('meshd gossip-key install KEY').
Next: 'meshd gossip-key remove OLD'.

KEY "-" reads the key from standard input. Exits 1 when any member failed
or did not answer.`),
		op("remove", true, "Remove KEY from every member's keyring",
			`Remove drops KEY from the keyring of every member, after which gossip
encrypted with it is refused. The primary key cannot be removed: 'use' the
new key first.

KEY "-" reads the key from standard input. Exits 1 when any member failed
or did not answer.`),
		op("list", false, "List the keys installed on the members, by fingerprint",
			`List asks every member for its keyring and prints, for each key, how many
members have it installed and how many write with it (primary). Exits 1
when any member failed or did not answer.`),
	)
	return cmd
}

// keyringOp runs one keyring operation through the daemon.
func keyringOp(cmd *cobra.Command, op, key, path, socket string) error {
	sock, err := controlSocket(path, socket)
	if err != nil {
		return err
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
	if err := control.NewClient(sock).PostJSON("/v1/gossip-key/"+op, key, &ans); err != nil {
		return err
	}
	return printKeyring(cmd, op, ans)
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
