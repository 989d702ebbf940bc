package policy

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// packet is what the policy chain's expressions can look at.
type packet struct {
	src, dst netip.Addr
	l4proto  byte
	dport    uint16
}

// evalChain is a tiny interpreter for the expressions Render emits, run
// on a new connection's first packet. Comparing it with Explain proves
// the preview and the generated rules agree, without root.
func evalChain(t *testing.T, rules []*nftables.Rule, p packet) (accepted bool, label string) {
	t.Helper()
	for _, r := range rules {
		if v, ok := evalRule(t, r.Exprs, p); ok {
			return v == expr.VerdictAccept, labelOf(r.UserData)
		}
	}
	return true, "" // falls back to the base chain's accept policy
}

func evalRule(t *testing.T, exprs []expr.Any, p packet) (expr.VerdictKind, bool) {
	var reg []byte
	for _, e := range exprs {
		switch x := e.(type) {
		case *expr.Meta:
			reg = p.meta(t, x.Key)
		case *expr.Ct:
			reg = binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW)
		case *expr.Payload:
			reg = p.payload(t, x)
		case *expr.Bitwise:
			reg = evalBitwise(reg, x)
		case *expr.Cmp:
			if !cmpHolds(x.Op, bytes.Compare(reg, x.Data)) {
				return 0, false
			}
		case *expr.Counter:
		case *expr.Verdict:
			return x.Kind, true
		default:
			t.Fatalf("interpreter does not know %T", e)
		}
	}
	return 0, false
}

func (p packet) meta(t *testing.T, k expr.MetaKey) []byte {
	switch k {
	case expr.MetaKeyNFPROTO:
		if p.src.Is4() {
			return []byte{unix.NFPROTO_IPV4}
		}
		return []byte{unix.NFPROTO_IPV6}
	case expr.MetaKeyL4PROTO:
		return []byte{p.l4proto}
	}
	t.Fatalf("interpreter does not know meta key %d", k)
	return nil
}

func (p packet) payload(t *testing.T, x *expr.Payload) []byte {
	var hdr []byte
	switch x.Base {
	case expr.PayloadBaseNetworkHeader:
		if p.src.Is4() {
			hdr = make([]byte, 20)
			copy(hdr[12:], p.src.AsSlice())
			copy(hdr[16:], p.dst.AsSlice())
		} else {
			hdr = make([]byte, 40)
			copy(hdr[8:], p.src.AsSlice())
			copy(hdr[24:], p.dst.AsSlice())
		}
	case expr.PayloadBaseTransportHeader:
		hdr = append([]byte{0x30, 0x39}, binaryutil.BigEndian.PutUint16(p.dport)...)
	default:
		t.Fatalf("interpreter does not know payload base %d", x.Base)
	}
	return hdr[x.Offset : x.Offset+x.Len]
}

// cmpHolds mirrors nft_cmp, which compares register and data with memcmp.
func cmpHolds(op expr.CmpOp, c int) bool {
	switch op {
	case expr.CmpOpEq:
		return c == 0
	case expr.CmpOpNeq:
		return c != 0
	case expr.CmpOpLt:
		return c < 0
	case expr.CmpOpLte:
		return c <= 0
	case expr.CmpOpGt:
		return c > 0
	case expr.CmpOpGte:
		return c >= 0
	}
	return false
}

func TestExplainMatchesRender(t *testing.T) {
	rs, err := Compile(testSegs, []Rule{
		{From: "blue", To: "green", Ports: []string{"tcp/8080", "udp/53-60", "tcp/9000-9100"}},
		{From: "10.43.1.0/24", To: "10.42.7.7/32", Ports: []string{"icmp"}},
		{From: "blue6", To: "green6", Ports: []string{"icmp", "tcp"}},
		{From: "green6", To: "fd42:0:0:5::/64"},
		{From: "green", To: "blue", Ports: []string{"any", "udp/1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Render(rs, "mesh0")
	if err != nil {
		t.Fatal(err)
	}
	var chain []*nftables.Rule
	for _, r := range plan.Rules {
		if r.Chain.Name == PolicyChain {
			chain = append(chain, r)
		}
	}
	addrs := []string{"10.42.0.1", "10.42.7.7", "10.42.7.8", "10.43.1.9", "10.43.2.9", "10.43.255.255", "192.0.2.1",
		"fd42::1", "fd42:0:0:5::1", "fd43::1", "fd43::7", "fd43:0:0:1::1", "2001:db8::1"}
	protos := map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "icmp": 0, "gre": unix.IPPROTO_GRE}
	ports := []uint16{0, 1, 52, 53, 60, 61, 8079, 8080, 8081, 8999, 9000, 9100, 9101, 65535}
	var checked int
	for _, s := range addrs {
		for _, d := range addrs {
			src, dst := netip.MustParseAddr(s), netip.MustParseAddr(d)
			if src.Is4() != dst.Is4() {
				continue
			}
			for proto, l4 := range protos {
				if proto == "icmp" {
					l4 = unix.IPPROTO_ICMP
					if src.Is6() {
						l4 = unix.IPPROTO_ICMPV6
					}
				}
				for _, port := range ports {
					v := rs.Explain(src, dst, proto, port)
					ok, label := evalChain(t, chain, packet{src, dst, l4, port})
					if v.Allowed != ok || v.Label != label {
						t.Errorf("%s -> %s %s/%d: Explain says %v (%s), rules say %v (%s)", src, dst, proto, port, v.Allowed, v.Label, ok, label)
					}
					checked++
				}
			}
		}
	}
	if testing.Verbose() {
		fmt.Printf("compared %d packets\n", checked)
	}
}

// evalBitwise is nftables' bitwise expression: (reg & mask) ^ xor.
func evalBitwise(reg []byte, x *expr.Bitwise) []byte {
	out := make([]byte, x.Len)
	for i := range out {
		out[i] = reg[i]&x.Mask[i] ^ x.Xor[i]
	}
	return out
}
