// Package probe sends ICMP echo requests from a chosen source address,
// which is how meshd checks that a gateway forwards: the source picks the
// overlay's routing table, the destination the tunnel peer.
package probe

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// DefaultWait bounds one echo when the caller's context has no deadline.
const DefaultWait = time.Second

// ErrNoReply is an echo that went out and got no answer in time; any
// other error means it could not be sent, which says nothing of the path.
var ErrNoReply = errors.New("no reply")

// Echo sends one echo request from src to dst and waits for its reply
// until ctx ends (at most DefaultWait without a deadline). It uses an
// unprivileged ICMP socket where net.ipv4.ping_group_range allows one,
// and a raw socket (CAP_NET_RAW) otherwise. Every call has its own socket
// and a random identifier, so concurrent probes never take each other's
// replies.
func Echo(ctx context.Context, src, dst netip.Addr) error { return echo(ctx, src, dst, true) }

func echo(ctx context.Context, src, dst netip.Addr, rawFallback bool) error {
	src, dst = src.Unmap(), dst.Unmap()
	if src.Is4() != dst.Is4() {
		return fmt.Errorf("echo %s from %s: address families differ", dst, src)
	}
	datagram, raw, proto := "udp4", "ip4:icmp", 1
	req, rep := icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply)
	if dst.Is6() {
		datagram, raw, proto = "udp6", "ip6:ipv6-icmp", 58
		req, rep = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	conn, err := icmp.ListenPacket(datagram, src.String())
	var to net.Addr = &net.UDPAddr{IP: dst.AsSlice()}
	if err != nil && rawFallback {
		conn, err = icmp.ListenPacket(raw, src.String())
		to = &net.IPAddr{IP: dst.AsSlice()}
	}
	if err != nil {
		return fmt.Errorf("echo %s from %s: %w", dst, src, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(DefaultWait)
	if d, ok := ctx.Deadline(); ok {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var nonce [4]byte
	rand.Read(nonce[:])
	id, seq := int(binary.BigEndian.Uint16(nonce[:2])), int(binary.BigEndian.Uint16(nonce[2:]))
	msg := icmp.Message{Type: req, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("meshd gateway probe")}}
	b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
	if err != nil {
		return err
	}
	if _, err := conn.WriteTo(b, to); err != nil {
		return fmt.Errorf("echo %s from %s: %w", dst, src, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("echo %s from %s: %w", dst, src, ErrNoReply)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("echo %s from %s: %w", dst, src, ErrNoReply)
			}
			return fmt.Errorf("echo %s from %s: %w", dst, src, err)
		}
		if isReply(buf[:n], from, proto, rep, dst, id, seq) {
			return nil
		}
	}
}

// isReply matches the reply to this request: a raw socket also receives
// every other ICMP message that reaches the host. A datagram socket gets
// only replies to its own identifier, which the kernel sets to the
// socket's port, so only the sequence is compared there.
func isReply(b []byte, from net.Addr, proto int, rep icmp.Type, dst netip.Addr, id, seq int) bool {
	var ip net.IP
	switch a := from.(type) {
	case *net.IPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip, id = a.IP, -1
	default:
		return false
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok || a.Unmap() != dst {
		return false
	}
	m, err := icmp.ParseMessage(proto, b)
	if err != nil || m.Type != rep {
		return false
	}
	e, ok := m.Body.(*icmp.Echo)
	return ok && (id < 0 || e.ID == id) && e.Seq == seq
}
