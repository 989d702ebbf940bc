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

// Echo sends one echo request from src to dst and waits for its reply
// until ctx ends (at most DefaultWait without a deadline). It needs
// CAP_NET_RAW. Every call has its own raw socket and a random identifier,
// so concurrent probes never take each other's replies.
func Echo(ctx context.Context, src, dst netip.Addr) error {
	src, dst = src.Unmap(), dst.Unmap()
	if src.Is4() != dst.Is4() {
		return fmt.Errorf("echo %s from %s: address families differ", dst, src)
	}
	network, proto := "ip4:icmp", 1
	req, rep := icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply)
	if dst.Is6() {
		network, proto = "ip6:ipv6-icmp", 58
		req, rep = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	conn, err := icmp.ListenPacket(network, src.String())
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
	if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("echo %s from %s: %w", dst, src, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("echo %s from %s: no reply", dst, src)
			}
			return fmt.Errorf("echo %s from %s: %w", dst, src, err)
		}
		if isReply(buf[:n], from, proto, rep, dst, id, seq) {
			return nil
		}
	}
}

// isReply matches the reply to this request: a raw socket also receives
// every other ICMP message that reaches the host.
func isReply(b []byte, from net.Addr, proto int, rep icmp.Type, dst netip.Addr, id, seq int) bool {
	ia, ok := from.(*net.IPAddr)
	if !ok {
		return false
	}
	a, ok := netip.AddrFromSlice(ia.IP)
	if !ok || a.Unmap() != dst {
		return false
	}
	m, err := icmp.ParseMessage(proto, b)
	if err != nil || m.Type != rep {
		return false
	}
	e, ok := m.Body.(*icmp.Echo)
	return ok && e.ID == id && e.Seq == seq
}
