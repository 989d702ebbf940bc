package cnm

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink is the Dataplane of a real host, through a handle tied to one
// network namespace.
type Netlink struct {
	h *netlink.Handle
}

// NewNetlink wraps h (route netlink of the daemon's namespace).
func NewNetlink(h *netlink.Handle) *Netlink { return &Netlink{h: h} }

func notFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV)
}

// EnsureBridge creates the bridge as the CNI bridge plugin would (so
// either may come first), with the gateway address the plugin also
// ensures, and brings it up.
func (n *Netlink) EnsureBridge(name string, gateway netip.Prefix, mtu int) error {
	link, err := n.h.LinkByName(name)
	if notFound(err) {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu, TxQLen: -1}}
		if err := n.h.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge: %w", err)
		}
		link, err = n.h.LinkByName(name)
	}
	if err != nil {
		return err
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s exists and is a %s, not a bridge", name, link.Type())
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gateway.Addr().AsSlice(), Mask: net.CIDRMask(gateway.Bits(), gateway.Addr().BitLen())}}
	if err := n.h.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("address %s: %w", gateway, err)
	}
	if err := n.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// RemoveBridge deletes the bridge when no port is attached.
func (n *Netlink) RemoveBridge(name string) error {
	link, err := n.h.LinkByName(name)
	if notFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	links, err := n.h.LinkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == link.Attrs().Index {
			return fmt.Errorf("%s still has %s attached", name, l.Attrs().Name)
		}
	}
	if err := n.h.LinkDel(link); err != nil && !notFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// AddVeth creates host (on bridge, hairpin like the CNI plugin's ports,
// up) and peer (left down: Docker moves, renames and configures it).
func (n *Netlink) AddVeth(bridge, host, peer string, mtu int, mac net.HardwareAddr) error {
	br, err := n.h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	// A pair left by a failed attempt is replaced.
	if err := n.DelVeth(host); err != nil {
		return err
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: host, MTU: mtu, MasterIndex: br.Attrs().Index},
		PeerName:         peer,
		PeerHardwareAddr: mac,
	}
	if err := n.h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", host, peer, err)
	}
	p, err := n.h.LinkByName(peer)
	if err == nil {
		err = n.h.LinkSetMTU(p, mtu)
	}
	if err != nil {
		n.DelVeth(host)
		return fmt.Errorf("veth peer %s: %w", peer, err)
	}
	h, err := n.h.LinkByName(host)
	if err == nil {
		err = n.h.LinkSetHairpin(h, true)
	}
	if err == nil {
		err = n.h.LinkSetUp(h)
	}
	if err != nil {
		n.DelVeth(host)
		return fmt.Errorf("veth %s: %w", host, err)
	}
	return nil
}

// DelVeth deletes the pair by its host end.
func (n *Netlink) DelVeth(host string) error {
	link, err := n.h.LinkByName(host)
	if notFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := n.h.LinkDel(link); err != nil && !notFound(err) {
		return fmt.Errorf("delete veth %s: %w", host, err)
	}
	return nil
}
