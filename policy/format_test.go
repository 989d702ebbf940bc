package policy

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// String lists the plan one object per line in a compact form modelled on
// `nft --debug=netlink`, with raw bytes in hex: golden tests compare it so
// any change to the generated expressions shows up in review.
func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s\n", familyString(p.Table.Family), p.Table.Name)
	for _, c := range p.Chains {
		b.WriteString(FormatChain(c) + "\n")
	}
	for _, r := range p.Rules {
		b.WriteString(FormatRule(r) + "\n")
	}
	return b.String()
}

func familyString(f nftables.TableFamily) string {
	if f == nftables.TableFamilyINet {
		return "inet"
	}
	return fmt.Sprintf("family(%d)", f)
}

// FormatChain renders a chain as "chain NAME" plus its hook for base chains.
func FormatChain(c *nftables.Chain) string {
	if c.Hooknum == nil {
		return "chain " + c.Name
	}
	prio, policy := "?", "?"
	if c.Priority != nil {
		prio = fmt.Sprint(int32(*c.Priority))
	}
	if c.Policy != nil {
		policy = map[nftables.ChainPolicy]string{nftables.ChainPolicyAccept: "accept", nftables.ChainPolicyDrop: "drop"}[*c.Policy]
	}
	return fmt.Sprintf("chain %s {type %s hook %s priority %s policy %s}",
		c.Name, c.Type, hookName(*c.Hooknum), prio, policy)
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookOutput:
		return "output"
	case *nftables.ChainHookPostrouting:
		return "postrouting"
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	}
	return fmt.Sprint(uint32(h))
}

// FormatRule renders "CHAIN LABEL: expr; expr; ...". Counter values are
// left out so a rule read back from the kernel formats like the rendered
// one.
func FormatRule(r *nftables.Rule) string {
	parts := make([]string, len(r.Exprs))
	for i, e := range r.Exprs {
		parts[i] = FormatExpr(e)
	}
	chain := "?"
	if r.Chain != nil {
		chain = r.Chain.Name
	}
	return fmt.Sprintf("%s %s: %s", chain, labelOf(r.UserData), strings.Join(parts, "; "))
}

// FormatExpr renders the expression kinds Render emits; others fall back
// to Go syntax so nothing is hidden.
func FormatExpr(e expr.Any) string {
	switch x := e.(type) {
	case *expr.Meta:
		return fmt.Sprintf("meta load %s => reg %d", metaKeyName(x.Key), x.Register)
	case *expr.Ct:
		return fmt.Sprintf("ct load %s => reg %d", ctKeyName(x.Key), x.Register)
	case *expr.Cmp:
		return fmt.Sprintf("cmp %s reg %d 0x%s", cmpOpName(x.Op), x.Register, hex.EncodeToString(x.Data))
	case *expr.Payload:
		return fmt.Sprintf("payload load %db @ %s + %d => reg %d", x.Len, payloadBaseName(x.Base), x.Offset, x.DestRegister)
	case *expr.Bitwise:
		return fmt.Sprintf("bitwise reg %d = (reg %d & 0x%s) ^ 0x%s",
			x.DestRegister, x.SourceRegister, hex.EncodeToString(x.Mask), hex.EncodeToString(x.Xor))
	case *expr.Rt:
		return fmt.Sprintf("rt load %s => reg %d", rtKeyName(x.Key), x.Register)
	case *expr.Byteorder:
		return fmt.Sprintf("byteorder reg %d = %s(reg %d, %d, %d)",
			x.DestRegister, byteorderOpName(x.Op), x.SourceRegister, x.Size, x.Len)
	case *expr.Exthdr:
		if x.SourceRegister != 0 {
			return fmt.Sprintf("exthdr write %s reg %d => %db @ %d + %d",
				exthdrOpName(x.Op), x.SourceRegister, x.Len, x.Type, x.Offset)
		}
		return fmt.Sprintf("exthdr load %s %db @ %d + %d => reg %d",
			exthdrOpName(x.Op), x.Len, x.Type, x.Offset, x.DestRegister)
	case *expr.Fib:
		return fmt.Sprintf("fib %s %s => reg %d", fibFlagsName(x), fibResultName(x), x.Register)
	case *expr.Notrack:
		return "notrack"
	case *expr.Counter:
		return "counter"
	case *expr.Verdict:
		return verdictName(x)
	}
	return fmt.Sprintf("%#v", e)
}

// fibFlagsName lists the lookup's inputs the way nft joins them.
func fibFlagsName(x *expr.Fib) string {
	var in []string
	for _, f := range []struct {
		on   bool
		name string
	}{{x.FlagSADDR, "saddr"}, {x.FlagDADDR, "daddr"}, {x.FlagMARK, "mark"}, {x.FlagIIF, "iif"}, {x.FlagOIF, "oif"}} {
		if f.on {
			in = append(in, f.name)
		}
	}
	return strings.Join(in, " . ")
}

func fibResultName(x *expr.Fib) string {
	switch {
	case x.ResultOIF:
		return "oif"
	case x.ResultOIFNAME:
		return "oifname"
	case x.ResultADDRTYPE:
		return "type"
	}
	return "result(?)"
}

func metaKeyName(k expr.MetaKey) string {
	switch k {
	case expr.MetaKeyIIFNAME:
		return "iifname"
	case expr.MetaKeyOIFNAME:
		return "oifname"
	case expr.MetaKeyNFPROTO:
		return "nfproto"
	case expr.MetaKeyL4PROTO:
		return "l4proto"
	}
	return fmt.Sprintf("key(%d)", k)
}

func ctKeyName(k expr.CtKey) string {
	if k == expr.CtKeySTATE {
		return "state"
	}
	return fmt.Sprintf("key(%d)", k)
}

func rtKeyName(k expr.RtKey) string {
	if k == expr.RtTCPMSS {
		return "tcpmss"
	}
	return fmt.Sprintf("key(%d)", k)
}

func byteorderOpName(op expr.ByteorderOp) string {
	switch op {
	case expr.ByteorderHton:
		return "hton"
	case expr.ByteorderNtoh:
		return "ntoh"
	}
	return fmt.Sprintf("op(%d)", op)
}

func exthdrOpName(op expr.ExthdrOp) string {
	switch op {
	case expr.ExthdrOpTcpopt:
		return "tcpopt"
	case expr.ExthdrOpIpv6:
		return "ipv6"
	}
	return fmt.Sprintf("op(%d)", op)
}

func cmpOpName(op expr.CmpOp) string {
	switch op {
	case expr.CmpOpEq:
		return "eq"
	case expr.CmpOpNeq:
		return "neq"
	case expr.CmpOpLt:
		return "lt"
	case expr.CmpOpLte:
		return "lte"
	case expr.CmpOpGt:
		return "gt"
	case expr.CmpOpGte:
		return "gte"
	}
	return fmt.Sprintf("op(%d)", op)
}

func payloadBaseName(b expr.PayloadBase) string {
	switch b {
	case expr.PayloadBaseNetworkHeader:
		return "network header"
	case expr.PayloadBaseTransportHeader:
		return "transport header"
	}
	return fmt.Sprintf("base(%d)", b)
}
