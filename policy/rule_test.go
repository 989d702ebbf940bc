package policy

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

var testSegs = []Segment{
	{Name: "blue", CIDR: netip.MustParsePrefix("10.42.0.0/16")},
	{Name: "green", CIDR: netip.MustParsePrefix("10.43.0.0/16")},
	{Name: "blue6", CIDR: netip.MustParsePrefix("fd42::/48")},
	{Name: "green6", CIDR: netip.MustParsePrefix("fd43::/48")},
}

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, x := range s {
		out[i] = netip.MustParsePrefix(x)
	}
	return out
}

func TestParsePort(t *testing.T) {
	ok := []struct {
		in   string
		want PortSpec
		str  string
	}{
		{"tcp/8080", PortSpec{ProtoTCP, 8080, 8080}, "tcp/8080"},
		{"udp/53", PortSpec{ProtoUDP, 53, 53}, "udp/53"},
		{" TCP/8000-8100 ", PortSpec{ProtoTCP, 8000, 8100}, "tcp/8000-8100"},
		{"tcp/80-80", PortSpec{ProtoTCP, 80, 80}, "tcp/80"},
		{"tcp/1-65535", PortSpec{ProtoTCP, 1, 65535}, "tcp/1-65535"},
		{"tcp", PortSpec{ProtoTCP, 0, 65535}, "tcp"},
		{"udp", PortSpec{ProtoUDP, 0, 65535}, "udp"},
		{"icmp", PortSpec{Proto: ProtoICMP}, "icmp"},
		{"ICMP", PortSpec{Proto: ProtoICMP}, "icmp"},
		{"any", PortSpec{Proto: ProtoAny}, "any"},
	}
	for _, tc := range ok {
		got, err := ParsePort(tc.in)
		if err != nil {
			t.Errorf("ParsePort(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want || got.String() != tc.str {
			t.Errorf("ParsePort(%q) = %+v (%s), want %+v (%s)", tc.in, got, got, tc.want, tc.str)
		}
	}

	bad := []struct{ in, problem, fix string }{
		{"", "has no protocol", "tcp/PORT"},
		{"/80", "has no protocol", "tcp/PORT"},
		{"8080", "has no protocol", `did you mean "tcp/8080" or "udp/8080"?`},
		{"sctp/80", `unknown protocol "sctp"`, "tcp/PORT"},
		{"tcp/", `"" is not a port number`, ""},
		{"tcp/http", `"http" is not a port number`, ""},
		{"tcp/-80", `"" is not a port number`, ""},
		{"tcp/+80", `"+80" is not a port number`, ""},
		{"tcp/0", "port 0 is out of range", "between 1 and 65535"},
		{"udp/65536", "port 65536 is out of range", ""},
		{"tcp/80-", `"" is not a port number`, ""},
		{"tcp/1-2-3", `"2-3" is not a port number`, ""},
		{"tcp/8100-8000", "inverted range", `did you mean "tcp/8000-8100"?`},
		{"icmp/8", "icmp has no ports", `write just "icmp"`},
		{"any/80", "any has no ports", ""},
		{"icmpv6", "not a protocol meshd knows", `write "icmp"`},
	}
	for _, tc := range bad {
		_, err := ParsePort(tc.in)
		var re *RuleError
		if !errors.As(err, &re) {
			t.Errorf("ParsePort(%q) = %v, want a *RuleError", tc.in, err)
			continue
		}
		if !strings.Contains(re.Problem, tc.problem) || !strings.Contains(re.Fix, tc.fix) {
			t.Errorf("ParsePort(%q): problem %q fix %q; want %q / %q", tc.in, re.Problem, re.Fix, tc.problem, tc.fix)
		}
		if re.Key() != "" {
			t.Errorf("ParsePort(%q): key %q, want none", tc.in, re.Key())
		}
	}
}

func TestParseRule(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
		want Entry
	}{
		{"segments", Rule{From: "blue", To: "green", Ports: []string{"tcp/8080", "udp/53", "icmp"}}, Entry{
			From: "blue", To: "green", Src: pfx("10.42.0.0/16"), Dst: pfx("10.43.0.0/16"), Action: Accept,
			Ports: []PortSpec{{ProtoTCP, 8080, 8080}, {ProtoUDP, 53, 53}, {Proto: ProtoICMP}},
		}},
		{"all traffic", Rule{From: "blue", To: "green"}, Entry{
			From: "blue", To: "green", Src: pfx("10.42.0.0/16"), Dst: pfx("10.43.0.0/16"), Action: Accept,
		}},
		{"empty ports is all traffic", Rule{From: "blue", To: "green", Ports: []string{}}, Entry{
			From: "blue", To: "green", Src: pfx("10.42.0.0/16"), Dst: pfx("10.43.0.0/16"), Action: Accept,
		}},
		{"cidrs", Rule{From: " 10.42.1.0/24", To: "10.43.7.9/32"}, Entry{
			From: "10.42.1.0/24", To: "10.43.7.9/32", Src: pfx("10.42.1.0/24"), Dst: pfx("10.43.7.9/32"), Action: Accept,
		}},
		{"whole segment as cidr", Rule{From: "10.42.0.0/16", To: "green"}, Entry{
			From: "10.42.0.0/16", To: "green", Src: pfx("10.42.0.0/16"), Dst: pfx("10.43.0.0/16"), Action: Accept,
		}},
		{"ipv6", Rule{From: "blue6", To: "fd43:0:0:1::/64", Ports: []string{"icmp"}}, Entry{
			From: "blue6", To: "fd43:0:0:1::/64", Src: pfx("fd42::/48"), Dst: pfx("fd43:0:0:1::/64"), Action: Accept,
			Ports: []PortSpec{{Proto: ProtoICMP}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRule(tc.rule, testSegs)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestCompileErrors covers every way a rule can be wrong; the key is what
// config reports, so it must point at the exact field.
func TestCompileErrors(t *testing.T) {
	ok := Rule{From: "blue", To: "green"}
	tests := []struct {
		name    string
		rule    Rule
		key     string
		problem string
		fix     string
	}{
		{"from missing", Rule{To: "green"}, "allow[1].from", "is missing", `e.g. from = "blue"`},
		{"to missing", Rule{From: "blue", To: "  "}, "allow[1].to", "is missing", `e.g. to = "blue"`},
		{"unknown segment, close", Rule{From: "blu", To: "green"}, "allow[1].from", `"blu" is not a defined segment`, `did you mean "blue"?`},
		{"unknown segment, far", Rule{From: "blue", To: "purple"}, "allow[1].to", `"purple" is not a defined segment`, "blue, green, blue6, green6"},
		{"bare address", Rule{From: "10.42.1.5", To: "green"}, "allow[1].from", "is an address, not a CIDR", "write 10.42.1.5/32"},
		{"bare v6 address", Rule{From: "blue6", To: "fd43::1"}, "allow[1].to", "is an address", "write fd43::1/128"},
		{"cidr garbage", Rule{From: "10.42.0.0/33", To: "green"}, "allow[1].from", "not a valid CIDR", ""},
		{"cidr not canonical", Rule{From: "10.42.1.7/24", To: "green"}, "allow[1].from", "host bits set", "did you mean 10.42.1.0/24?"},
		{"cidr outside segments", Rule{From: "blue", To: "192.168.0.0/24"}, "allow[1].to", "not inside any segment", "green (10.43.0.0/16)"},
		{"cidr larger than segment", Rule{From: "10.42.0.0/15", To: "green"}, "allow[1].from", `larger than segment "blue"`, `from = "blue"`},
		{"cidr spanning everything", Rule{From: "blue", To: "0.0.0.0/0"}, "allow[1].to", "larger than segment", ""},
		{"mixed families", Rule{From: "blue", To: "green6"}, "allow[1].to", "different address families", "separate rules"},
		{"mixed families cidr", Rule{From: "fd42::/64", To: "10.43.0.0/24"}, "allow[1].to", "10.43.0.0/24 (IPv4) and from fd42::/64 (IPv6)", ""},
		{"bad port", Rule{From: "blue", To: "green", Ports: []string{"tcp/80", "tcp/0"}}, "allow[1].ports[1]", "out of range", ""},
		{"inverted range", Rule{From: "blue", To: "green", Ports: []string{"tcp/9-1"}}, "allow[1].ports[0]", "inverted", `"tcp/1-9"`},
		{"unknown proto", Rule{From: "blue", To: "green", Ports: []string{"udp/53", "gre"}}, "allow[1].ports[1]", "unknown protocol", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(testSegs, []Rule{ok, tc.rule})
			var re *RuleError
			if !errors.As(err, &re) {
				t.Fatalf("Compile = %v, want a *RuleError", err)
			}
			if re.Key() != tc.key || !strings.Contains(re.Problem, tc.problem) || !strings.Contains(re.Fix, tc.fix) {
				t.Errorf("got key %q problem %q fix %q\nwant key %q problem ~%q fix ~%q", re.Key(), re.Problem, re.Fix, tc.key, tc.problem, tc.fix)
			}
			if !strings.HasPrefix(err.Error(), tc.key+": ") {
				t.Errorf("Error() = %q, want it to start with the key", err)
			}
		})
	}
}

func TestParseRuleErrorHasNoIndex(t *testing.T) {
	_, err := ParseRule(Rule{From: "blue", To: "green", Ports: []string{"tcp/x"}}, testSegs)
	var re *RuleError
	if !errors.As(err, &re) || re.Index != -1 || re.Key() != "ports[0]" {
		t.Fatalf("ParseRule error = %#v", err)
	}
}

func TestCompileOrder(t *testing.T) {
	rs, err := Compile(testSegs[:2], []Rule{
		{From: "blue", To: "green", Ports: []string{"tcp/8080"}},
		{From: "green", To: "10.42.1.0/24"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Label: "allow[0]", From: "blue", To: "green", Src: pfx("10.42.0.0/16"), Dst: pfx("10.43.0.0/16"),
			Ports: []PortSpec{{ProtoTCP, 8080, 8080}}, Action: Accept},
		{Label: "allow[1]", From: "green", To: "10.42.1.0/24", Src: pfx("10.43.0.0/16"), Dst: pfx("10.42.1.0/24"), Action: Accept},
		{Label: "segment:blue", From: "blue", To: "blue", Src: pfx("10.42.0.0/16"), Dst: pfx("10.42.0.0/16"), Action: Accept},
		{Label: "segment:green", From: "green", To: "green", Src: pfx("10.43.0.0/16"), Dst: pfx("10.43.0.0/16"), Action: Accept},
		{Label: "default-deny", Action: Drop},
	}
	if !reflect.DeepEqual(rs.Entries, want) {
		t.Errorf("entries:\n got  %+v\n want %+v", rs.Entries, want)
	}
}

func TestCompileRejectsBadSegments(t *testing.T) {
	tests := map[string][]Segment{
		"overlap":       {testSegs[0], {Name: "red", CIDR: netip.MustParsePrefix("10.42.128.0/17")}},
		"duplicate":     {testSegs[0], {Name: "blue", CIDR: netip.MustParsePrefix("10.99.0.0/16")}},
		"not canonical": {{Name: "x", CIDR: netip.MustParsePrefix("10.42.1.0/16")}},
		"invalid":       {{Name: "x"}},
		"no name":       {{CIDR: netip.MustParsePrefix("10.42.0.0/16")}},
	}
	for name, segs := range tests {
		if _, err := Compile(segs, nil); err == nil {
			t.Errorf("%s: Compile accepted %v", name, segs)
		}
	}
}

func TestReason(t *testing.T) {
	for label, want := range map[string]string{
		"allow[3]": "rule", "segment:blue": "same-segment", "default-deny": "default-deny",
		"invalid": "invalid", "established": "established", "tunnel-in": "",
	} {
		if got := Reason(label); got != want {
			t.Errorf("Reason(%q) = %q, want %q", label, got, want)
		}
	}
}
