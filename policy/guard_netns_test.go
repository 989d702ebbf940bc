package policy_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/policy"
)

// With meshd's route to a remote slice gone and a default route out of
// another interface, a pod's packets to that slice would leave in
// plaintext. The guard drops them, counts them, and lets traffic to the
// host's own slices and to anything outside the segments pass.
func TestGuardDropsPlaintextNetns(t *testing.T) {
	tp := setup(t)
	r, p := tp.router, tp.pod
	e := policy.NewEnforcer(tp.conn, tunIface, nil)
	if err := e.Apply(compile(t)); err != nil {
		t.Fatal(err)
	}
	// An "underlay" with a default route: a second veth to the remote.
	run(t, "ip", "-n", r, "link", "add", "u0", "type", "veth", "peer", "name", "u1", "netns", tp.remote)
	run(t, "ip", "-n", r, "addr", "add", "198.51.100.1/30", "dev", "u0")
	run(t, "ip", "-n", tp.remote, "addr", "add", "198.51.100.2/30", "dev", "u1")
	run(t, "ip", "-n", r, "link", "set", "u0", "up")
	run(t, "ip", "-n", tp.remote, "link", "set", "u1", "up")
	run(t, "ip", "-n", r, "route", "add", "default", "via", "198.51.100.2")

	if !pingOK(p, podBlue, farBlue) {
		t.Fatal("same-segment ping through the tunnel fails before the fault")
	}
	// Someone removes the route into the tunnel.
	run(t, "ip", "-n", r, "route", "del", "10.42.2.0/24")
	capture := startCapture(t, tp.remote, "u1")
	if pingOK(p, podBlue, farBlue) {
		t.Fatal("a pod reached a remote slice over the underlay, in plaintext")
	}
	if got := counter(t, e, policy.LabelNoPlaintext); got.Packets == 0 {
		t.Errorf("no-plaintext counted nothing: %+v", got)
	}
	if frames := capture(); strings.Contains(frames, "10.42.2.2") {
		t.Errorf("plaintext on the underlay:\n%s", frames)
	}
	// Outside the segments and inside the router's own slice: untouched.
	if !pingOK(r, "198.51.100.1", "198.51.100.2") {
		t.Error("underlay traffic was dropped")
	}
	if !pingOK(r, routerBlue, podBlue) {
		t.Error("traffic to the router's own slice was dropped")
	}
}

// startCapture records what crosses dev in ns until the returned function
// is called, and returns tcpdump's text.
func startCapture(t *testing.T, ns, dev string) func() string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out strings.Builder
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "tcpdump", "-l", "-n", "-i", dev, "ip or ip6")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // tcpdump has no readiness signal but its banner
	return func() string {
		time.Sleep(200 * time.Millisecond)
		cancel()
		cmd.Wait()
		return out.String()
	}
}
