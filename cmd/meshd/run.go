package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/config"
	"github.com/meshd/meshd/daemon"
)

func newRunCommand() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon: join the cluster and keep the WireGuard mesh in sync",
		Long: `Run joins the serf cluster, creates the WireGuard interface and keeps its
peers and the per-segment routes equal to the live membership. SIGTERM or
SIGINT leaves the cluster and removes everything meshd created.

Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad flags, config or key file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			log := newLogger(os.Stderr, cfg)
			slog.SetDefault(log)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			go exitIfStuck(ctx, log)
			abs, err := filepath.Abs(path)
			if err != nil {
				return err
			}
			return daemon.Run(ctx, cfg, log, daemon.Options{
				Reload:     func() (*config.Config, error) { return config.Load(abs) },
				ConfigPath: abs,
				Hangup:     hangups(ctx),
			})
		},
	}
	addConfigFlag(cmd, &path)
	return cmd
}

// stopLimit is how long a SIGTERM may take: the daemon bounds each
// teardown step, and this catches whatever still hangs (a dependency that
// stopped answering), so a service manager never has to SIGKILL meshd.
const stopLimit = 5 * time.Second

func exitIfStuck(ctx context.Context, log *slog.Logger) {
	<-ctx.Done()
	time.Sleep(stopLimit)
	log.Error("shutdown did not finish in time; exiting with cleanup unfinished (the next start removes the rest)", "limit", stopLimit)
	os.Exit(exitFailure)
}

// hangups turns SIGHUP into reload requests for as long as ctx lives.
func hangups(ctx context.Context) <-chan struct{} {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	out := make(chan struct{}, 1)
	go func() {
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				select {
				case out <- struct{}{}:
				default: // a reload is already pending
				}
			}
		}
	}()
	return out
}

func newLogger(w io.Writer, cfg *config.Config) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h).With("node", cfg.NodeName)
}

// controlSocket finds the daemon's control socket: from --socket, or the
// config the daemon runs with (--config), read leniently: the host's own
// certificate having expired is what status is there to report.
func controlSocket(path, socket string) (string, error) {
	if socket != "" {
		return socket, nil
	}
	cfg, err := config.LoadClient(path)
	if err != nil {
		return "", fmt.Errorf("%w (or pass --socket)", err)
	}
	return cfg.ControlSocket, nil
}
