package policy

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// recorder is a Conn that logs queued operations and transactions, so the
// tests can check what one Flush would send.
type recorder struct {
	queue    []string
	batches  [][]string
	flushErr error
	rules    []*nftables.Rule // the policy chain
	clamp    []*nftables.Rule // the MSS chain
	guard    []*nftables.Rule // the no-plaintext guard
	forward  []*nftables.Rule // the transit counter
	getErr   error
}

func (r *recorder) AddTable(t *nftables.Table) *nftables.Table {
	r.queue = append(r.queue, "add table "+t.Name)
	return t
}
func (r *recorder) DelTable(t *nftables.Table) { r.queue = append(r.queue, "del table "+t.Name) }
func (r *recorder) AddChain(c *nftables.Chain) *nftables.Chain {
	r.queue = append(r.queue, "add chain "+c.Name)
	return c
}
func (r *recorder) AddRule(x *nftables.Rule) *nftables.Rule {
	r.queue = append(r.queue, "add rule "+x.Chain.Name+" "+labelOf(x.UserData))
	return x
}
func (r *recorder) GetRules(_ *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error) {
	switch c.Name {
	case MSSChain:
		return r.clamp, r.getErr
	case GuardChain:
		return r.guard, r.getErr
	case "forward":
		return r.forward, r.getErr
	}
	return r.rules, r.getErr
}

// Flush drops the queue even on failure, as *nftables.Conn does.
func (r *recorder) Flush() error {
	q := r.queue
	r.queue = nil
	if r.flushErr != nil {
		return r.flushErr
	}
	r.batches = append(r.batches, q)
	return nil
}

func TestApplyIsOneTransaction(t *testing.T) {
	rs, err := Compile(testSegs[:2], []Rule{{From: "blue", To: "green", Ports: []string{"tcp/1", "udp/2"}}})
	if err != nil {
		t.Fatal(err)
	}
	rs.Untracked = true // every chain the table can have
	rec := &recorder{}
	e := NewEnforcer(rec, "mesh0", nil)
	for range 2 {
		if err := e.Apply(rs); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"add table meshd", "del table meshd", "add table meshd",
		"add chain policy", "add chain forward", "add chain input", "add chain output", "add chain mss", "add chain guard",
		"add chain notrack-prerouting", "add chain notrack-output",
		"add rule forward transit", "add rule forward tunnel-in", "add rule forward tunnel-out", "add rule input tunnel-in", "add rule output tunnel-out",
		"add rule policy segment:blue", "add rule policy segment:green",
		"add rule policy established", "add rule policy invalid", "add rule policy link-local",
		"add rule policy allow[0]", "add rule policy allow[0]", "add rule policy default-deny",
		"add rule mss mss-clamp",
		"add rule guard no-plaintext", "add rule guard no-plaintext",
		"add rule notrack-prerouting notrack-in", "add rule notrack-prerouting notrack-out", "add rule notrack-output notrack-out",
		"add rule notrack-prerouting notrack-in", "add rule notrack-prerouting notrack-out", "add rule notrack-output notrack-out",
	}
	// Idempotent: the second Apply sends exactly the same replacement.
	if len(rec.batches) != 2 || !reflect.DeepEqual(rec.batches[0], want) || !reflect.DeepEqual(rec.batches[1], want) {
		t.Errorf("batches:\n%s\nwant twice:\n%s", rec.batches, want)
	}
}

func TestApplyErrors(t *testing.T) {
	rs, _ := Compile(testSegs, nil)
	rec := &recorder{}
	if err := NewEnforcer(rec, "", nil).Apply(rs); err == nil {
		t.Error("Apply with an empty interface name succeeded")
	}
	if len(rec.queue)+len(rec.batches) != 0 {
		t.Errorf("a render error still touched the kernel: %v %v", rec.queue, rec.batches)
	}
	boom := errors.New("boom")
	rec.flushErr = boom
	if err := NewEnforcer(rec, "mesh0", nil).Apply(rs); !errors.Is(err, boom) {
		t.Errorf("Apply = %v, want it to wrap the flush error", err)
	}
}

func TestFlushAndCleanupDeleteTheTable(t *testing.T) {
	want := [][]string{{"add table meshd", "del table meshd"}}
	rec := &recorder{}
	if err := NewEnforcer(rec, "mesh0", nil).Flush(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rec.batches, want) {
		t.Errorf("Flush sent %v, want %v", rec.batches, want)
	}
	rec = &recorder{}
	if err := Cleanup(rec); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rec.batches, want) {
		t.Errorf("Cleanup sent %v, want %v", rec.batches, want)
	}
	rec.flushErr = errors.New("boom")
	if err := Cleanup(rec); err == nil || !strings.Contains(err.Error(), "meshd") {
		t.Errorf("Cleanup = %v", err)
	}
}

func kernelRule(label string, packets, bytes uint64, v expr.VerdictKind) *nftables.Rule {
	return &nftables.Rule{
		UserData: userdata.AppendString(nil, userdata.TypeComment, label),
		Exprs:    []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Counter{Packets: packets, Bytes: bytes}, &expr.Verdict{Kind: v}},
	}
}

func TestCounters(t *testing.T) {
	rec := &recorder{rules: []*nftables.Rule{
		kernelRule("established", 10, 1000, expr.VerdictAccept),
		kernelRule("allow[0]", 1, 60, expr.VerdictAccept),
		kernelRule("allow[0]", 2, 120, expr.VerdictAccept),
		{UserData: []byte{0, 9, 'x'}, Exprs: []expr.Any{&expr.Counter{Packets: 5}}}, // truncated TLV: ignored
		{Exprs: []expr.Any{&expr.Counter{Packets: 5}}},                              // no label: not ours
		kernelRule("segment:blue", 3, 300, expr.VerdictAccept),
		kernelRule("default-deny", 4, 400, expr.VerdictDrop),
	}}
	got, err := NewEnforcer(rec, "mesh0", nil).Counters()
	if err != nil {
		t.Fatal(err)
	}
	want := []Counter{
		{"established", "accept", "established", 10, 1000},
		{"allow[0]", "accept", "rule", 3, 180},
		{"segment:blue", "accept", "same-segment", 3, 300},
		{"default-deny", "drop", "default-deny", 4, 400},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("without a clamp chain:\n got  %+v\nwant %+v", got, want)
	}

	// The clamp has no verdict. Read back, it lacks the rt and byteorder
	// expressions the library cannot decode, as here.
	plan, err := Render(&Ruleset{}, "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(plan.Rules, func(r *nftables.Rule) bool { return r.Chain.Name == MSSChain })
	if i < 0 {
		t.Fatalf("no rule in chain %s", MSSChain)
	}
	clamp := plan.Rules[i]
	var readBack []expr.Any
	for _, x := range clamp.Exprs {
		switch x.(type) {
		case *expr.Rt, *expr.Byteorder:
		case *expr.Counter:
			readBack = append(readBack, &expr.Counter{Packets: 2, Bytes: 120})
		default:
			readBack = append(readBack, x)
		}
	}
	rec.clamp = []*nftables.Rule{{UserData: clamp.UserData, Exprs: readBack}}
	got, err = NewEnforcer(rec, "mesh0", nil).Counters()
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, Counter{"mss-clamp", "clamp", "mss-clamp", 2, 120})
	if !reflect.DeepEqual(got, want) {
		t.Errorf("with the clamp:\n got  %+v\nwant %+v", got, want)
	}

	rec.guard = []*nftables.Rule{kernelRule(LabelNoPlaintext, 7, 700, expr.VerdictDrop), kernelRule(LabelNoPlaintext, 1, 100, expr.VerdictDrop)}
	got, err = NewEnforcer(rec, "mesh0", nil).Counters()
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, Counter{"no-plaintext", "drop", "no-plaintext", 8, 800})
	if !reflect.DeepEqual(got, want) {
		t.Errorf("with the guard:\n got  %+v\nwant %+v", got, want)
	}

	rec.rules = nil
	if _, err := NewEnforcer(rec, "mesh0", nil).Counters(); !errors.Is(err, ErrNotApplied) {
		t.Errorf("Counters without rules = %v, want ErrNotApplied", err)
	}
	rec.getErr = errors.New("netlink: boom")
	if _, err := NewEnforcer(rec, "mesh0", nil).Counters(); !errors.Is(err, rec.getErr) {
		t.Errorf("Counters = %v", err)
	}
}

func TestLabelOf(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{userdata.AppendString(nil, userdata.TypeComment, "allow[1]"), "allow[1]"},
		{userdata.AppendString(userdata.AppendUint32(nil, 5, 7), userdata.TypeComment, "x"), "x"},
		{nil, ""},
		{[]byte{0}, ""},
		{[]byte{0, 200, 'a'}, ""},
	} {
		if got := labelOf(tc.in); got != tc.want {
			t.Errorf("labelOf(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
