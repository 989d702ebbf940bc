package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const (
	// scrapeTimeout bounds a scrape: reading the status talks to the
	// WireGuard device and nftables, and a stuck one must not pile up
	// handler goroutines.
	scrapeTimeout   = 10 * time.Second
	shutdownTimeout = 2 * time.Second
)

// Serve binds listen and serves reg on /metrics in the background until
// ctx is cancelled. Binding happens before it returns, so a taken port
// fails the caller's startup instead of surfacing later in a log line.
func Serve(ctx context.Context, listen string, reg *prometheus.Registry, log *slog.Logger) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("metrics endpoint: %w; free the port or change [metrics] listen", err)
	}
	srv := &http.Server{Handler: handler(reg, log), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "listen", ln.Addr().String(), "err", err)
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		_ = srv.Shutdown(sctx) // past the timeout, open scrapes are simply dropped
	}()
	log.Info("serving metrics", "listen", ln.Addr().String(), "path", "/metrics")
	return nil
}

func handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		Timeout:  scrapeTimeout,
	}))
	return mux
}
