package routes

import "fmt"

// String names the route the way errors and logs refer to it; Peer is
// left out because it is not part of what the kernel holds.
func (r Route) String() string {
	return fmt.Sprintf("table %d %s %s", r.Table, r.Dst, r.Kind)
}

// String names the rule in ip-rule order, for errors and logs.
func (r Rule) String() string {
	s := fmt.Sprintf("prio %d", r.Priority)
	if r.From.IsValid() {
		s += " from " + r.From.String()
	}
	if r.To.IsValid() {
		s += " to " + r.To.String()
	}
	return s + fmt.Sprintf(" lookup %d", r.Table)
}
