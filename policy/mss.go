package policy

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// MSSChain is the base chain that clamps the TCP MSS of flows forwarded
// into the tunnel.
//
// Pods usually sit on 1500-byte links whatever the tunnel MTU, so their
// SYNs advertise an MSS the tunnel cannot carry. Without the clamp every
// new flow depends on PMTU discovery (a burst of retransmits each time)
// and turns into a black hole wherever ICMP frag-needed is filtered.
// Rewriting the MSS in the handshake makes both ends size their segments
// for the tunnel from the first byte.
const MSSChain = "mss"

// LabelMSSClamp labels the clamp rule; Counters reports it with
// ActionClamp, so operators see how many handshakes it rewrote.
const LabelMSSClamp = "mss-clamp"

// ActionClamp is the Counter.Action of the MSS clamp, which has no
// verdict: the packet continues to the policy.
const ActionClamp = "clamp"

// TCP flag bits in the 14th byte of the TCP header.
const (
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
)

// tcpOptMSS is the maxseg option kind; its value is the 2 bytes after
// the kind and length bytes.
const tcpOptMSS = 2

// mssChain hooks forward only: locally originated connections already
// take their MSS from the route MTU. Priority mangle runs it before the
// filter chains, where nft and iptables users expect packet rewriting.
func mssChain(t *nftables.Table) *nftables.Chain {
	return baseChain(t, MSSChain, nftables.ChainHookForward, nftables.ChainPriorityMangle)
}

// mssClampExprs is nft's
//
//	oifname IFACE tcp flags & (syn | rst) == syn counter tcp option maxseg size set rt mtu
//
// expression for expression as nft 1.0.6 generates it. Matching on the
// output interface covers both handshake directions: SYNs of flows from
// local pods and SYN-ACKs answering flows from beyond the tunnel both
// leave through it. The kernel only ever lowers the option (a larger MSS
// is left alone), so a peer that already asks for less keeps its value,
// and a SYN without the option is not touched.
func mssClampExprs(iface string) []expr.Any {
	exprs := ifNameExprs(expr.MetaKeyOIFNAME, iface)
	return append(exprs,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1,
			Mask: []byte{tcpFlagSYN | tcpFlagRST}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpFlagSYN}},
		&expr.Counter{},
		// rt tcpmss is the smaller of the forward and reverse route MTUs
		// minus the IP and TCP headers of the packet's family.
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		// The kernel loads it in host byte order; written as is, a little
		// endian host would set an absurdly large MSS, which the kernel
		// then ignores as an increase, and the clamp would silently do
		// nothing.
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Op: expr.ExthdrOpTcpopt, Type: tcpOptMSS, Offset: 2, Len: 2},
	)
}

// clampsMSS recognises the clamp's write when reading rules back; the
// library cannot decode rt and byteorder, so the write is what is left.
func clampsMSS(x *expr.Exthdr) bool {
	return x.SourceRegister != 0 && x.Op == expr.ExthdrOpTcpopt && x.Type == tcpOptMSS
}
