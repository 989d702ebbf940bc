package policy_test

import (
	"errors"
	"net"
	"syscall"
	"testing"

	"github.com/meshd/meshd/policy"
)

// The kernel's own link-scope multicast leaving through the tunnel (MLD
// reports of a forwarding host) is dropped under its own label, so
// default-deny counts only traffic some workload sent; a unicast packet
// to no segment still lands in default-deny, so the label is not a
// catch-all.
func TestLinkLocalMulticastNetns(t *testing.T) {
	tp := setup(t)
	e := policy.NewEnforcer(tp.conn, tunIface, nil)
	if err := e.Apply(compile(t)); err != nil {
		t.Fatal(err)
	}
	send := func(dst string) error {
		return inNetns(tp.router, func() error {
			c, err := net.Dial("udp6", dst)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("x"))
			return err
		})
	}
	// A write the output hook drops fails with EPERM: proof it was judged.
	for range 3 {
		if err := send("[ff02::16%" + tunIface + "]:9"); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("link-scope multicast out of the tunnel: %v, want EPERM (dropped by the policy)", err)
		}
	}
	if err := send("[fd00:77::2]:9"); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("unicast to no segment: %v, want EPERM", err)
	}
	// At least ours: this forwarding router's kernel sends its own MLD
	// reports on the veth standing in for the tunnel, which is the case
	// the rule exists for.
	if c := counter(t, e, policy.LabelLinkLocal); c.Packets < 3 || c.Action != string(policy.Drop) {
		t.Errorf("link-local counter %+v, want at least our 3 packets dropped", c)
	}
	if c := counter(t, e, policy.LabelDefaultDeny); c.Packets != 1 {
		t.Errorf("default-deny counter %+v, want exactly the one unicast packet", c)
	}
}
