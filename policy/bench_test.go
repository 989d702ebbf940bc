package policy

import (
	"fmt"
	"net/netip"
	"testing"
)

// benchPolicy is ten segments and 100 rules mixing names, CIDRs and ports,
// a large but plausible config.
func benchPolicy() ([]Segment, []Rule) {
	segs := make([]Segment, 10)
	for i := range segs {
		segs[i] = Segment{Name: fmt.Sprintf("seg%d", i), CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(40 + i), 0, 0}), 16)}
	}
	rules := make([]Rule, 100)
	for i := range rules {
		r := Rule{From: segs[i%10].Name, To: segs[(i+1)%10].Name, Ports: []string{fmt.Sprintf("tcp/%d", 8000+i), "udp/53", "tcp/9000-9100"}}
		if i%3 == 0 {
			r.From = fmt.Sprintf("10.%d.%d.0/24", 40+i%10, i)
		}
		rules[i] = r
	}
	return segs, rules
}

func BenchmarkCompile100Rules(b *testing.B) {
	segs, rules := benchPolicy()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compile(segs, rules); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRender100Rules(b *testing.B) {
	rs, err := Compile(benchPolicy())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Render(rs, "mesh0"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExplain asks about a packet no rule allows, the worst case: it
// walks every entry down to the default deny.
func BenchmarkExplain(b *testing.B) {
	rs, err := Compile(benchPolicy())
	if err != nil {
		b.Fatal(err)
	}
	src, dst := netip.MustParseAddr("10.40.7.7"), netip.MustParseAddr("10.45.1.1")
	b.ReportAllocs()
	for b.Loop() {
		if v := rs.Explain(src, dst, "tcp", 22); v.Allowed {
			b.Fatal(v)
		}
	}
}
