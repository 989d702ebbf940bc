package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/cluster"
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
	var ans control.KeyringAnswer
	if err := control.NewClient(sock).PostJSON("/v1/gossip-key/"+op, key, &ans); err != nil {
		return err
	}
	return printKeyring(cmd, op, key, ans)
}

// printKeyring reports an operation by key fingerprint and fails (exit 1)
// unless every member the cluster knows took part: serf counts only the
// live ones, and a host that misses a rotation is locked out for good
// once the cluster stops using the keys it has.
func printKeyring(cmd *cobra.Command, op, key string, ans control.KeyringAnswer) error {
	out := cmd.OutOrStdout()
	r := ans.Response
	if r == nil {
		return fmt.Errorf("gossip-key %s: %s", op, ans.Error)
	}
	what := op
	if key != "" {
		what += " " + cluster.KeyFingerprint(key)
	}
	fmt.Fprintf(out, "%s: %d of %d members answered, %d failed\n", what, r.NumResp, r.NumNodes+len(ans.Absent), r.NumErr)
	if op == "list" {
		fps := make([]string, 0, len(r.Keys))
		for fp := range r.Keys {
			fps = append(fps, fp)
		}
		sort.Strings(fps)
		for _, fp := range fps {
			primary := ""
			if r.PrimaryKeys[fp] > 0 {
				primary = fmt.Sprintf("  primary on %d", r.PrimaryKeys[fp])
			}
			fmt.Fprintf(out, "  %s  installed on %d%s\n", fp, r.Keys[fp], primary)
		}
	}
	var problems []string
	if ans.Error != "" {
		problems = append(problems, ans.Error)
	}
	for _, node := range slices.Sorted(maps.Keys(r.Messages)) {
		problems = append(problems, node+": "+r.Messages[node])
	}
	if missing := r.NumNodes - r.NumResp; missing > 0 {
		problems = append(problems, fmt.Sprintf("%d live members did not answer in time (run it again)", missing))
	}
	if len(ans.Absent) > 0 {
		names := make([]string, len(ans.Absent))
		for i, m := range ans.Absent {
			names[i] = fmt.Sprintf("%s (%s)", m.Name, m.State)
		}
		problems = append(problems, fmt.Sprintf("%s did not take part: a host that misses a rotation keeps the keys it had, and cannot rejoin once the cluster stops accepting them. "+
			"To bring it back, write the cluster's primary key (the one 'use' made primary) into its cluster.gossip_key_file and restart it: meshd adopts a new key found there. "+
			"A host taken out of the cluster for good needs nothing; serf forgets it within a day",
			strings.Join(names, ", ")))
	}
	if len(problems) > 0 {
		return checkFailed{fmt.Sprintf("gossip-key %s incomplete: %s", op, strings.Join(problems, "; "))}
	}
	return nil
}
