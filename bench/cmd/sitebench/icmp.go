package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/meshd/meshd/lab"
)

// echoStream sends ICMP echo requests from a namespace to one address at
// a fixed interval, like "ping -i", and records when each reply arrives.
// Its raw socket is opened inside the namespace, so no process runs per
// probe and dozens of streams cost the machine next to nothing. IPv4 only:
// the multi-site lab and the benchmark's segment are IPv4.
//
// (meshbench has a one-probe-at-a-time pinger; this one keeps every
// request's fate, which the failover gap needs.)
type echoStream struct {
	label string // for messages: "h3-blue -> 10.42.65.10"
	to    netip.Addr
	conn  *icmp.PacketConn
	id    int

	// mu guards recs; index = sequence number.
	mu   sync.Mutex
	recs []echoRecord

	stop chan struct{}
	wg   sync.WaitGroup
}

// nextEchoID hands every stream of the process its own ICMP identifier: a
// raw socket sees every ICMP packet of its namespace, so streams sharing a
// namespace tell their replies apart by it.
var nextEchoID atomic.Uint32

func init() { nextEchoID.Store(rand.Uint32N(1 << 15)) }

// maxEchoSeq keeps sequence numbers from wrapping (16 bits on the wire).
const maxEchoSeq = 1<<16 - 1

// startEcho opens a raw ICMP socket in namespace ns and sends a request to
// `to` every interval until stop.
func startEcho(ns string, to netip.Addr, interval time.Duration) (*echoStream, error) {
	if !to.Is4() {
		return nil, fmt.Errorf("echo stream to %s: IPv4 only", to)
	}
	s := &echoStream{
		label: ns + " -> " + to.String(), to: to,
		id:   int(nextEchoID.Add(1) & 0xffff),
		stop: make(chan struct{}),
	}
	err := lab.InNetns(ns, func() (err error) {
		s.conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ICMP socket in %s: %w", ns, err)
	}
	// Let the kernel drop everything but echo replies before they are
	// copied to us; what passes is matched by source, id and sequence.
	var f ipv4.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv4.ICMPTypeEchoReply)
	_ = s.conn.IPv4PacketConn().SetICMPFilter(&f)
	s.wg.Add(2)
	go s.receive()
	go s.send(interval)
	return s, nil
}

func (s *echoStream) send(interval time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	dst := &net.IPAddr{IP: s.to.AsSlice()}
	payload := make([]byte, 56) // ping(8)'s default
	for seq := 0; seq <= maxEchoSeq; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: s.id, Seq: seq, Data: payload}}
		b, err := msg.Marshal(nil)
		if err != nil {
			return
		}
		s.mu.Lock()
		s.recs = append(s.recs, echoRecord{sent: time.Now()})
		s.mu.Unlock()
		// A send error (no route yet, say) is a lost request, as for ping.
		_, _ = s.conn.WriteTo(b, dst)
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *echoStream) receive() {
	defer s.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		now := time.Now()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			continue
		}
		src, ok := from.(*net.IPAddr)
		if !ok || !src.IP.Equal(s.to.AsSlice()) {
			continue
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.ID != s.id {
			continue
		}
		s.mu.Lock()
		if e.Seq < len(s.recs) && !s.recs[e.Seq].answered() {
			s.recs[e.Seq].recv = now
		}
		s.mu.Unlock()
	}
}

// records returns a copy of what happened so far.
func (s *echoStream) records() []echoRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]echoRecord(nil), s.recs...)
}

// Stop ends the stream and closes its socket; safe to call twice.
func (s *echoStream) Stop() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	_ = s.conn.Close() // ends receive
	s.wg.Wait()
}

// echoStreams is a set of streams started and stopped together.
type echoStreams []*echoStream

// startEchoes starts one stream per (namespace, target) pair; on error
// those already started are stopped.
func startEchoes(from []string, to []netip.Addr, interval time.Duration) (echoStreams, error) {
	var ss echoStreams
	for i := range from {
		s, err := startEcho(from[i], to[i], interval)
		if err != nil {
			ss.Stop()
			return nil, err
		}
		ss = append(ss, s)
	}
	return ss, nil
}

func (ss echoStreams) Stop() {
	for _, s := range ss {
		s.Stop()
	}
}

// allSteady reports whether every stream is steady (see steady), and
// names the first that is not.
func (ss echoStreams) allSteady(window, grace time.Duration) (bool, string) {
	now := time.Now()
	for _, s := range ss {
		if !steady(s.records(), now, window, grace) {
			return false, s.label
		}
	}
	return true, ""
}
