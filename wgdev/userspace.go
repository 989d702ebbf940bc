package wgdev

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// userspaceDevice is wireguard-go embedded in meshd: the same engine as
// the standalone binary, with its TUN and UDP offloads, configured over
// the UAPI socket like any other userspace WireGuard.
type userspaceDevice struct {
	name string
	dev  *device.Device
	uapi net.Listener

	closeOnce sync.Once
	done      chan struct{}
}

func openUserspace(opts Options) (Device, error) {
	mtu := opts.MTU
	if mtu <= 0 {
		mtu = device.DefaultMTU
	}
	tdev, err := tun.CreateTUN(opts.Name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create TUN interface %s (is /dev/net/tun available?): %w", opts.Name, err)
	}
	logger := &device.Logger{
		Verbosef: func(format string, args ...any) {
			opts.Log.Debug(fmt.Sprintf(format, args...), "component", "wireguard-go")
		},
		Errorf: func(format string, args ...any) {
			opts.Log.Warn(fmt.Sprintf(format, args...), "component", "wireguard-go")
		},
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), logger)
	file, err := ipc.UAPIOpen(opts.Name)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("open UAPI socket for %s: %w", opts.Name, err)
	}
	uapi, err := ipc.UAPIListen(opts.Name, file)
	file.Close()
	if err != nil {
		dev.Close()
		os.Remove(socketPath(opts.Name))
		return nil, fmt.Errorf("listen on UAPI socket for %s: %w", opts.Name, err)
	}
	d := &userspaceDevice{name: opts.Name, dev: dev, uapi: uapi, done: make(chan struct{})}
	go d.serve(opts.Log)
	return d, nil
}

func (d *userspaceDevice) serve(log *slog.Logger) {
	defer close(d.done)
	for {
		c, err := d.uapi.Accept()
		if err != nil {
			return
		}
		go d.dev.IpcHandle(c)
	}
}

func (d *userspaceDevice) Name() string { return d.name }
func (d *userspaceDevice) Kind() Mode   { return ModeUserspace }

// Close stops serving UAPI, removes the socket (a listener built from a
// file descriptor does not unlink it) and closes the TUN, which deletes
// the interface.
func (d *userspaceDevice) Close() error {
	d.closeOnce.Do(func() {
		d.uapi.Close()
		<-d.done
		os.Remove(socketPath(d.name))
		d.dev.Close()
	})
	return nil
}
