package routes

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Watch calls kick whenever a route carrying Protocol is deleted, so the
// reconciler can put back what someone else removed (a hand-run `ip route
// flush`, an interface going away). kick runs on Watch's goroutine and
// should only signal; rate-limiting is the caller's job. meshd's own
// deletions kick too, and the Set that follows is a no-op.
//
// ns selects the network namespace; netns.None() means the current one.
// kick is also called once the subscription is up and once when it
// breaks, because deletions outside those bounds went unseen. Watch
// returns nil when ctx ends and an error when the subscription breaks
// (e.g. ENOBUFS after a burst), after which the caller may call it again.
func Watch(ctx context.Context, ns netns.NsHandle, kick func()) error {
	updates := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	stop := sync.OnceFunc(func() { close(done) })
	defer stop()

	var mu sync.Mutex
	var lastErr error
	opts := netlink.RouteSubscribeOptions{
		ErrorCallback: func(err error) {
			mu.Lock()
			lastErr = err
			mu.Unlock()
		},
	}
	if ns.IsOpen() {
		opts.Namespace = &ns
	}
	if err := netlink.RouteSubscribeWithOptions(updates, done, opts); err != nil {
		return fmt.Errorf("routes: subscribe to route updates: %w", err)
	}
	kick()
	for {
		select {
		case <-ctx.Done():
			stop()
			// The library's reader may be blocked sending to updates;
			// it exits, closing the channel, only once it can.
			for range updates {
			}
			return nil
		case u, ok := <-updates:
			if !ok {
				kick()
				mu.Lock()
				defer mu.Unlock()
				return fmt.Errorf("routes: route subscription ended: %w", orUnknown(lastErr))
			}
			if u.Type == unix.RTM_DELROUTE && u.Protocol == Protocol {
				kick()
			}
		}
	}
}

func orUnknown(err error) error {
	if err == nil {
		return errors.New("reader stopped without an error")
	}
	return err
}
