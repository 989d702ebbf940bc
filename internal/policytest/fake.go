// Package policytest provides an in-memory nftables connection for tests
// of code that drives policy.Enforcer: it keeps the tables, chains and
// rules a real kernel would hold after each transaction, so a test can
// ask whether meshd's table is installed, and remove it behind meshd's
// back as a firewall reload would.
package policytest

import (
	"errors"
	"sync"

	"github.com/google/nftables"
)

// Conn is a policy.Conn whose Flush applies the queued operations to an
// in-memory ruleset, all or nothing, as the kernel applies a batch. It is
// safe for concurrent use.
type Conn struct {
	mu      sync.Mutex
	queue   []func(*ruleset) error
	state   ruleset
	flushes int
	failing error
}

type ruleset struct {
	tables map[string]*table
}

type table struct {
	chains map[string][]*nftables.Rule
	order  []string
}

// New returns an empty ruleset.
func New() *Conn { return &Conn{state: ruleset{tables: map[string]*table{}}} }

func tableKey(t *nftables.Table) string { return familyName(t.Family) + " " + t.Name }

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	}
	return "other"
}

// AddTable queues the creation of t; adding an existing table is a no-op,
// as in the kernel.
func (c *Conn) AddTable(t *nftables.Table) *nftables.Table {
	k := tableKey(t)
	c.enqueue(func(r *ruleset) error {
		if r.tables[k] == nil {
			r.tables[k] = &table{chains: map[string][]*nftables.Rule{}}
		}
		return nil
	})
	return t
}

// DelTable queues the deletion of t with everything in it; deleting a
// missing table fails the whole batch, as ENOENT does.
func (c *Conn) DelTable(t *nftables.Table) {
	k := tableKey(t)
	c.enqueue(func(r *ruleset) error {
		if r.tables[k] == nil {
			return errors.New("no such table " + k)
		}
		delete(r.tables, k)
		return nil
	})
}

// AddChain queues a chain in an existing table.
func (c *Conn) AddChain(ch *nftables.Chain) *nftables.Chain {
	k, name := tableKey(ch.Table), ch.Name
	c.enqueue(func(r *ruleset) error {
		t := r.tables[k]
		if t == nil {
			return errors.New("no such table " + k)
		}
		if _, ok := t.chains[name]; !ok {
			t.chains[name] = nil
			t.order = append(t.order, name)
		}
		return nil
	})
	return ch
}

// AddRule queues a rule at the end of an existing chain.
func (c *Conn) AddRule(rule *nftables.Rule) *nftables.Rule {
	k, name := tableKey(rule.Table), rule.Chain.Name
	c.enqueue(func(r *ruleset) error {
		t := r.tables[k]
		if t == nil {
			return errors.New("no such table " + k)
		}
		if _, ok := t.chains[name]; !ok {
			return errors.New("no such chain " + name)
		}
		t.chains[name] = append(t.chains[name], rule)
		return nil
	})
	return rule
}

// GetRules dumps a chain; a missing table or chain dumps as nothing, as
// the kernel answers.
func (c *Conn) GetRules(t *nftables.Table, ch *nftables.Chain) ([]*nftables.Rule, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tb := c.state.tables[tableKey(t)]
	if tb == nil {
		return nil, nil
	}
	return append([]*nftables.Rule(nil), tb.chains[ch.Name]...), nil
}

// Flush applies the queue as one transaction and empties it, also on
// failure, as *nftables.Conn does.
func (c *Conn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.queue
	c.queue = nil
	if c.failing != nil {
		return c.failing
	}
	next := c.state.clone()
	for _, op := range q {
		if err := op(&next); err != nil {
			return err
		}
	}
	c.state = next
	c.flushes++
	return nil
}

func (c *Conn) enqueue(op func(*ruleset) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queue = append(c.queue, op)
}

func (r ruleset) clone() ruleset {
	out := ruleset{tables: make(map[string]*table, len(r.tables))}
	for k, t := range r.tables {
		nt := &table{chains: make(map[string][]*nftables.Rule, len(t.chains)), order: append([]string(nil), t.order...)}
		for name, rules := range t.chains {
			nt.chains[name] = append([]*nftables.Rule(nil), rules...)
		}
		out.tables[k] = nt
	}
	return out
}

// HasTable reports whether an inet table of that name is installed.
func (c *Conn) HasTable(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state.tables["inet "+name] != nil
}

// Chains lists the chains of an inet table in creation order.
func (c *Conn) Chains(name string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.state.tables["inet "+name]; t != nil {
		return append([]string(nil), t.order...)
	}
	return nil
}

// DropTable removes a table behind the enforcer's back, as
// `nft delete table` or a firewall reload would.
func (c *Conn) DropTable(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.state.tables, "inet "+name)
}

// Flushes is the number of transactions applied.
func (c *Conn) Flushes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushes
}

// Fail makes every following Flush fail with err (nil to stop).
func (c *Conn) Fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failing = err
}
