// Package wgdevtest provides an in-memory WireGuard device for tests of
// code that configures peers through wgctrl.
package wgdevtest

import (
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Client applies PeerConfigs the way wgctrl documents them and counts the
// peer operations it received. Safe for concurrent use.
type Client struct {
	mu    sync.Mutex
	peers map[wgtypes.Key]wgtypes.Peer
	ops   int
	// failNext fails the next ConfigureDevice whole.
	failNext error
}

// FailNext makes the next ConfigureDevice fail with err, applying
// nothing, as a batch the kernel refuses.
func (f *Client) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// NewClient returns a device with no peers.
func NewClient() *Client { return &Client{peers: map[wgtypes.Key]wgtypes.Peer{}} }

// Device returns the device's peers.
func (f *Client) Device(string) (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := &wgtypes.Device{}
	for _, p := range f.peers {
		d.Peers = append(d.Peers, p)
	}
	return d, nil
}

// ConfigureDevice applies peer changes; private key and port are ignored.
func (f *Client) ConfigureDevice(_ string, cfg wgtypes.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failNext; err != nil {
		f.failNext = nil
		return err
	}
	for _, pc := range cfg.Peers {
		f.ops++
		p, exists := f.peers[pc.PublicKey]
		switch {
		case pc.Remove:
			delete(f.peers, pc.PublicKey)
			continue
		case pc.UpdateOnly && !exists:
			continue
		}
		p.PublicKey = pc.PublicKey
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		p.AllowedIPs = append(p.AllowedIPs, pc.AllowedIPs...)
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		f.peers[pc.PublicKey] = p
	}
	return nil
}

// Ops is the number of peer operations applied so far.
func (f *Client) Ops() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops
}

// Peer returns one peer as the device holds it.
func (f *Client) Peer(k wgtypes.Key) (wgtypes.Peer, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.peers[k]
	return p, ok
}

// SetPeer changes a peer behind meshd's back, as `wg set` or a roaming
// handshake would.
func (f *Client) SetPeer(p wgtypes.Peer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers[p.PublicKey] = p
}

// Len is the number of peers.
func (f *Client) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.peers)
}
