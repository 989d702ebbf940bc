package wgdev

import (
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshd/meshd/internal/bounded"
)

// Bounded wraps c so that every call returns within timeout. wgctrl has
// no deadlines, and a device that stops answering would otherwise freeze
// the reconciler, the status socket and shutdown with it. At most slots
// timed-out calls linger in the background.
func Bounded(c Client, timeout time.Duration, slots int) Client {
	return &boundedClient{c: c, gate: bounded.NewGate(timeout, slots)}
}

type boundedClient struct {
	c    Client
	gate *bounded.Gate
}

func (b *boundedClient) Device(name string) (*wgtypes.Device, error) {
	var dev *wgtypes.Device
	err := b.gate.Do("read WireGuard device "+name, func() (err error) {
		dev, err = b.c.Device(name)
		return err
	})
	return dev, err
}

func (b *boundedClient) ConfigureDevice(name string, cfg wgtypes.Config) error {
	return b.gate.Do("configure WireGuard device "+name, func() error { return b.c.ConfigureDevice(name, cfg) })
}
