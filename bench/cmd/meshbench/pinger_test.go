package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/meshd/meshd/internal/testenv"
)

// pingTestNetns creates two namespaces joined by a veth pair, a with
// 10.99.0.1/24 and b with 10.99.0.2/24, both with lo up; they are
// removed when the test ends.
func pingTestNetns(t *testing.T) (a, b string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "ip", "sh")
	a = fmt.Sprintf("mbping-%d-a", os.Getpid())
	b = fmt.Sprintf("mbping-%d-b", os.Getpid())
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{a, b} {
		sh("netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		sh("-n", ns, "link", "set", "lo", "up")
	}
	sh("-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b)
	sh("-n", a, "addr", "add", "10.99.0.1/24", "dev", "v0")
	sh("-n", b, "addr", "add", "10.99.0.2/24", "dev", "v1")
	sh("-n", a, "link", "set", "v0", "up")
	sh("-n", b, "link", "set", "v1", "up")
	return a, b
}

func TestPinger(t *testing.T) {
	a, b := pingTestNetns(t)
	ctx := context.Background()

	t.Run("loopback", func(t *testing.T) {
		for _, to := range []string{"127.0.0.1", "::1"} {
			p, err := newPinger(a, netip.Addr{}, netip.MustParseAddr(to))
			if err != nil {
				t.Fatal(err)
			}
			// Retries on one socket: every probe needs its own reply.
			for i := range 3 {
				if err := p.ping(ctx, time.Second); err != nil {
					if to == "::1" && i == 0 && strings.Contains(err.Error(), "unreachable") {
						t.Log("no IPv6 on loopback here, skipping ::1")
						break
					}
					t.Fatalf("%s probe %d: %v", to, i, err)
				}
			}
			p.Close()
		}
	})

	t.Run("across namespaces, shared with another pinger", func(t *testing.T) {
		// Both pingers' sockets see both replies; each must take only its own.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for k := range errs {
			p, err := newPinger(a, netip.Addr{}, netip.MustParseAddr("10.99.0.2"))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 5 {
					if errs[k] = p.ping(ctx, time.Second); errs[k] != nil {
						return
					}
				}
			}()
		}
		wg.Wait()
		for k, err := range errs {
			if err != nil {
				t.Errorf("pinger %d: %v", k, err)
			}
		}
	})

	t.Run("the socket stays in its namespace", func(t *testing.T) {
		// 10.99.0.1 exists in a only; from b it answers, so the socket
		// opened for b sends from b, not from the test's namespace.
		p, err := newPinger(b, netip.Addr{}, netip.MustParseAddr("10.99.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := p.ping(ctx, time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("from a given source address", func(t *testing.T) {
		// a also owns 10.97.0.1 and 10.96.0.1; b answers the first and
		// drops everything to the second, so only the bound source
		// decides whether a reply comes back.
		for _, args := range [][]string{
			{"-n", a, "addr", "add", "10.97.0.1/32", "dev", "lo"},
			{"-n", a, "addr", "add", "10.96.0.1/32", "dev", "lo"},
			{"-n", b, "route", "add", "10.97.0.0/24", "via", "10.99.0.1"},
			{"-n", b, "route", "add", "blackhole", "10.96.0.0/24"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
		for _, c := range []struct {
			from string
			want bool
		}{{"10.97.0.1", true}, {"10.96.0.1", false}} {
			p, err := newPinger(a, netip.MustParseAddr(c.from), netip.MustParseAddr("10.99.0.2"))
			if err != nil {
				t.Fatal(err)
			}
			err = p.ping(ctx, 300*time.Millisecond)
			p.Close()
			if (err == nil) != c.want {
				t.Errorf("ping from %s: %v, want answered %v", c.from, err, c.want)
			}
		}
	})

	t.Run("no reply times out after wait", func(t *testing.T) {
		p, err := newPinger(a, netip.Addr{}, netip.MustParseAddr("10.99.0.3")) // nobody has it
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		start := time.Now()
		err = p.ping(ctx, 300*time.Millisecond)
		if err == nil {
			t.Fatal("ping of an absent address succeeded")
		}
		if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
			t.Fatalf("gave up after %s, want about 300ms (%v)", d, err)
		}
	})

	t.Run("an ICMP error ends the wait", func(t *testing.T) {
		// b routes 10.98.0.0/24 to nowhere and says so.
		for _, args := range [][]string{
			{"-n", a, "route", "add", "10.98.0.0/24", "via", "10.99.0.2"},
			{"-n", b, "route", "add", "unreachable", "10.98.0.0/24"},
			{"netns", "exec", b, "sh", "-c", "echo 1 >/proc/sys/net/ipv4/ip_forward"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
		p, err := newPinger(a, netip.Addr{}, netip.MustParseAddr("10.98.0.5"))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		start := time.Now()
		err = p.ping(ctx, 3*time.Second)
		if err == nil || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("err %v, want destination unreachable", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("took %s: the error did not end the wait", d)
		}
	})

	t.Run("cancelled context ends the wait", func(t *testing.T) {
		p, err := newPinger(a, netip.Addr{}, netip.MustParseAddr("10.99.0.3"))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		c, cancel := context.WithCancel(ctx)
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		if err := p.ping(c, 5*time.Second); err != context.Canceled {
			t.Fatalf("err %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("cancel took %s", d)
		}
	})
}

func TestPingerMatchesOnlyItsOwnReply(t *testing.T) {
	to := netip.MustParseAddr("10.42.2.10")
	p := &pinger{to: to, proto: 1, req: ipv4.ICMPTypeEcho, rep: ipv4.ICMPTypeEchoReply, reqCode: 8, id: 4242, seq: 7}
	echo := func(typ icmp.Type, id, seq int) []byte {
		b, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("x")}}).Marshal(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// An ICMP error quoting an IPv4 header and the request's first bytes.
	icmpErr := func(typ icmp.Type, id, seq int) []byte {
		quoted := append([]byte{0x45, 0, 0, 84, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 42, 1, 10, 10, 42, 2, 10}, echo(ipv4.ICMPTypeEcho, id, seq)...)
		var body icmp.MessageBody = &icmp.DstUnreach{Data: quoted}
		if typ == ipv4.ICMPTypeTimeExceeded {
			body = &icmp.TimeExceeded{Data: quoted}
		}
		b, err := (&icmp.Message{Type: typ, Code: 1, Body: body}).Marshal(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	from := &net.IPAddr{IP: to.AsSlice()}
	other := &net.IPAddr{IP: net.IPv4(10, 42, 3, 10)}
	for _, c := range []struct {
		name    string
		b       []byte
		from    net.Addr
		reply   bool
		isError bool
	}{
		{"its reply", echo(ipv4.ICMPTypeEchoReply, 4242, 7), from, true, false},
		{"another pinger's reply", echo(ipv4.ICMPTypeEchoReply, 4243, 7), from, false, false},
		{"a late reply to an earlier probe", echo(ipv4.ICMPTypeEchoReply, 4242, 6), from, false, false},
		{"the same reply from another host", echo(ipv4.ICMPTypeEchoReply, 4242, 7), other, false, false},
		{"a request, not a reply", echo(ipv4.ICMPTypeEcho, 4242, 7), from, false, false},
		{"garbage", []byte{0}, from, false, false},
		{"unreachable about its request, from a router", icmpErr(ipv4.ICMPTypeDestinationUnreachable, 4242, 7), other, false, true},
		{"time exceeded about its request", icmpErr(ipv4.ICMPTypeTimeExceeded, 4242, 7), other, false, true},
		{"unreachable about another pinger's request", icmpErr(ipv4.ICMPTypeDestinationUnreachable, 4243, 7), other, false, false},
		{"unreachable about an earlier probe", icmpErr(ipv4.ICMPTypeDestinationUnreachable, 4242, 6), other, false, false},
	} {
		reply, e := p.match(c.b, c.from)
		if reply != c.reply || (e != "") != c.isError {
			t.Errorf("%s: match = %v, %q; want reply %v, error %v", c.name, reply, e, c.reply, c.isError)
		}
	}
}
