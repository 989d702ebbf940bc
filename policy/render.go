package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is meshd's own inet table; meshd creates, replaces and deletes
// it and touches nothing else in the ruleset.
const TableName = "meshd"

// PolicyChain is the regular chain holding the policy; the base chains
// only jump to it for tunnel traffic.
const PolicyChain = "policy"

// Labels of the base chains' jump rules.
const (
	labelTunnelIn  = "tunnel-in"
	labelTunnelOut = "tunnel-out"
)

// Plan is the complete content of meshd's table, in the order it must be
// sent: the policy chain precedes the base chains whose rules jump to it.
// Besides the policy it holds the MSS clamp (see MSSChain) and the
// same-segment fast path (see NotrackPrerouting), so one transaction
// installs, replaces or removes them all.
type Plan struct {
	Table  *nftables.Table
	Chains []*nftables.Chain
	Rules  []*nftables.Rule
}

// Render builds the nftables objects for rs filtering traffic through
// iface. It is pure so the generated expressions can be tested without
// root.
func Render(rs *Ruleset, iface string) (*Plan, error) {
	if rs == nil {
		return nil, errors.New("render policy: nil ruleset")
	}
	if err := checkIface(iface); err != nil {
		return nil, fmt.Errorf("render policy: %w", err)
	}
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	p := &Plan{Table: t}
	pol := p.chain(&nftables.Chain{Name: PolicyChain, Table: t})
	fwd := p.chain(baseChain(t, "forward", nftables.ChainHookForward, nftables.ChainPriorityFilter))
	in := p.chain(baseChain(t, "input", nftables.ChainHookInput, nftables.ChainPriorityFilter))
	out := p.chain(baseChain(t, "output", nftables.ChainHookOutput, nftables.ChainPriorityFilter))
	mss := p.chain(mssChain(t))
	guard := p.chain(guardChain(t))

	// A packet both entering and leaving the tunnel is transit: a gateway
	// carrying traffic between its site and others, or a transit site
	// relaying for two sites without a direct path. The source host
	// judged it leaving, the destination host judges it arriving, both on
	// the pods' addresses; the gateway must not, since the two directions
	// of a flow may cross different gateways, and its connection tracking
	// would see half a flow.
	p.add(fwd, LabelTransit, transitExprs(iface)...)
	p.add(fwd, labelTunnelIn, jumpIfName(expr.MetaKeyIIFNAME, iface)...)
	p.add(fwd, labelTunnelOut, jumpIfName(expr.MetaKeyOIFNAME, iface)...)
	p.add(in, labelTunnelIn, jumpIfName(expr.MetaKeyIIFNAME, iface)...)
	p.add(out, labelTunnelOut, jumpIfName(expr.MetaKeyOIFNAME, iface)...)
	if err := p.addPolicy(pol, rs.Entries, rs.Untracked); err != nil {
		return nil, err
	}
	p.add(mss, LabelMSSClamp, mssClampExprs(iface)...)
	p.addGuard(guard, rs, iface)
	if rs.Untracked {
		notrackPre, notrackOut := notrackChains(t)
		p.chain(notrackPre)
		p.chain(notrackOut)
		p.addNotrack(notrackPre, notrackOut, iface, rs.Entries)
	}
	return p, nil
}

// addPolicy renders the policy chain: with the fast path, the segments'
// accepts it moves to its head; the conntrack and link-local rules; then
// the entries in order.
func (p *Plan) addPolicy(pol *nftables.Chain, entries []Entry, untracked bool) error {
	var head []int
	if untracked {
		head = fastPath(entries)
	}
	for _, i := range head {
		if err := p.addEntry(pol, entries, i); err != nil {
			return err
		}
	}
	p.add(pol, LabelEstablished, ctStateExprs(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, Accept)...)
	p.add(pol, LabelInvalid, ctStateExprs(expr.CtStateBitINVALID, Drop)...)
	p.add(pol, LabelLinkLocal, linkLocalMulticastExprs()...)
	for i := range entries {
		if slices.Contains(head, i) {
			continue
		}
		if err := p.addEntry(pol, entries, i); err != nil {
			return err
		}
	}
	return nil
}

func (p *Plan) addEntry(c *nftables.Chain, entries []Entry, i int) error {
	rules, err := entryExprs(&entries[i])
	if err != nil {
		return fmt.Errorf("render policy: entry %d (%s): %w", i, entries[i].Label, err)
	}
	for _, exprs := range rules {
		p.add(c, entries[i].Label, exprs...)
	}
	return nil
}

func (p *Plan) chain(c *nftables.Chain) *nftables.Chain {
	p.Chains = append(p.Chains, c)
	return c
}

// LabelTransit counts what this host forwarded from the tunnel back into
// it: the bytes a gateway relays for other hosts and sites.
const LabelTransit = "transit"

func transitExprs(iface string) []expr.Any {
	exprs := ifNameExprs(expr.MetaKeyIIFNAME, iface)
	exprs = append(exprs, ifNameExprs(expr.MetaKeyOIFNAME, iface)...)
	return append(exprs, &expr.Counter{}, verdict(Accept))
}

func baseChain(t *nftables.Table, name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
	// Accept, not drop: meshd must not affect traffic that never touches
	// the tunnel.
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: name, Table: t, Hooknum: hook,
		Priority: prio,
		Type:     nftables.ChainTypeFilter,
		Policy:   &accept,
	}
}

func (p *Plan) add(c *nftables.Chain, label string, exprs ...expr.Any) {
	p.Rules = append(p.Rules, &nftables.Rule{
		Table: p.Table, Chain: c, Exprs: exprs,
		UserData: userdata.AppendString(nil, userdata.TypeComment, label),
	})
}

func checkIface(name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ || strings.ContainsRune(name, 0) {
		return fmt.Errorf("invalid interface name %q", name)
	}
	return nil
}

func jumpIfName(key expr.MetaKey, iface string) []expr.Any {
	return append(ifNameExprs(key, iface), &expr.Verdict{Kind: expr.VerdictJump, Chain: PolicyChain})
}

func ifNameExprs(key expr.MetaKey, iface string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, ifNameCmp(iface)}
}

// ifNameCmp compares register 1 with iface. IFNAMSIZ bytes with NUL
// padding make an exact match, as nft does; a shorter compare would be a
// prefix (wildcard) match.
func ifNameCmp(iface string) *expr.Cmp {
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, iface)
	return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name}
}

func ctStateExprs(bits uint32, a Action) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Counter{},
		verdict(a),
	}
}

// linkLocalMulticastExprs matches IPv6 link-scope multicast (ff02::/16):
// the kernel's MLD reports for groups a forwarding host joins on every
// link, sent from :: even on a tunnel without addresses. WireGuard has no
// peer for such a destination, so nothing is lost by dropping it; it
// only gets its own counter instead of inflating default-deny.
func linkLocalMulticastExprs() []expr.Any {
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
	}
	exprs = append(exprs, addrExprs(netip.MustParsePrefix("ff02::/16"), false)...)
	return append(exprs, &expr.Counter{}, verdict(Drop))
}

func verdict(a Action) *expr.Verdict {
	if a == Accept {
		return &expr.Verdict{Kind: expr.VerdictAccept}
	}
	return &expr.Verdict{Kind: expr.VerdictDrop}
}

// entryExprs expands an entry into one rule per Src × Dst × Ports
// combination; Entry.match must stay the mirror image of this.
func entryExprs(e *Entry) ([][]expr.Any, error) {
	if e.Action != Accept && e.Action != Drop {
		return nil, fmt.Errorf("unknown action %q", e.Action)
	}
	if e.Label == "" || len(e.Label) > 254 {
		return nil, fmt.Errorf("label %q must be 1 to 254 bytes", e.Label)
	}
	var rules [][]expr.Any
	for _, src := range orAny(e.Src) {
		for _, dst := range orAny(e.Dst) {
			fam, ok := family(src, dst)
			if !ok {
				continue // no packet has two families
			}
			for _, port := range orAnyPort(e.Ports) {
				exprs, err := matchExprs(fam, src, dst, port)
				if err != nil {
					return nil, err
				}
				rules = append(rules, append(exprs, &expr.Counter{}, verdict(e.Action)))
			}
		}
	}
	return rules, nil
}

func orAny(ps []netip.Prefix) []netip.Prefix {
	if len(ps) == 0 {
		return []netip.Prefix{{}}
	}
	return ps
}

func orAnyPort(ps []PortSpec) []PortSpec {
	if len(ps) == 0 {
		return []PortSpec{{Proto: ProtoAny}}
	}
	return ps
}

// family returns 4, 6, or 0 when neither prefix pins the family.
func family(src, dst netip.Prefix) (int, bool) {
	f := 0
	for _, p := range []netip.Prefix{src, dst} {
		if !p.IsValid() {
			continue
		}
		pf := 6
		if p.Addr().Is4() {
			pf = 4
		}
		if f != 0 && f != pf {
			return 0, false
		}
		f = pf
	}
	return f, true
}

func matchExprs(fam int, src, dst netip.Prefix, port PortSpec) ([]expr.Any, error) {
	var exprs []expr.Any
	if fam != 0 {
		// In an inet table the network header is only meaningful once the
		// family is known; nft adds the same dependency implicitly.
		nfproto := byte(unix.NFPROTO_IPV4)
		if fam == 6 {
			nfproto = unix.NFPROTO_IPV6
		}
		exprs = append(exprs,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}})
	}
	exprs = append(exprs, addrExprs(src, true)...)
	exprs = append(exprs, addrExprs(dst, false)...)
	pe, err := portExprs(fam, port)
	if err != nil {
		return nil, err
	}
	return append(exprs, pe...), nil
}

// addrExprs matches a prefix against the source or destination address;
// an invalid or zero-length prefix matches everything of its family. A
// prefix with host bits set matches as its canonical form, as Explain
// (netip.Prefix.Contains) has it: compared unmasked with the masked
// packet address it would never match at all.
func addrExprs(p netip.Prefix, source bool) []expr.Any {
	if !p.IsValid() || p.Bits() == 0 {
		return nil
	}
	p = p.Masked()
	offset, size := uint32(16), uint32(4) // IPv4 daddr
	if p.Addr().Is6() {
		offset, size = 24, 16
	}
	if source {
		offset -= size // saddr immediately precedes daddr in both headers
	}
	exprs := []expr.Any{&expr.Payload{
		DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size,
	}}
	if p.Bits() < p.Addr().BitLen() {
		mask := netip.PrefixFrom(allOnes(p.Addr().Is4()), p.Bits()).Masked().Addr().AsSlice()
		exprs = append(exprs, &expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size),
		})
	}
	return append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
}

func allOnes(v4 bool) netip.Addr {
	if v4 {
		return netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	var b [16]byte
	for i := range b {
		b[i] = 0xff
	}
	return netip.AddrFrom16(b)
}

// portExprs must agree exactly with PortSpec.matches.
func portExprs(fam int, p PortSpec) ([]expr.Any, error) {
	l4 := func(proto byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		}
	}
	switch p.Proto {
	case ProtoAny:
		return nil, nil
	case ProtoICMP:
		switch fam {
		case 4:
			return l4(unix.IPPROTO_ICMP), nil
		case 6:
			return l4(unix.IPPROTO_ICMPV6), nil
		}
		return nil, errors.New("icmp needs an address family: give the entry a source or destination prefix")
	case ProtoTCP, ProtoUDP:
		proto := byte(unix.IPPROTO_TCP)
		if p.Proto == ProtoUDP {
			proto = unix.IPPROTO_UDP
		}
		exprs := l4(proto)
		if p.From > p.To {
			return nil, fmt.Errorf("inverted port range %d-%d", p.From, p.To)
		}
		if p.allPorts() {
			return exprs, nil
		}
		// The destination port sits at offset 2 in both TCP and UDP.
		exprs = append(exprs, &expr.Payload{
			DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2,
		})
		if p.From == p.To {
			return append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.From)}), nil
		}
		return append(exprs,
			&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.From)},
			&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.To)}), nil
	}
	return nil, fmt.Errorf("unknown protocol %q", p.Proto)
}
