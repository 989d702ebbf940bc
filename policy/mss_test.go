package policy

import (
	"bytes"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// segment is what the clamp rule can look at in a forwarded packet.
type segment struct {
	oif      string
	l4proto  byte
	flags    byte
	mss      uint16 // the maxseg option's value; 0: no such option
	routeMSS uint16 // what rt tcpmss yields for the packet's route
}

// evalClamp interprets the clamp rule the way the kernel runs it and
// returns the MSS the packet leaves with and whether the counter counted
// it. The register holds bytes as the kernel stores them, so a missing
// byte order conversion shows up as a wrong result, not a wrong string.
func evalClamp(t *testing.T, exprs []expr.Any, p segment) (mss uint16, counted bool) {
	t.Helper()
	var reg []byte
	for _, e := range exprs {
		switch x := e.(type) {
		case *expr.Meta:
			switch x.Key {
			case expr.MetaKeyOIFNAME:
				reg = make([]byte, unix.IFNAMSIZ)
				copy(reg, p.oif)
			case expr.MetaKeyL4PROTO:
				reg = []byte{p.l4proto}
			default:
				t.Fatalf("interpreter does not know meta key %d", x.Key)
			}
		case *expr.Payload:
			if x.Base != expr.PayloadBaseTransportHeader || x.Offset != 13 || x.Len != 1 {
				t.Fatalf("interpreter only knows the TCP flags byte, not %s", FormatExpr(x))
			}
			reg = []byte{p.flags}
		case *expr.Bitwise:
			reg = evalBitwise(reg, x)
		case *expr.Cmp:
			if !cmpHolds(x.Op, bytes.Compare(reg, x.Data)) {
				return p.mss, counted
			}
		case *expr.Counter:
			counted = true
		case *expr.Rt:
			if x.Key != expr.RtTCPMSS {
				t.Fatalf("interpreter does not know rt key %d", x.Key)
			}
			reg = binaryutil.NativeEndian.PutUint16(p.routeMSS) // nft_reg_store16
		case *expr.Byteorder:
			if x.Op != expr.ByteorderHton || x.Size != 2 || x.Len != 2 {
				t.Fatalf("interpreter does not know %s", FormatExpr(x))
			}
			reg = binaryutil.BigEndian.PutUint16(binaryutil.NativeEndian.Uint16(reg))
		case *expr.Exthdr:
			if !clampsMSS(x) || x.Offset != 2 || x.Len != 2 {
				t.Fatalf("interpreter does not know %s", FormatExpr(x))
			}
			// nft_exthdr_tcp_set_eval: only an existing option is
			// rewritten, and only downwards.
			if want := binaryutil.BigEndian.Uint16(reg[:2]); p.mss != 0 && want < p.mss {
				p.mss = want
			}
		default:
			t.Fatalf("interpreter does not know %T", e)
		}
	}
	return p.mss, counted
}

func clampRule(t *testing.T, iface string) *nftables.Rule {
	t.Helper()
	plan, err := Render(&Ruleset{}, iface)
	if err != nil {
		t.Fatal(err)
	}
	var found *nftables.Rule
	for _, r := range plan.Rules {
		if r.Chain.Name == MSSChain {
			if found != nil || labelOf(r.UserData) != LabelMSSClamp {
				t.Fatalf("chain %s should hold exactly one rule, labelled %s:\n%s", MSSChain, LabelMSSClamp, plan)
			}
			found = r
		}
	}
	if found == nil {
		t.Fatalf("no rule in chain %s:\n%s", MSSChain, plan)
	}
	return found
}

func TestMSSClampRule(t *testing.T) {
	const (
		syn, ack, rst, fin, psh = 0x02, 0x10, 0x04, 0x01, 0x08
		tcp, udp                = unix.IPPROTO_TCP, unix.IPPROTO_UDP
	)
	rule := clampRule(t, "mesh0")
	tests := []struct {
		name    string
		p       segment
		mss     uint16
		counted bool
	}{
		{"SYN into the tunnel", segment{"mesh0", tcp, syn, 1460, 1400}, 1400, true},
		{"SYN-ACK into the tunnel", segment{"mesh0", tcp, syn | ack, 1460, 1400}, 1400, true},
		{"IPv6 route", segment{"mesh0", tcp, syn, 1440, 1380}, 1380, true},
		{"smaller MSS is not raised", segment{"mesh0", tcp, syn, 1200, 1400}, 1200, true},
		{"equal MSS stays", segment{"mesh0", tcp, syn, 1400, 1400}, 1400, true},
		{"SYN without the option", segment{"mesh0", tcp, syn, 0, 1400}, 0, true},
		{"SYN with ECN flags", segment{"mesh0", tcp, syn | 0xc0, 1460, 1400}, 1400, true},
		{"SYN+RST is not a handshake", segment{"mesh0", tcp, syn | rst, 1460, 1400}, 1460, false},
		{"RST", segment{"mesh0", tcp, rst | ack, 1460, 1400}, 1460, false},
		{"data", segment{"mesh0", tcp, psh | ack, 1460, 1400}, 1460, false},
		{"FIN", segment{"mesh0", tcp, fin | ack, 1460, 1400}, 1460, false},
		{"UDP with the SYN bit's byte set", segment{"mesh0", udp, syn, 1460, 1400}, 1460, false},
		{"other interface", segment{"eth0", tcp, syn, 1460, 1400}, 1460, false},
		{"name with the iface as prefix", segment{"mesh01", tcp, syn, 1460, 1400}, 1460, false},
		{"prefix of the iface", segment{"mesh", tcp, syn, 1460, 1400}, 1460, false},
	}
	for _, tc := range tests {
		mss, counted := evalClamp(t, rule.Exprs, tc.p)
		if mss != tc.mss || counted != tc.counted {
			t.Errorf("%s: MSS %d counted=%v, want %d counted=%v", tc.name, mss, counted, tc.mss, tc.counted)
		}
	}
}

// TestRenderMSSChain: forward only (local sockets already use the route
// MTU), before the filter chains, and never a verdict, so the clamp
// cannot change what the policy lets through.
func TestRenderMSSChain(t *testing.T) {
	plan, err := Render(&Ruleset{}, "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, c := range plan.Chains {
		if c.Name != MSSChain {
			continue
		}
		n++
		if got, want := FormatChain(c), "chain mss {type filter hook forward priority -150 policy accept}"; got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
	if n != 1 {
		t.Errorf("%d chains named %s:\n%s", n, MSSChain, plan)
	}
	for _, x := range clampRule(t, "mesh0").Exprs {
		if v, ok := x.(*expr.Verdict); ok {
			t.Errorf("the clamp rule has a verdict: %s", FormatExpr(v))
		}
	}
	if r := Reason(LabelMSSClamp); r != "mss-clamp" {
		t.Errorf("Reason(%q) = %q", LabelMSSClamp, r)
	}
}
