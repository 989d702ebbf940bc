package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// waitDelay bounds how long a command's output is awaited after it exits or
// is cancelled: a backgrounded grandchild holding the pipe must not hang us.
const waitDelay = 2 * time.Second

// run executes a command and folds its output into the error.
func run(ctx context.Context, name string, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, argv...)
	cmd.WaitDelay = waitDelay
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ipn runs several "ip -n ns ..." commands, stopping at the first failure.
func ipn(ctx context.Context, ns string, cmds ...[]string) error {
	for _, c := range cmds {
		if _, err := run(ctx, "ip", append([]string{"-n", ns}, c...)...); err != nil {
			return fmt.Errorf("netns %s: %w", ns, err)
		}
	}
	return nil
}

// IP runs "ip -n ns ARGS..." for each ARGS in cmds, in order, stopping at
// the first failure; the error names the namespace, the command and its
// output.
func IP(ctx context.Context, ns string, cmds ...[]string) error { return ipn(ctx, ns, cmds...) }

// setSysctls writes key/value pairs (keys relative to /proc/sys, with "/"
// separators because interface names may contain dots) inside ns. Net
// sysctls resolve against the writing thread's namespace, so entering ns is
// enough; no sysctl binary is needed. Missing IPv6 keys are ignored unless
// strict, for kernels booted without IPv6.
func setSysctls(ns string, strict bool, kv ...string) error {
	return InNetns(ns, func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			path := filepath.Join("/proc/sys", kv[i])
			err := os.WriteFile(path, []byte(kv[i+1]), 0o644)
			if err != nil && !strict && errors.Is(err, os.ErrNotExist) && strings.HasPrefix(kv[i], "net/ipv6/") {
				continue
			}
			if err != nil {
				return fmt.Errorf("netns %s: sysctl %s=%s: %w", ns, kv[i], kv[i+1], err)
			}
		}
		return nil
	})
}

// Exec runs argv inside namespace ns via "ip netns exec" and returns its
// combined output. An empty ns runs argv in the caller's namespace.
func Exec(ctx context.Context, ns string, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("lab: Exec: empty command")
	}
	if ns == "" {
		return run(ctx, argv[0], argv[1:]...)
	}
	out, err := run(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	if err != nil {
		return out, fmt.Errorf("netns %s: %w", ns, err)
	}
	return out, nil
}

// Exec runs argv in the host's namespace.
func (h *Host) Exec(ctx context.Context, argv ...string) (string, error) {
	return Exec(ctx, h.NS(), argv...)
}

// Ping sends count echo requests from fromNS to to and succeeds once count
// replies arrived. timeout bounds the whole run (default count+2 s); each
// reply is awaited at most 1 s (-W 1).
func Ping(ctx context.Context, fromNS string, to netip.Addr, count int, timeout time.Duration) error {
	if count < 1 {
		count = 1
	}
	if timeout <= 0 {
		timeout = time.Duration(count+2) * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
	defer cancel()
	family := "-4"
	if to.Is6() && !to.Is4In6() {
		family = "-6"
	}
	// -w makes ping itself give up, so its summary lands in the error
	// instead of being lost to a context kill.
	deadline := strconv.Itoa(int(math.Ceil(timeout.Seconds())))
	argv := []string{"ping", family, "-n", "-q", "-c", strconv.Itoa(count), "-W", "1", "-w", deadline}
	if count > 1 {
		argv = append(argv, "-i", "0.2")
	}
	_, err := Exec(ctx, fromNS, append(argv, to.String())...)
	return err
}

// InNetns runs fn with the calling code switched into the named namespace,
// so fn can open sockets there (they stay in that namespace after fn
// returns). fn runs on a fresh goroutine whose OS thread is locked: if
// switching back ever fails, the thread dies with the goroutine instead of
// leaking the wrong namespace to unrelated code. A panic in fn is re-raised
// in the caller; t.FailNow inside fn turns into an error.
func InNetns(name string, fn func() error) error {
	type result struct {
		err      error
		panicked bool
		panicVal any
		returned bool
	}
	ch := make(chan result, 1)
	go func() {
		var res result
		defer func() { ch <- res }()
		runtime.LockOSThread()
		restored := false
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			}
		}()
		orig, err := netns.Get()
		if err != nil {
			res.err, res.returned, restored = fmt.Errorf("lab: get current netns: %w", err), true, true
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			res.err, res.returned, restored = fmt.Errorf("lab: open netns %s: %w", name, err), true, true
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			res.err, res.returned, restored = fmt.Errorf("lab: enter netns %s: %w", name, err), true, true
			return
		}
		defer func() {
			if err := netns.Set(orig); err != nil {
				res.err = errors.Join(res.err, fmt.Errorf("lab: leave netns %s: %w", name, err))
				return
			}
			restored = true
		}()
		defer func() {
			if r := recover(); r != nil {
				res.panicked, res.panicVal = true, r
			}
		}()
		res.err = fn()
		res.returned = true
	}()
	res := <-ch
	switch {
	case res.panicked:
		panic(res.panicVal)
	case !res.returned:
		return fmt.Errorf("lab: function run in netns %s called runtime.Goexit (t.FailNow does not work inside InNetns)", name)
	}
	return res.err
}

// defaultExchangeTimeout bounds TCPExchange when ctx has no deadline.
const defaultExchangeTimeout = 10 * time.Second

// TCPExchange listens on serverAddr inside serverNS, connects from
// clientNS, sends payload, and checks that the server echoed it intact.
// Port 0 picks a free port.
func TCPExchange(ctx context.Context, serverNS string, serverAddr netip.AddrPort, clientNS string, payload []byte) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultExchangeTimeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	var ln *net.TCPListener
	err := InNetns(serverNS, func() (err error) {
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(serverAddr))
		return err
	})
	if err != nil {
		return fmt.Errorf("lab: listen on %s in netns %s: %w", serverAddr, serverNS, err)
	}
	defer ln.Close()
	_ = ln.SetDeadline(deadline)
	target := netip.AddrPortFrom(serverAddr.Addr(), uint16(ln.Addr().(*net.TCPAddr).Port))

	served := make(chan error, 1)
	go func() { served <- echoOnce(ln, deadline) }()

	var conn net.Conn
	err = InNetns(clientNS, func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", target.String())
		return err
	})
	if err != nil {
		ln.Close() // unblocks the server's Accept
		<-served
		return fmt.Errorf("lab: dial %s from netns %s: %w", target, clientNS, err)
	}
	got, cerr := exchange(conn.(*net.TCPConn), deadline, payload)
	if serr := <-served; serr != nil {
		return fmt.Errorf("lab: echo server %s in netns %s: %w", target, serverNS, serr)
	}
	if cerr != nil {
		return fmt.Errorf("lab: client in netns %s to %s: %w", clientNS, target, cerr)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("lab: %s -> %s: echoed %d bytes differ from the %d sent", clientNS, target, len(got), len(payload))
	}
	return nil
}

// echoOnce serves one connection: read until the client half-closes, then
// write everything back. Reading fully first avoids a write/write deadlock
// for payloads larger than the socket buffers.
func echoOnce(ln *net.TCPListener, deadline time.Time) error {
	c, err := ln.AcceptTCP()
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	data, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if _, err := c.Write(data); err != nil {
		return err
	}
	return c.CloseWrite()
}

func exchange(c *net.TCPConn, deadline time.Time, payload []byte) ([]byte, error) {
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := c.Write(payload); err != nil {
		return nil, err
	}
	if err := c.CloseWrite(); err != nil {
		return nil, err
	}
	return io.ReadAll(c)
}

// WaitFor calls cond every interval until it returns nil or ctx ends; on
// timeout the error wraps both ctx's error and cond's last error.
func WaitFor(ctx context.Context, interval time.Duration, cond func() error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		last := cond()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; last error: %w", ctx.Err(), last)
		case <-t.C:
		}
	}
}
