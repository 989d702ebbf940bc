package routes

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Watch calls kick whenever a route carrying Protocol or any policy rule
// is deleted, so the reconciler can put back what someone else removed
// (a hand-run `ip route flush` or `ip rule del`, an interface going away,
// networkd reapplying its own rules). kick runs on Watch's goroutines and
// should only signal; rate-limiting is the caller's job. meshd's own
// deletions kick too, and the Set that follows is a no-op. Rule
// notifications carry no protocol worth trusting across kernels, and
// rules change rarely, so every rule deletion kicks.
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
	ruleErr := make(chan error, 1)
	rules, err := subscribeRules(ns)
	if err != nil {
		stop()
		for range updates {
		}
		return err
	}
	go func() { ruleErr <- watchRules(rules, kick) }()
	defer func() {
		rules.Close() // ends watchRules' Receive
		<-ruleErr
	}()
	kick()
	for {
		select {
		case err := <-ruleErr:
			ruleErr <- err // for the deferred wait
			stop()
			for range updates {
			}
			kick()
			return fmt.Errorf("routes: rule subscription ended: %w", orUnknown(err))
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

// The kernel's multicast groups for rule changes (rtnetlink.h).
const (
	rtnlgrpIPv4Rule = 8
	rtnlgrpIPv6Rule = 19
)

func subscribeRules(ns netns.NsHandle) (*nl.NetlinkSocket, error) {
	var s *nl.NetlinkSocket
	var err error
	if ns.IsOpen() {
		s, err = nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, rtnlgrpIPv4Rule, rtnlgrpIPv6Rule)
	} else {
		s, err = nl.Subscribe(unix.NETLINK_ROUTE, rtnlgrpIPv4Rule, rtnlgrpIPv6Rule)
	}
	if err != nil {
		return nil, fmt.Errorf("routes: subscribe to rule updates: %w", err)
	}
	return s, nil
}

// watchRules kicks on every rule deletion until the socket is closed or
// fails.
func watchRules(s *nl.NetlinkSocket, kick func()) error {
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type == unix.RTM_DELRULE {
				kick()
			}
		}
	}
}
