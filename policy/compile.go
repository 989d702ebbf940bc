package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Action is what an entry does with a packet it matches.
type Action string

const (
	Accept Action = "accept"
	Drop   Action = "drop"
)

// Labels tag entries and the kernel rules generated from them; Counters
// reads them back, so they are part of the contract with operators.
const (
	LabelEstablished = "established"
	LabelInvalid     = "invalid"
	// LabelLinkLocal counts the kernel's own IPv6 link-scope multicast
	// (MLD reports on a forwarding host) that would otherwise show up as
	// default-deny drops although no workload sent anything.
	LabelLinkLocal   = "link-local"
	LabelDefaultDeny = "default-deny"
	labelRulePrefix  = "allow["
	labelSegPrefix   = "segment:"
)

// Entry is one step of the ordered policy. Render turns each entry into
// kernel rules and Explain walks the same entries, first match wins.
type Entry struct {
	Label string
	// From and To are how the rule named its ends (segment name or
	// prefix), for explanations; empty means any address.
	From, To string
	// Src and Dst are the addresses matched; empty means any address.
	Src, Dst []netip.Prefix
	// Ports lists the traffic matched; empty means all traffic.
	Ports  []PortSpec
	Action Action
}

// Ruleset is the compiled policy: allow rules in config order, then one
// same-segment accept per segment, then the default deny.
type Ruleset struct {
	Segments []Segment
	Entries  []Entry
	// Local holds this host's own slices: the no-plaintext guard (see
	// GuardChain) lets traffic to them leave through the pods' links.
	// The daemon sets it; Compile leaves it empty.
	Local []netip.Prefix
	// Untracked turns the same-segment fast path on (see fastpath.go):
	// an operator's choice, since untracked packets also skip the
	// host's other conntrack users.
	Untracked bool
}

// Compile validates the rules against the segments and orders the
// entries. It is pure, so config validation, the CLI preview and the
// enforcer all see the same result.
func Compile(segs []Segment, rules []Rule) (*Ruleset, error) {
	if err := checkSegments(segs); err != nil {
		return nil, err
	}
	rs := &Ruleset{Segments: slices.Clone(segs)}
	for i, r := range rules {
		e, err := ParseRule(r, segs)
		if err != nil {
			var re *RuleError
			if errors.As(err, &re) {
				re.Index = i
			}
			return nil, err
		}
		e.Label = RuleLabel(i)
		rs.Entries = append(rs.Entries, e)
	}
	for _, seg := range segs {
		rs.Entries = append(rs.Entries, Entry{
			Label: labelSegPrefix + seg.Name,
			From:  seg.Name, To: seg.Name,
			Src:    []netip.Prefix{seg.CIDR},
			Dst:    []netip.Prefix{seg.CIDR},
			Action: Accept,
		})
	}
	rs.Entries = append(rs.Entries, Entry{Label: LabelDefaultDeny, Action: Drop})
	return rs, nil
}

// RuleLabel is the label of the i-th [[allow]] rule; it doubles as the
// rule's config key, so a counter points straight at the file.
func RuleLabel(i int) string { return fmt.Sprintf("allow[%d]", i) }

// checkSegments guards what same-segment matching relies on; config has
// already checked the same, but Compile is public.
func checkSegments(segs []Segment) error {
	for i, seg := range segs {
		if seg.Name == "" || strings.ContainsAny(seg.Name, " \t\n") {
			return fmt.Errorf("segment %d: invalid name %q", i, seg.Name)
		}
		if !seg.CIDR.IsValid() || seg.CIDR.Masked() != seg.CIDR {
			return fmt.Errorf("segment %q: %v is not a canonical prefix", seg.Name, seg.CIDR)
		}
		for _, prev := range segs[:i] {
			if prev.Name == seg.Name {
				return fmt.Errorf("segment %q is defined twice", seg.Name)
			}
			if prev.CIDR.Overlaps(seg.CIDR) {
				return fmt.Errorf("segments %q (%s) and %q (%s) overlap", prev.Name, prev.CIDR, seg.Name, seg.CIDR)
			}
		}
	}
	return nil
}

// Reason classifies a label for counters and explanations.
func Reason(label string) string {
	switch {
	case label == LabelEstablished, label == LabelInvalid, label == LabelLinkLocal, label == LabelDefaultDeny, label == LabelMSSClamp, label == LabelNoPlaintext, label == LabelTransit:
		return label
	case strings.HasPrefix(label, labelRulePrefix):
		return "rule"
	case strings.HasPrefix(label, labelSegPrefix):
		return "same-segment"
	}
	return ""
}
