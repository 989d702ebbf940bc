package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

const (
	defaultProbeTimeout = 3 * time.Second
	probeResend         = 200 * time.Millisecond
)

// UDPSource sends datagrams from src in fromNS to dst until one arrives at
// a socket bound to dst's port on any address in toNS, and returns the
// source that socket saw: what the far side sees after any NAT on the way.
// A zero src lets the kernel pick address and port; every resend leaves
// from the same socket, so it takes the same NAT mapping. Nothing arriving
// before ctx ends (default 3 s) is an error: that is how a test shows a
// path is closed. The listener need not own dst's address, so a packet
// sent to a NAT router's public address and forwarded inside is caught.
func UDPSource(ctx context.Context, fromNS string, src netip.AddrPort, toNS string, dst netip.AddrPort) (netip.AddrPort, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultProbeTimeout)
		defer cancel()
	}
	network := "udp4"
	if dst.Addr().Is6() {
		network = "udp6"
	}
	token := make([]byte, 16)
	_, _ = rand.Read(token) // crypto/rand never fails on Linux

	var ln, out *net.UDPConn
	err := InNetns(toNS, func() (err error) {
		ln, err = net.ListenUDP(network, &net.UDPAddr{Port: int(dst.Port())})
		return err
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("lab: listen on port %d in netns %s: %w", dst.Port(), toNS, err)
	}
	defer ln.Close()
	var laddr *net.UDPAddr
	if src.Addr().IsValid() {
		laddr = net.UDPAddrFromAddrPort(src)
	}
	err = InNetns(fromNS, func() (err error) {
		out, err = net.ListenUDP(network, laddr)
		return err
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("lab: bind %s in netns %s: %w", src, fromNS, err)
	}
	defer out.Close()

	seen := make(chan netip.AddrPort, 1)
	go func() {
		deadline, _ := ctx.Deadline()
		_ = ln.SetReadDeadline(deadline)
		buf := make([]byte, 64)
		for {
			n, from, err := ln.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // the deadline, or ln closed
			}
			if bytes.Equal(buf[:n], token) {
				seen <- netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
				return
			}
		}
	}()
	t := time.NewTicker(probeResend)
	defer t.Stop()
	var lastErr error
	for {
		if _, err := out.WriteToUDPAddrPort(token, dst); err != nil {
			lastErr = err
		}
		select {
		case from := <-seen:
			return from, nil
		case <-ctx.Done():
			err := fmt.Errorf("lab: UDP from %s (netns %s) to %s: nothing arrived in netns %s: %w", out.LocalAddr(), fromNS, dst, toNS, ctx.Err())
			return netip.AddrPort{}, errors.Join(err, lastErr)
		case <-t.C:
		}
	}
}
