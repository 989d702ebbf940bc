package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/meshd/meshd/policy"
)

// [[allow]] keys. The rules' meaning lives in package policy; config only
// unpacks the tables and lets policy.Compile judge them, so `meshd check`
// rejects exactly what the enforcer would.
const (
	keyAllow = "allow"

	allowKeyFrom  = "from"
	allowKeyTo    = "to"
	allowKeyPorts = "ports"
)

var allowKeys = []string{allowKeyFrom, allowKeyTo, allowKeyPorts}

const allowHeaderFix = "write each rule under its own [[allow]] header (double brackets)"

// allow needs the segments: rules name them.
func (l *loader) allow(c *Config) *Error {
	tables, e := l.allowTables()
	if e != nil {
		return e
	}
	for i, t := range tables {
		r, e := parseAllow(i, t)
		if e != nil {
			return e
		}
		c.Allow = append(c.Allow, r)
	}
	if _, err := policy.Compile(policySegments(c.Segments), c.Allow); err != nil {
		return allowError(err)
	}
	return nil
}

func policySegments(segs []Segment) []policy.Segment {
	out := make([]policy.Segment, len(segs))
	for i, s := range segs {
		out[i] = policy.Segment{Name: s.Name, CIDR: s.CIDR}
	}
	return out
}

// allowTables unpacks [[allow]], which viper hands back untyped.
func (l *loader) allowTables() ([]map[string]any, *Error) {
	return l.arrayOfTables(keyAllow, allowHeaderFix)
}

func allowKey(i int, k string) string { return indexedKey(keyAllow, i, k) }

func parseAllow(i int, t map[string]any) (policy.Rule, *Error) {
	if e := checkTableKeys(t, allowKeys, "a rule", func(k string) string { return allowKey(i, k) }); e != nil {
		return policy.Rule{}, e
	}
	var r policy.Rule
	var e *Error
	if r.From, e = allowString(i, t, allowKeyFrom); e != nil {
		return policy.Rule{}, e
	}
	if r.To, e = allowString(i, t, allowKeyTo); e != nil {
		return policy.Rule{}, e
	}
	r.Ports, e = allowPorts(i, t)
	return r, e
}

// allowString leaves a missing value as "": policy reports it with a
// better fix than a type check could.
func allowString(i int, t map[string]any, k string) (string, *Error) {
	switch x := t[k].(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	default:
		return "", fail(allowKey(i, k), "must be a string, not "+describe(x),
			`quote the value: a segment name such as "blue" or a CIDR such as "10.42.1.0/24"`)
	}
}

func allowPorts(i int, t map[string]any) ([]string, *Error) {
	key := allowKey(i, allowKeyPorts)
	var raw []any
	switch x := t[allowKeyPorts].(type) {
	case nil:
		return nil, nil
	case []string:
		return x, nil
	case []any:
		raw = x
	default:
		return nil, fail(key, "must be an array of strings, not "+describe(x),
			`write it as ports = ["tcp/8080", "udp/53"], or leave it out to allow all traffic`)
	}
	out := make([]string, 0, len(raw))
	for j, item := range raw {
		s, ok := item.(string)
		if !ok {
			return nil, fail(fmt.Sprintf("%s[%d]", key, j), "must be a string, not "+describe(item),
				`quote each entry, e.g. "tcp/8080"`)
		}
		out = append(out, s)
	}
	return out, nil
}

func allowError(err error) *Error {
	var re *policy.RuleError
	if errors.As(err, &re) && re.Index >= 0 {
		key := allowKey(re.Index, re.Field)
		return &Error{Key: key, Problem: re.Problem, Fix: re.Fix, Err: err}
	}
	// Segments were validated first, so this is a disagreement between
	// config and policy: report it rather than guess a key.
	return &Error{Key: keyAllow, Problem: err.Error(), Fix: "check the [[segments]] tables", Err: err}
}

// allowKeyError explains a stray "allow.x" key: written as [allow] rather
// than [[allow]].
func allowKeyError(k string) *Error {
	if !strings.HasPrefix(k, keyAllow+".") {
		return nil
	}
	return fail(keyAllow, "must be an array of tables", allowHeaderFix)
}

// Policy compiles the allow rules against the segments. Load already
// compiled them once to validate, so this cannot fail for a loaded Config.
func (c *Config) Policy() (*policy.Ruleset, error) {
	rs, err := policy.Compile(policySegments(c.Segments), c.Allow)
	if err != nil {
		return nil, err
	}
	rs.Untracked = c.UntrackedSameSegment
	return rs, nil
}
