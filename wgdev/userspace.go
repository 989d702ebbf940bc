package wgdev

import (
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// UAPI serving limits. A configuration exchange takes milliseconds; a
// client that holds a connection longer is stuck or hostile, and must not
// pin a goroutine and a descriptor for good.
const (
	uapiConnDeadline = 10 * time.Second
	uapiMaxConns     = 16
	// socketCheck is how often the socket file is looked for: someone
	// deleting it must not cut off `wg` and meshd's own reconciler for
	// longer than that.
	socketCheck     = 500 * time.Millisecond
	acceptBackoffLo = 5 * time.Millisecond
	acceptBackoffHi = time.Second
)

// userspaceDevice is wireguard-go embedded in meshd: the same engine as
// the standalone binary, with its TUN and UDP offloads, configured over
// the UAPI socket like any other userspace WireGuard.
type userspaceDevice struct {
	name  string
	dev   *device.Device
	opts  Options
	index int

	// mu guards uapi, replaced when the socket file is restored.
	mu   sync.Mutex
	uapi *net.UnixListener

	conns     chan struct{} // a slot per connection being served
	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
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
	d := &userspaceDevice{name: opts.Name, dev: dev, opts: opts, conns: make(chan struct{}, uapiMaxConns), stop: make(chan struct{})}
	err = mark(opts.Links, opts.Name)
	if err == nil {
		d.index, err = linkIndex(opts.Links, opts.Name)
	}
	if err == nil {
		d.uapi, err = listenUAPI(opts.Name)
	}
	if err != nil {
		dev.Close()
		return nil, err
	}
	d.wg.Add(2)
	go d.serve()
	go d.keepSocket()
	return d, nil
}

// listenUAPI creates the socket the way wireguard-go does (mode 0700
// directory, 0600 socket, a stale file from a dead process replaced) but
// serves it itself: wireguard-go's listener stops for good on its first
// accept error, and one EMFILE would then freeze the device's
// configuration until a restart.
func listenUAPI(name string) (*net.UnixListener, error) {
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return nil, fmt.Errorf("open UAPI socket for %s: %w", name, err)
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		os.Remove(socketPath(name))
		return nil, fmt.Errorf("listen on UAPI socket for %s: %w", name, err)
	}
	ul := ln.(*net.UnixListener)
	// The file is unlinked by Close, and only when it is still this
	// listener's: see keepSocket.
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

func (d *userspaceDevice) listener() *net.UnixListener {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.uapi
}

// serve accepts UAPI connections until Close, backing off on errors such
// as running out of file descriptors instead of giving up.
func (d *userspaceDevice) serve() {
	defer d.wg.Done()
	backoff := acceptBackoffLo
	for {
		ln := d.listener()
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-d.stop:
				return
			default:
			}
			if ln != d.listener() {
				continue // replaced by keepSocket: accept on the new one
			}
			d.opts.Log.Debug("UAPI accept failed; retrying", "interface", d.name, "in", backoff, "err", err)
			select {
			case <-d.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, acceptBackoffHi)
			continue
		}
		backoff = acceptBackoffLo
		select {
		case d.conns <- struct{}{}:
		default:
			c.Close() // too many at once: the client retries
			continue
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer func() { <-d.conns }()
			c.SetDeadline(time.Now().Add(uapiConnDeadline))
			d.dev.IpcHandle(c)
		}()
	}
}

// keepSocket puts the socket file back when someone deletes or replaces
// it: without it `wg show` and meshd's own reconciler lose the device.
func (d *userspaceDevice) keepSocket() {
	defer d.wg.Done()
	t := time.NewTicker(socketCheck)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		if d.socketIntact() {
			continue
		}
		ln, err := listenUAPI(d.name)
		if err != nil {
			d.opts.Log.Warn("UAPI socket is gone and could not be restored; retrying", "interface", d.name, "err", err)
			continue
		}
		d.mu.Lock()
		old := d.uapi
		d.uapi = ln
		d.mu.Unlock()
		old.Close() // wakes serve, which moves to the new listener
		d.opts.Log.Warn("restored the UAPI socket someone removed", "interface", d.name, "path", socketPath(d.name))
		d.opts.OnRepair("uapi-socket")
	}
}

// socketIntact reports whether a socket still sits at the path clients
// dial.
func (d *userspaceDevice) socketIntact() bool {
	info, err := os.Lstat(socketPath(d.name))
	return err == nil && info.Mode()&os.ModeSocket != 0
}

func (d *userspaceDevice) Name() string { return d.name }
func (d *userspaceDevice) Kind() Mode   { return ModeUserspace }

func (d *userspaceDevice) Present() error {
	return present(d.opts.Links, d.name, d.index)
}

// Close stops serving UAPI, removes the socket and closes the TUN, which
// deletes the interface.
func (d *userspaceDevice) Close() error {
	d.closeOnce.Do(func() {
		close(d.stop)
		d.listener().Close()
		d.wg.Wait()
		os.Remove(socketPath(d.name))
		d.dev.Close()
	})
	return nil
}
