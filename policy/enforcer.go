package policy

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Conn is the part of *nftables.Conn the enforcer uses; tests substitute
// a recorder. Like *nftables.Conn, the mutating methods only queue and
// Flush sends the queue as one transaction.
type Conn interface {
	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	AddChain(c *nftables.Chain) *nftables.Chain
	AddRule(r *nftables.Rule) *nftables.Rule
	GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error)
	Flush() error
}

// Counter is the traffic one label's rules have counted since the last
// Apply (Apply recreates the rules, which resets them).
type Counter struct {
	Label   string
	Action  string // "accept" or "drop"; ActionClamp for LabelMSSClamp
	Reason  string // see Reason
	Packets uint64
	Bytes   uint64
}

// ErrNotApplied is returned by Counters when meshd's table is not in the
// kernel (never applied, flushed, or removed by someone else).
var ErrNotApplied = errors.New("no meshd policy is applied (table inet " + TableName + " is missing)")

// Enforcer owns meshd's nftables table for one WireGuard interface.
type Enforcer struct {
	mu    sync.Mutex // serialises transactions: Conn queues are shared
	conn  Conn
	iface string
	log   *slog.Logger
	// applied is the plan of the last successful Apply (guarded by mu),
	// what Intact compares the kernel with.
	applied *Plan
}

// NewEnforcer returns an enforcer for traffic through iface; a nil log
// discards messages.
func NewEnforcer(c Conn, iface string, log *slog.Logger) *Enforcer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Enforcer{conn: c, iface: iface, log: log}
}

func ownTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

// Apply replaces the table's whole content in a single transaction: the
// kernel swaps old for new atomically, so a reload never opens a window
// and a failed Apply leaves the previous policy in force. Conntrack state
// lives outside the table, so established connections survive.
func (e *Enforcer) Apply(rs *Ruleset) error {
	plan, err := Render(rs, e.iface)
	if err != nil {
		return fmt.Errorf("apply policy: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	queueDelete(e.conn, plan.Table)
	e.conn.AddTable(plan.Table)
	for _, c := range plan.Chains {
		e.conn.AddChain(c)
	}
	for _, r := range plan.Rules {
		e.conn.AddRule(r)
	}
	if err := e.conn.Flush(); err != nil && !e.echoesLost(err, plan) {
		return fmt.Errorf("apply policy on %s (table inet %s): %w", e.iface, TableName, err)
	}
	e.applied = plan
	e.log.Info("policy applied", "interface", e.iface, "entries", len(rs.Entries), "kernel_rules", len(plan.Rules))
	return nil
}

// echoesLost reports whether err only says the kernel's echoes of a
// committed transaction were lost, with the kernel holding every rule of
// plan. google/nftables asks for an echo of each rule, and the kernel
// queues them all when it commits: past about a hundred rules (a hundred
// [[allow]] ports) they overflow the netlink socket's default receive
// buffer and the library returns ENOBUFS for a transaction that went
// through. The caller holds mu.
func (e *Enforcer) echoesLost(err error, plan *Plan) bool {
	if !errors.Is(err, syscall.ENOBUFS) {
		return false
	}
	_, changed, _, derr := e.compareLocked(plan)
	if derr != nil || len(changed) > 0 {
		return false
	}
	e.log.Debug("nftables echoes overflowed the socket buffer; the kernel holds the whole table", "kernel_rules", len(plan.Rules))
	return true
}

// compareLocked counts each chain's rules in the kernel against plan:
// missing counts the chains plan has rules for and the kernel has none,
// changed describes every chain whose count differs.
func (e *Enforcer) compareLocked(plan *Plan) (missing int, changed []string, want map[string]int, err error) {
	want = map[string]int{}
	for _, r := range plan.Rules {
		want[r.Chain.Name]++
	}
	for _, c := range plan.Chains {
		rules, err := e.conn.GetRules(plan.Table, c)
		if err != nil {
			return 0, nil, nil, fmt.Errorf("read chain %s of table inet %s: %w", c.Name, TableName, err)
		}
		if len(rules) == 0 && want[c.Name] > 0 {
			missing++
		}
		if len(rules) != want[c.Name] {
			changed = append(changed, fmt.Sprintf("chain %s has %d rules, want %d", c.Name, len(rules), want[c.Name]))
		}
	}
	return missing, changed, want, nil
}

// Flush removes meshd's table, leaving tunnel traffic unfiltered; used
// at shutdown.
func (e *Enforcer) Flush() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := removeTable(e.conn); err != nil {
		return err
	}
	e.applied = nil
	e.log.Info("policy removed", "interface", e.iface)
	return nil
}

// Intact reports whether every chain of the last applied plan is in the
// kernel with all its rules. A firewall reload (`nft flush ruleset`,
// firewalld, a docker restart) removes the table without telling anyone;
// the caller applies the policy again when this fails.
func (e *Enforcer) Intact() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.applied == nil {
		return nil
	}
	missing, changed, want, err := e.compareLocked(e.applied)
	if err != nil {
		return err
	}
	switch {
	case missing == len(e.applied.Chains) || (missing > 0 && missing == len(changed) && len(changed) == countNonEmpty(want)):
		return ErrNotApplied
	case len(changed) > 0:
		return fmt.Errorf("table inet %s was changed: %s", TableName, strings.Join(changed, "; "))
	}
	return nil
}

func countNonEmpty(m map[string]int) int {
	n := 0
	for _, v := range m {
		if v > 0 {
			n++
		}
	}
	return n
}

// Cleanup removes a table left behind by a run that did not shut down
// cleanly. It needs no state from that run, and is a no-op if there is
// no such table.
func Cleanup(c Conn) error {
	return removeTable(c)
}

func removeTable(c Conn) error {
	queueDelete(c, ownTable())
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove table inet %s: %w", TableName, err)
	}
	return nil
}

// queueDelete deletes the table whether or not it exists: adding an
// existing table is a no-op, so add+delete never fails on ENOENT and
// needs no racy existence check.
func queueDelete(c Conn, t *nftables.Table) {
	c.AddTable(t)
	c.DelTable(t)
}

// Counters reads the policy chain's counters back from the kernel and
// sums them per label, in chain order, followed by the MSS clamp's.
func (e *Enforcer) Counters() ([]Counter, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := ownTable()
	rules, err := e.conn.GetRules(t, &nftables.Chain{Name: PolicyChain, Table: t})
	if err != nil {
		return nil, fmt.Errorf("read policy counters from table inet %s: %w", TableName, err)
	}
	// The kernel answers a dump of a missing table with nothing rather
	// than ENOENT; a rendered policy chain is never empty, so empty means
	// there is no policy.
	if len(rules) == 0 {
		return nil, ErrNotApplied
	}
	// A missing chain dumps as nothing too, so a table gone in between
	// just shows no clamp counter.
	for _, chain := range []string{MSSChain, GuardChain, "forward"} {
		more, err := e.conn.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil {
			return nil, fmt.Errorf("read %s counters from table inet %s: %w", chain, TableName, err)
		}
		rules = append(rules, more...)
	}
	return countersOf(rules)
}

func countersOf(rules []*nftables.Rule) ([]Counter, error) {
	var out []Counter
	index := map[string]int{}
	for _, r := range rules {
		label := labelOf(r.UserData)
		cnt, action := counterAndAction(r.Exprs)
		if label == "" || cnt == nil {
			continue
		}
		i, seen := index[label]
		if !seen {
			i = len(out)
			index[label] = i
			out = append(out, Counter{Label: label, Action: action, Reason: Reason(label)})
		}
		if out[i].Action != action {
			return nil, fmt.Errorf("rules labelled %q disagree: %s and %s", label, out[i].Action, action)
		}
		out[i].Packets += cnt.Packets
		out[i].Bytes += cnt.Bytes
	}
	return out, nil
}

// counterAndAction names the rule's action after its verdict or, for the
// MSS clamp, which has none, after what it does to the packet.
func counterAndAction(exprs []expr.Any) (*expr.Counter, string) {
	var cnt *expr.Counter
	action := ""
	for _, x := range exprs {
		switch v := x.(type) {
		case *expr.Counter:
			cnt = v
		case *expr.Verdict:
			action = verdictName(v)
		case *expr.Exthdr:
			if clampsMSS(v) {
				action = ActionClamp
			}
		}
	}
	return cnt, action
}

// labelOf extracts the comment TLV. It parses by hand because
// userdata.Get panics on truncated input, and the kernel hands back
// whatever anyone wrote into the table.
func labelOf(ud []byte) string {
	for len(ud) >= 2 {
		typ, n := userdata.Type(ud[0]), int(ud[1])
		if len(ud) < 2+n {
			return ""
		}
		if typ == userdata.TypeComment {
			return strings.TrimRight(string(ud[2:2+n]), "\x00")
		}
		ud = ud[2+n:]
	}
	return ""
}

// verdictName names a verdict as nft prints it.
func verdictName(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictGoto:
		return "goto " + v.Chain
	case expr.VerdictReturn:
		return "return"
	}
	return fmt.Sprintf("verdict(%d)", v.Kind)
}
