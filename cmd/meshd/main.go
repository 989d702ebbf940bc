// Command meshd is the WireGuard mesh overlay daemon and its CLI. This file
// is wiring only: flags, config, logging, signals and exit codes.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/control"
	"github.com/meshd/meshd/crypto"
	"github.com/meshd/meshd/daemon"
	"github.com/meshd/meshd/identity"
	"github.com/meshd/meshd/wgdev"
)

// Exit codes are part of the CLI contract.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2 // bad flags, bad config, bad key files
)

// defaultConfig is where packaged installs keep the configuration.
const defaultConfig = "/etc/meshd/meshd.toml"

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// usageError marks errors the user fixes by changing the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	root := newRootCommand()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(os.Stderr, "meshd:", err)
	return exitCode(err)
}

func exitCode(err error) int {
	var ue usageError
	var ke *crypto.KeyError
	var ce checkFailed
	var re *control.RemoteError
	var fe *identity.FileError
	var he *daemon.HostError
	switch {
	case errors.As(err, &ce):
		return exitFailure
	case errors.As(err, &re):
		if re.BadInput() {
			return exitUsage
		}
		return exitFailure
	case errors.As(err, &ue), config.IsConfigError(err), errors.As(err, &ke), errors.As(err, &fe), errors.As(err, &he), errors.Is(err, wgdev.ErrKernelUnsupported):
		return exitUsage
	}
	return exitFailure
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "meshd",
		Short: "WireGuard-encrypted mesh overlay for container hosts",
		Long: `meshd runs on every host of a cluster. Hosts find each other through an
encrypted serf gossip cluster, exchange WireGuard keys and pod subnets, and
keep one WireGuard interface whose peers and routes follow the live
membership, with one routing table per overlay segment.

Start with 'meshd demo' to see a three-host mesh in network namespaces.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// A root with RunE routes an unknown command through Args, so it
		// becomes a usage error (exit 2) instead of cobra's plain error.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q; see 'meshd --help'", args[0])}
			}
			return nil
		},
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		Version: version,
	}
	// The same line as 'meshd version'.
	root.SetVersionTemplate("meshd {{.Version}}\n")
	// Bad flags are usage errors: exit 2, like every other input problem.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newRunCommand(),
		newStatusCommand(),
		newKeygenCommand(),
		newVersionCommand(),
		newDemoCommand(),
		newReloadCommand(),
		newPolicyCommand(),
		newRotateKeyCommand(),
		newGossipKeyCommand(),
		newCACommand(),
		newCheckCommand(),
	)
	return root
}

func addConfigFlag(cmd *cobra.Command, path *string) {
	cmd.Flags().StringVarP(path, "config", "c", defaultConfig, "path to meshd.toml")
}

// addClientFlags is for commands that talk to a running daemon: they find
// its control socket through --config, or directly with --socket. The
// flags are persistent so that a command's subcommands take them too.
func addClientFlags(cmd *cobra.Command, path, socket *string) {
	cmd.PersistentFlags().StringVarP(path, "config", "c", defaultConfig, "path to meshd.toml")
	cmd.PersistentFlags().StringVar(socket, "socket", "", "control socket of the daemon (default: control_socket from --config)")
}

// noArgs rejects stray positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q; see 'meshd %s --help'", cmd.CommandPath(), args, cmd.Name())}
	}
	return nil
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print meshd's version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "meshd %s\n", version)
			return nil
		},
	}
}

func newKeygenCommand() *cobra.Command {
	keygen := &cobra.Command{
		Use:   "keygen",
		Short: "Generate keys",
	}
	keygen.AddCommand(&cobra.Command{
		Use:   "gossip",
		Short: "Print a new base64 gossip encryption key (once per cluster; copy it to every host)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := crypto.NewGossipKey()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), k)
			return nil
		},
	})
	return keygen
}
