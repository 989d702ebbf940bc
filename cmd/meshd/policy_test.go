package main

import (
	"strings"
	"testing"
)

func TestPolicyExplainRangesAnyAndSegments(t *testing.T) {
	cfg := writeTestConfig(t, `
[[allow]]
from = "blue"
to = "green"
ports = ["tcp/8080", "icmp"]

[[allow]]
from = "10.42.0.0/24"
to = "10.43.0.0/24"
ports = ["tcp/9000"]
`)
	deny := "deny (default: different segments blue -> green)"
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--from", "10.42.1.10", "--to", "10.43.2.10", "--port", "tcp/8080"}, 0,
			"allow (rule allow[0]: blue -> green tcp/8080)\n"},
		{[]string{"--from", "10.42.1.10", "--to", "10.43.2.10", "--port", "tcp/8080-9000"}, 0,
			"tcp/8080: allow (rule allow[0]: blue -> green tcp/8080)\ntcp/8081-9000: " + deny + "\n"},
		{[]string{"--from", "10.42.1.10", "--to", "10.43.2.10"}, 0,
			"icmp: allow (rule allow[0]: blue -> green icmp)\ntcp/1-8079: " + deny + "\ntcp/8080: allow (rule allow[0]: blue -> green tcp/8080)\n" +
				"tcp/8081-65535: " + deny + "\nudp: " + deny + "\nother protocols: " + deny + "\n"},
		{[]string{"--from", "blue", "--to", "green", "--port", "udp"}, 0, deny + "\n"},
		{[]string{"--from", "blue", "--to", "10.43.2.0/24", "--port", "tcp/8079-8080"}, 0,
			"tcp/8079: " + deny + "\ntcp/8080: allow (rule allow[0]: blue -> green tcp/8080)\n"},
		{[]string{"--from", "10.42.0.0/23", "--to", "green", "--port", "tcp/9000"}, 0,
			"from 10.42.0.0/24 to 10.43.0.0/24: allow (rule allow[1]: 10.42.0.0/24 -> 10.43.0.0/24 tcp/9000)\n" +
				"from 10.42.0.0/24 to 10.43.1.0-10.43.255.255: " + deny + "\n" +
				"from 10.42.1.0/24 to green: " + deny + "\n"},
		{[]string{"--from", "green", "--to", "blue"}, 0, "deny (default: different segments green -> blue)\n"},
		{[]string{"--from", "blu", "--to", "green"}, 2, `--from "blu" is neither an address nor a CIDR, and the config defines no such segment; use one of: blue, green`},
	} {
		out, code := execute(t, append([]string{"policy", "explain", "--config", cfg}, tc.args...)...)
		if code != tc.code || (tc.code == 0 && out != tc.want) || !strings.Contains(out, tc.want) {
			t.Errorf("policy explain %s: exit %d\n%s\nwant exit %d\n%s", strings.Join(tc.args, " "), code, out, tc.code, tc.want)
		}
	}
}
