// Package clustertest carries serf's gossip between in-process members
// without sockets: a memberlist transport over channels, so daemons can
// join, leave, fail and be partitioned in a test that needs no root and
// no ports. Unlike memberlist's own MockTransport it is safe for
// concurrent use, never blocks a sender (a packet to a full, cut or closed
// member is dropped, as UDP would drop it) and can cut members off.
package clustertest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Network connects the transports it made.
type Network struct {
	mu     sync.Mutex
	byAddr map[string]*Transport
	byName map[string]*Transport
	next   int
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{byAddr: map[string]*Transport{}, byName: map[string]*Transport{}}
}

// Port is the gossip port every member appears to use.
const Port = 7946

// NewTransport adds a member with its own address, 198.18.0.N (the
// benchmarking range, so it can be mistaken for nothing real).
func (n *Network) NewTransport(name string) *Transport {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.next++
	addr := netip.AddrFrom4([4]byte{198, 18, byte(n.next >> 8), byte(n.next)})
	t := &Transport{
		net: n, name: name, ip: addr,
		packets: make(chan *memberlist.Packet, 1024),
		streams: make(chan net.Conn, 64),
		closed:  make(chan struct{}),
	}
	n.byAddr[t.Addr()] = t
	n.byName[name] = t
	return t
}

// Addr returns the gossip address of the named member ("" if unknown),
// for join lists.
func (n *Network) Addr(name string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t := n.byName[name]; t != nil {
		return t.Addr()
	}
	return ""
}

// Cut isolates a member: nothing reaches it and nothing it sends arrives,
// as if its cable were pulled. Heal undoes it.
func (n *Network) Cut(name string) { n.setCut(name, true) }

// Heal reconnects a member cut off with Cut.
func (n *Network) Heal(name string) { n.setCut(name, false) }

func (n *Network) setCut(name string, cut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t := n.byName[name]; t != nil {
		t.cut = cut
	}
}

func (n *Network) route(from *Transport, a memberlist.Address) (*Transport, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	dest := n.byAddr[a.Addr]
	if dest == nil && a.Name != "" {
		dest = n.byName[a.Name]
	}
	switch {
	case dest == nil:
		return nil, fmt.Errorf("no route to %s", a.Addr)
	case from.cut || dest.cut:
		return nil, fmt.Errorf("%s is unreachable", a.Addr)
	case !dest.started:
		return nil, fmt.Errorf("connection to %s refused", a.Addr)
	}
	select {
	case <-dest.closed:
		return nil, fmt.Errorf("connection to %s refused", a.Addr)
	default:
	}
	return dest, nil
}

// Transport is one member's end of the network.
type Transport struct {
	net  *Network
	name string
	ip   netip.Addr
	// cut and started are guarded by net.mu. A transport starts when
	// memberlist asks for its address, so a member that was never
	// started refuses connections, as a host without serf running does.
	cut     bool
	started bool
	packets chan *memberlist.Packet
	streams chan net.Conn

	closeOnce sync.Once
	closed    chan struct{}

	sent  atomic.Int64 // bytes written, datagrams and streams alike
	dials atomic.Int64 // streams opened: joins and push/pull
}

// Dials is how many streams the member opened (each join and each
// push/pull opens one).
func (t *Transport) Dials() int64 { return t.dials.Load() }

// Sent is how many bytes the member has sent, gossip datagrams and
// push/pull streams together, whether or not they arrived: what it would
// cost its uplink.
func (t *Transport) Sent() int64 { return t.sent.Load() }

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

// Addr is the member's gossip address.
func (t *Transport) Addr() string { return net.JoinHostPort(t.ip.String(), strconv.Itoa(Port)) }

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *Transport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	t.net.mu.Lock()
	t.started = true
	t.net.mu.Unlock()
	return net.IP(t.ip.AsSlice()), Port, nil
}

// WriteTo implements memberlist.Transport.
func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress delivers a packet, or drops it where UDP would.
func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	t.sent.Add(int64(len(b)))
	dest, err := t.net.route(t, a)
	if err != nil {
		return now, nil // a lost datagram is not an error to the sender
	}
	p := &memberlist.Packet{Buf: append([]byte(nil), b...), From: addr(t.Addr()), Timestamp: now}
	select {
	case dest.packets <- p:
	default:
	}
	return now, nil
}

// PacketCh implements memberlist.Transport.
func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// IngestPacket implements memberlist.NodeAwareTransport.
func (t *Transport) IngestPacket(conn net.Conn, from net.Addr, now time.Time, shouldClose bool) error {
	return errors.New("clustertest: packet ingestion is not supported")
}

// DialTimeout implements memberlist.Transport.
func (t *Transport) DialTimeout(a string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: a}, timeout)
}

// DialAddressTimeout opens a stream, as a TCP connect would, failing when
// the peer is cut off, closed, or does not accept in time.
func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	t.dials.Add(1)
	dest, err := t.net.route(t, a)
	if err != nil {
		return nil, err
	}
	local, remote := net.Pipe()
	select {
	case dest.streams <- countingConn{remote, &dest.sent}:
		return countingConn{local, &t.sent}, nil
	case <-dest.closed:
	case <-time.After(timeout):
	}
	local.Close()
	remote.Close()
	return nil, fmt.Errorf("connect to %s: timed out", a.Addr)
}

// StreamCh implements memberlist.Transport.
func (t *Transport) StreamCh() <-chan net.Conn { return t.streams }

// IngestStream implements memberlist.NodeAwareTransport.
func (t *Transport) IngestStream(conn net.Conn) error {
	return errors.New("clustertest: stream ingestion is not supported")
}

// Shutdown implements memberlist.Transport; the member stops receiving.
func (t *Transport) Shutdown() error {
	t.closeOnce.Do(func() { close(t.closed) })
	return nil
}

type addr string

func (a addr) Network() string { return "clustertest" }
func (a addr) String() string  { return string(a) }

type countingConn struct {
	net.Conn
	sent *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.sent.Add(int64(n))
	return n, err
}
