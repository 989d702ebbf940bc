package policy

import (
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// GuardChain drops overlay traffic that is about to leave in plaintext.
//
// Packets to another host's slice reach the tunnel only through meshd's
// rules and routes. When someone deletes those (a hand-run `ip rule
// flush`, networkd reapplying its policy), a host with a default route
// sends them out of the underlay unencrypted until meshd puts them back
// (Cilium #21856 is that failure). This chain makes the window closed
// rather than short: whatever is addressed into a segment, outside this
// host's own slices, and leaves through any interface but the tunnel, is
// dropped and counted. It hooks postrouting, which sees locally sent and
// forwarded packets alike, after the routing decision that chose the
// interface.
const GuardChain = "guard"

// LabelNoPlaintext counts what the guard dropped.
const LabelNoPlaintext = "no-plaintext"

func guardChain(t *nftables.Table) *nftables.Chain {
	return baseChain(t, GuardChain, nftables.ChainHookPostrouting, nftables.ChainPriorityFilter)
}

// addGuard renders one rule per segment:
//
//	meta nfproto ipv4 ip daddr CIDR ip daddr != LOCAL ... oifname != IFACE counter drop
func (p *Plan) addGuard(c *nftables.Chain, rs *Ruleset, iface string) {
	for _, seg := range rs.Segments {
		if !seg.CIDR.IsValid() {
			continue
		}
		nfproto := byte(unix.NFPROTO_IPV4)
		if seg.CIDR.Addr().Is6() {
			nfproto = unix.NFPROTO_IPV6
		}
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		}
		exprs = append(exprs, addrExprs(seg.CIDR, false)...)
		for _, own := range rs.Local {
			if own.Addr().Is4() == seg.CIDR.Addr().Is4() && seg.CIDR.Overlaps(own) {
				exprs = append(exprs, addrExprsOp(own, false, expr.CmpOpNeq)...)
			}
		}
		exprs = append(exprs,
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			ifNameCmpOp(iface, expr.CmpOpNeq),
			&expr.Counter{},
			verdict(Drop))
		p.add(c, LabelNoPlaintext, exprs...)
	}
}

// addrExprsOp is addrExprs with another comparison, to match addresses
// outside a prefix.
func addrExprsOp(pfx netip.Prefix, source bool, op expr.CmpOp) []expr.Any {
	exprs := addrExprs(pfx, source)
	if n := len(exprs); n > 0 {
		last := *exprs[n-1].(*expr.Cmp)
		last.Op = op
		exprs[n-1] = &last
	}
	return exprs
}

func ifNameCmpOp(iface string, op expr.CmpOp) *expr.Cmp {
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, iface)
	return &expr.Cmp{Op: op, Register: 1, Data: name}
}
