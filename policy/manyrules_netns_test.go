package policy_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/meshd/meshd/policy"
)

// TestManyRulesNetns: a policy of 150 [[allow]] ports goes in, and is
// what the kernel holds, although the kernel's echo of every rule
// overflows the netlink socket's default receive buffer (the library
// then reports ENOBUFS for a committed transaction); and traffic is
// judged by it.
func TestManyRulesNetns(t *testing.T) {
	tp := setup(t)
	echoTCP(t, tp.remote, farGreen+":8149")
	var rules []policy.Rule
	for i := range 150 {
		rules = append(rules, policy.Rule{From: "blue", To: "green", Ports: []string{fmt.Sprintf("tcp/%d", 8000+i)}})
	}
	rs := compile(t, rules...)
	e := policy.NewEnforcer(tp.conn, tunIface, nil)
	if err := e.Apply(rs); err != nil {
		t.Fatalf("Apply with %d rules: %v", len(rules), err)
	}
	if got, want := kernelRules(t, tp.conn), planRules(t, rs); !slices.Equal(got, want) {
		t.Errorf("the kernel holds %d rules, the plan %d", len(got), len(want))
	}
	if err := e.Intact(); err != nil {
		t.Errorf("Intact after Apply: %v", err)
	}
	expect(t, "150 rules", map[string]probe{
		"the last rule's port, blue -> green": {tcpOK(tp.pod, podBlue, farGreen+":8149"), true},
		"a port no rule names":                {tcpOK(tp.pod, podBlue, farGreen+":8150"), false},
	})
}
