package lab

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	captureStartTimeout = 10 * time.Second
	captureStopTimeout  = 10 * time.Second
)

// Capture is a tcpdump recording everything crossing one interface, by
// default the underlay bridge.
type Capture struct {
	path string
	cmd  *exec.Cmd
	done chan struct{}

	mu     sync.Mutex
	stderr strings.Builder
	result []byte
	err    error
	once   sync.Once
}

// StartCapture starts tcpdump on br0 in the switch namespace and returns
// once it is capturing. ctx bounds only the start; the capture runs until
// Stop or Close.
func (l *Lab) StartCapture(ctx context.Context) (*Capture, error) {
	return l.StartCaptureOn(ctx, l.SwitchNS(), bridgeName)
}

// StartCaptureOn is StartCapture on interface dev of namespace ns, say
// BridgeName in WANNS or in a Site's NS.
func (l *Lab) StartCaptureOn(ctx context.Context, ns, dev string) (*Capture, error) {
	return l.startCapture(ctx, ns, dev, 0, "")
}

// StartCaptureFiltered is StartCapture keeping only the packets that match
// a tcpdump filter expression ("" keeps all), each cut to snaplen bytes (0
// keeps whole packets): a long capture of bulk traffic for, say, IP
// fragments then stays small.
func (l *Lab) StartCaptureFiltered(ctx context.Context, snaplen int, filter string) (*Capture, error) {
	return l.startCapture(ctx, l.SwitchNS(), bridgeName, snaplen, filter)
}

func (l *Lab) startCapture(ctx context.Context, ns, dev string, snaplen int, filter string) (*Capture, error) {
	l.mu.Lock()
	n := len(l.captures)
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return nil, errors.New("lab: StartCapture on a closed lab")
	}
	path := filepath.Join(l.dir, fmt.Sprintf("capture-%d-%d.pcap", n+1, time.Now().UnixNano()))
	// -Z root: tcpdump otherwise drops to user tcpdump, which cannot write
	// into the lab's private directory. --immediate-mode and -U get every
	// packet into the file without waiting for a buffer to fill.
	argv := []string{"netns", "exec", ns,
		"tcpdump", "-i", dev, "-n", "-s", strconv.Itoa(snaplen), "-U", "--immediate-mode", "-Z", "root", "-w", path}
	if filter != "" {
		argv = append(argv, filter)
	}
	cmd := exec.Command("ip", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: start tcpdump in netns %s: %w", ns, err)
	}
	c := &Capture{path: path, cmd: cmd, done: make(chan struct{})}
	listening := make(chan struct{})
	go c.readStderr(bufio.NewScanner(stderr), listening)

	l.mu.Lock()
	l.captures = append(l.captures, c)
	l.mu.Unlock()

	t := time.NewTimer(captureStartTimeout)
	defer t.Stop()
	select {
	case <-listening:
		return c, nil
	case <-c.done:
		err = fmt.Errorf("exited: %s", c.stderrText())
	case <-t.C:
		err = fmt.Errorf("not listening after %s: %s", captureStartTimeout, c.stderrText())
	case <-ctx.Done():
		err = ctx.Err()
	}
	_, _ = c.Stop()
	return nil, fmt.Errorf("lab: tcpdump on %s in netns %s: %w", dev, ns, err)
}

// readStderr reaps tcpdump too: Wait must follow the end of the pipe.
// tcpdump prints "listening on" only after the capture socket is bound, so
// nothing sent after that line is missed.
func (c *Capture) readStderr(sc *bufio.Scanner, listening chan struct{}) {
	signalled := false
	for sc.Scan() {
		c.mu.Lock()
		c.stderr.WriteString(sc.Text() + "\n")
		c.mu.Unlock()
		if !signalled && strings.Contains(sc.Text(), "listening on") {
			close(listening)
			signalled = true
		}
	}
	_ = c.cmd.Wait()
	close(c.done)
}

func (c *Capture) stderrText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.TrimSpace(c.stderr.String())
}

// Path is the pcap file; it stays until the lab's Dir is removed.
func (c *Capture) Path() string { return c.path }

// Stop ends the capture (SIGINT lets tcpdump flush) and returns the raw
// pcap bytes. Later calls return the same result.
func (c *Capture) Stop() ([]byte, error) {
	c.once.Do(func() {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-c.done:
		case <-time.After(captureStopTimeout):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
		}
		c.result, c.err = os.ReadFile(c.path)
		if c.err != nil {
			c.err = fmt.Errorf("lab: read capture: %w (tcpdump: %s)", c.err, c.stderrText())
		}
	})
	return c.result, c.err
}

// Count returns how many captured packets match a tcpdump filter expression
// such as "net 10.42.0.0/16" or "udp port 51820". It works before and after
// Stop. Packets are counted from tcpdump's pcap output, not its text, which
// may span several lines per packet.
func (c *Capture) Count(filter string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{"-n", "-Z", "root", "-r", c.path, "-w", "-"}
	if filter != "" {
		args = append(args, filter)
	}
	cmd := exec.CommandContext(ctx, "tcpdump", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("lab: tcpdump -r %s %q: %w: %s", c.path, filter, err, strings.TrimSpace(stderr.String()))
	}
	return countPcap(out)
}

// countPcap counts the records of a classic pcap file. A record cut short
// (a capture still being written) is not counted.
func countPcap(b []byte) (int, error) {
	if len(b) < 24 {
		return 0, fmt.Errorf("lab: pcap too short (%d bytes)", len(b))
	}
	var order binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		order = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		order = binary.BigEndian
	default:
		return 0, fmt.Errorf("lab: not a pcap file (magic %#x)", binary.LittleEndian.Uint32(b))
	}
	n := 0
	for off := 24; off+16 <= len(b); n++ {
		incl := int(order.Uint32(b[off+8:]))
		off += 16 + incl
		if off > len(b) {
			break
		}
	}
	return n, nil
}

// String helps failure messages.
func (c *Capture) String() string { return "capture " + strconv.Quote(c.path) }
