package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/meshd/meshd/lab"
)

// pinger sends ICMP echo requests from inside a namespace without running
// a process per probe: its raw socket is opened inside the namespace and
// stays bound to it. One pinger probes one target, one probe at a time;
// it is reused across retries and closed when no longer needed.
type pinger struct {
	ns      string
	to      netip.Addr
	conn    *icmp.PacketConn
	proto   int // IANA protocol number for icmp.ParseMessage: 1 or 58
	req     icmp.Type
	rep     icmp.Type
	reqCode byte // req on the wire
	id      int
	seq     int
	buf     []byte
}

// pingPayload is ping(8)'s default payload size.
const pingPayload = 56

// newPinger opens a raw ICMP (or ICMPv6) socket in namespace ns for
// probing to, sending from the local address from if it is valid (like
// ping -I ADDR), else from whatever address the route picks.
func newPinger(ns string, from, to netip.Addr) (*pinger, error) {
	to = to.Unmap()
	p := &pinger{ns: ns, to: to, id: rand.IntN(1 << 16), seq: rand.IntN(1 << 16), buf: make([]byte, 1500)}
	network, laddr := "ip4:icmp", "0.0.0.0"
	p.proto, p.req, p.rep, p.reqCode = 1, ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply, byte(ipv4.ICMPTypeEcho)
	if to.Is6() {
		network, laddr = "ip6:ipv6-icmp", "::"
		p.proto, p.req, p.rep, p.reqCode = 58, ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, byte(ipv6.ICMPTypeEchoRequest)
	}
	if from.IsValid() {
		laddr = from.Unmap().String()
	}
	err := lab.InNetns(ns, func() error {
		c, err := icmp.ListenPacket(network, laddr)
		if err != nil {
			return err
		}
		p.conn = c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ICMP socket in %s: %w", ns, err)
	}
	// A raw socket gets a copy of every ICMP packet the namespace
	// receives; let the kernel drop all but echo replies and the errors
	// that can answer a request. Only an optimisation: what passes is
	// matched by source, ID and sequence anyway.
	if to.Is4() {
		var f ipv4.ICMPFilter
		f.SetAll(true)
		for _, t := range []ipv4.ICMPType{ipv4.ICMPTypeEchoReply, ipv4.ICMPTypeDestinationUnreachable, ipv4.ICMPTypeTimeExceeded} {
			f.Accept(t)
		}
		_ = p.conn.IPv4PacketConn().SetICMPFilter(&f)
	} else {
		var f ipv6.ICMPFilter
		f.SetAll(true)
		for _, t := range []ipv6.ICMPType{ipv6.ICMPTypeEchoReply, ipv6.ICMPTypeDestinationUnreachable, ipv6.ICMPTypeTimeExceeded} {
			f.Accept(t)
		}
		_ = p.conn.IPv6PacketConn().SetICMPFilter(&f)
	}
	return p, nil
}

// ping sends one echo request and waits up to wait for its reply, like
// "ping -c 1 -W wait": a reply to an earlier request that arrives late
// does not count, and an ICMP error about this request (destination
// unreachable, time exceeded) ends the wait at once with an error, as it
// ends ping(8).
func (p *pinger) ping(ctx context.Context, wait time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.seq = (p.seq + 1) & 0xffff
	data := make([]byte, pingPayload)
	for i := range data {
		data[i] = byte(i)
	}
	msg := icmp.Message{Type: p.req, Body: &icmp.Echo{ID: p.id, Seq: p.seq, Data: data}}
	b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
	if err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := p.conn.SetReadDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = p.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: p.to.AsSlice(), Zone: p.to.Zone()}); err != nil {
		return fmt.Errorf("ping %s from %s: %w", p.to, p.ns, err)
	}
	for {
		n, from, err := p.conn.ReadFrom(p.buf)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("ping %s from %s: no reply within %s", p.to, p.ns, wait)
			}
			return fmt.Errorf("ping %s from %s: %w", p.to, p.ns, err)
		}
		switch reply, icmpErr := p.match(p.buf[:n], from); {
		case reply:
			return nil
		case icmpErr != "":
			return fmt.Errorf("ping %s from %s: %s", p.to, p.ns, icmpErr)
		}
	}
}

// match tells whether ICMP message b, received from from, answers the
// request in flight: reply if it is the echo reply from the target, or a
// description in icmpErr if it is an ICMP error (from anywhere on the
// path) quoting this request. A raw socket also sees other probes'
// traffic in the namespace, which matches neither.
func (p *pinger) match(b []byte, from net.Addr) (reply bool, icmpErr string) {
	ia, ok := from.(*net.IPAddr)
	if !ok {
		return false, ""
	}
	src, ok := netip.AddrFromSlice(ia.IP)
	if !ok {
		return false, ""
	}
	src = src.Unmap()
	m, err := icmp.ParseMessage(p.proto, b)
	if err != nil {
		return false, ""
	}
	var quoted []byte
	switch body := m.Body.(type) {
	case *icmp.Echo:
		return m.Type == p.rep && src == p.to.WithZone("") && body.ID == p.id && body.Seq == p.seq, ""
	case *icmp.DstUnreach:
		quoted = body.Data
	case *icmp.TimeExceeded:
		quoted = body.Data
	default:
		return false, ""
	}
	if p.quotesRequest(quoted) {
		return false, fmt.Sprintf("%v from %s", m.Type, src)
	}
	return false, ""
}

// quotesRequest reports whether the original datagram quoted by an ICMP
// error is this pinger's request in flight: an IP header (without IPv6
// extension headers; echo requests carry none) followed by the echo
// request's first 8 bytes.
func (p *pinger) quotesRequest(d []byte) bool {
	var hdr int
	if p.proto == 1 {
		if len(d) < 20 || d[0]>>4 != 4 {
			return false
		}
		hdr = int(d[0]&0x0f) * 4
	} else {
		if len(d) < 40 || d[0]>>4 != 6 || d[6] != 58 { // next header ICMPv6
			return false
		}
		hdr = 40
	}
	if len(d) < hdr+8 {
		return false
	}
	e := d[hdr:]
	return e[0] == p.reqCode && int(e[4])<<8|int(e[5]) == p.id && int(e[6])<<8|int(e[7]) == p.seq
}

func (p *pinger) Close() error { return p.conn.Close() }

// pingers holds one pinger per probe, opened before the measured phase
// so opening them costs nothing inside it.
type pingers []*pinger

// openPingers opens a pinger for each (namespace, target) pair; on error
// the ones already opened are closed.
func openPingers(from []string, to []netip.Addr) (pingers, error) {
	ps := make(pingers, 0, len(from))
	for i := range from {
		p, err := newPinger(from[i], netip.Addr{}, to[i])
		if err != nil {
			ps.Close()
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// Close closes every pinger; closing twice is harmless.
func (ps pingers) Close() {
	for _, p := range ps {
		_ = p.Close()
	}
}

// answered is the condition that every pinger's target answers, one
// request with a 0.5 s wait per try.
func (ps pingers) answered() condition {
	return condition{len(ps), func(ctx context.Context, i int) bool { return ps[i].ping(ctx, 500*time.Millisecond) == nil }}
}
