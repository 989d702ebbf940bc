package wgdev

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/meshd/meshd/internal/unixsock"
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

	// mu guards the fields below it.
	mu sync.Mutex
	// uapi is replaced when keepSocket restores the socket file; sock is
	// the file it listens on, so that only that file is ever taken for
	// this device's (see socketIntact) or removed by Close.
	uapi *net.UnixListener
	sock os.FileInfo
	// open holds the UAPI connections being served, so Close can end
	// them instead of waiting out their deadline; closing refuses new
	// ones once Close has begun.
	open    map[net.Conn]struct{}
	closing bool

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
	d := &userspaceDevice{name: opts.Name, dev: dev, opts: opts, open: map[net.Conn]struct{}{},
		conns: make(chan struct{}, uapiMaxConns), stop: make(chan struct{})}
	err = mark(opts.Links, opts.Name)
	if err == nil {
		d.index, err = linkIndex(opts.Links, opts.Name)
	}
	if err == nil {
		d.uapi, d.sock, err = listenUAPI(opts.Name)
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

// listenUAPI creates the socket the way wireguard-go's ipc.UAPIOpen does
// (directory 0755, socket 0600, a stale socket from a dead process
// replaced) but serves it itself: wireguard-go's listener stops for good
// on its first accept error, and one EMFILE would then freeze the
// device's configuration until a restart. UAPIOpen also leaks the
// listener it returns a copy of, a descriptor per restore. It returns
// the socket file's identity with the listener.
func listenUAPI(name string) (*net.UnixListener, os.FileInfo, error) {
	if err := os.MkdirAll(SocketDir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", SocketDir, err)
	}
	path := socketPath(name)
	// 0600 from the start, as wireguard-go makes it; Close checks the
	// socket is still this one before it unlinks it.
	ln, err := unixsock.Listen(path, 0o600)
	if errors.Is(err, fs.ErrExist) && staleSocket(path) {
		ln, err = unixsock.Listen(path, 0o600)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("listen on UAPI socket: %w", err)
	}
	info, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("UAPI socket %s: %w", path, err)
	}
	return ln, info, nil
}

// staleSocket removes the socket at path if nothing answers on it (a
// dead process's) and reports whether it did. A live socket or anything
// that is not a socket stays, and the listen fails naming the path.
func staleSocket(path string) bool {
	info, err := os.Lstat(path)
	if err != nil || info.Mode()&os.ModeSocket == 0 {
		return false
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return false
	}
	return os.Remove(path) == nil
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
		// The deadline goes on before Close can see the connection, so
		// Close's own (now) is never overwritten.
		c.SetDeadline(time.Now().Add(uapiConnDeadline))
		if !d.track(c) {
			<-d.conns
			c.Close()
			return
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer func() { <-d.conns }()
			defer d.untrack(c)
			d.dev.IpcHandle(c)
		}()
	}
}

// track records a connection being served; false once Close has begun.
func (d *userspaceDevice) track(c net.Conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return false
	}
	d.open[c] = struct{}{}
	return true
}

func (d *userspaceDevice) untrack(c net.Conn) {
	d.mu.Lock()
	delete(d.open, c)
	d.mu.Unlock()
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
		ln, info, err := listenUAPI(d.name)
		if err != nil {
			d.opts.Log.Warn("UAPI socket is gone and could not be restored; retrying", "interface", d.name, "err", err)
			continue
		}
		d.mu.Lock()
		if d.closing {
			// Close already took the old listener down and will not
			// see this one.
			d.mu.Unlock()
			ln.Close()
			os.Remove(socketPath(d.name))
			return
		}
		old := d.uapi
		d.uapi, d.sock = ln, info
		d.mu.Unlock()
		old.Close() // wakes serve, which moves to the new listener
		d.opts.Log.Warn("restored the UAPI socket someone removed", "interface", d.name, "path", socketPath(d.name))
		d.opts.OnRepair("uapi-socket")
	}
}

// socketIntact reports whether the file at the path clients dial is
// still the socket this device listens on: a socket file of the same
// name that someone else made would take clients nowhere.
func (d *userspaceDevice) socketIntact() bool {
	info, err := os.Lstat(socketPath(d.name))
	d.mu.Lock()
	defer d.mu.Unlock()
	return err == nil && os.SameFile(info, d.sock)
}

func (d *userspaceDevice) Name() string { return d.name }
func (d *userspaceDevice) Kind() Mode   { return ModeUserspace }

func (d *userspaceDevice) Present() error {
	return present(d.opts.Links, d.name, d.index)
}

// closeWait bounds how long Close waits for the goroutines serving UAPI
// once it has cut their connections; they return at once unless the
// device itself is stuck.
const closeWait = 500 * time.Millisecond

// Close stops serving UAPI, ends the connections being served (a client
// that stopped talking would otherwise hold Close for its whole
// deadline), removes the socket if it is still this device's, and closes
// the TUN, which deletes the interface.
func (d *userspaceDevice) Close() error {
	d.closeOnce.Do(func() {
		close(d.stop)
		d.mu.Lock()
		d.closing = true
		d.uapi.Close()
		for c := range d.open {
			c.SetDeadline(time.Now())
		}
		own := d.sock
		d.mu.Unlock()
		served := make(chan struct{})
		go func() { d.wg.Wait(); close(served) }()
		select {
		case <-served:
		case <-time.After(closeWait):
			d.opts.Log.Warn("UAPI connections still being served after they were cut off; closing the device anyway", "interface", d.name)
		}
		if info, err := os.Lstat(socketPath(d.name)); err == nil && os.SameFile(info, own) {
			os.Remove(socketPath(d.name))
		}
		d.dev.Close()
	})
	return nil
}
