package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/lab"
)

// A namespace whose lo holds 10.99.0.1 and whose veth0 leads to
// 10.97.0.0/24, where nothing answers (its other end has no address).
func newNetns(t *testing.T) string {
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ip")
	name := fmt.Sprintf("probetest-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	exec.Command("ip", "netns", "del", name).Run()
	run("netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "link", "set", "lo", "up")
	run("-n", name, "addr", "add", "10.99.0.1/32", "dev", "lo")
	run("-n", name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
	run("-n", name, "link", "set", "veth0", "up")
	run("-n", name, "link", "set", "veth1", "up")
	run("-n", name, "route", "add", "10.97.0.0/24", "dev", "veth0")
	return name
}

func inNetns(t *testing.T, ns string, fn func() error) error {
	t.Helper()
	var err error
	if nerr := lab.InNetns(ns, func() error { err = fn(); return nil }); nerr != nil {
		t.Fatal(nerr)
	}
	return err
}

func TestEchoAnsweredAndUnanswered(t *testing.T) {
	ns := newNetns(t)
	src := netip.MustParseAddr("10.99.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := inNetns(t, ns, func() error { return Echo(ctx, src, src) }); err != nil {
		t.Fatalf("echo to an address of the host: %v", err)
	}

	began := time.Now()
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := inNetns(t, ns, func() error { return Echo(ctx, src, netip.MustParseAddr("10.97.0.5")) })
	if !errors.Is(err, ErrNoReply) {
		t.Fatalf("echo to an address where nothing answers: %v, want ErrNoReply", err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("an unanswered echo took %s with a 300ms deadline", took)
	}
}

// Raw sockets see every ICMP message; concurrent probes must each take
// their own reply and nothing else.
func TestConcurrentEchoesTakeOnlyTheirReplies(t *testing.T) {
	ns := newNetns(t)
	src := netip.MustParseAddr("10.99.0.1")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			dst := src
			if i%2 == 1 {
				dst = netip.MustParseAddr("10.97.0.9") // unanswered: must not borrow a reply
			}
			err := inNetns(t, ns, func() error { return Echo(ctx, src, dst) })
			if (err == nil) != (i%2 == 0) {
				errs <- fmt.Errorf("echo %d to %s: %v", i, dst, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestEchoRefusesMixedFamilies(t *testing.T) {
	err := Echo(context.Background(), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("2001:db8::1"))
	if err == nil || !strings.Contains(err.Error(), "families") || errors.Is(err, ErrNoReply) {
		t.Fatalf("got %v", err)
	}
}

// Where net.ipv4.ping_group_range lets meshd's group open ICMP datagram
// sockets, probes need no CAP_NET_RAW.
func TestEchoOverAnUnprivilegedICMPSocket(t *testing.T) {
	ns := newNetns(t)
	if out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range").CombinedOutput(); err != nil {
		t.Fatalf("ping_group_range: %v: %s", err, out)
	}
	src := netip.MustParseAddr("10.99.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := inNetns(t, ns, func() error { return echo(ctx, src, src, false) }); err != nil {
		t.Fatalf("echo over a datagram socket: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := inNetns(t, ns, func() error { return echo(ctx, src, netip.MustParseAddr("10.97.0.5"), false) }); err == nil {
		t.Fatal("an unanswered echo over a datagram socket succeeded")
	}
}
