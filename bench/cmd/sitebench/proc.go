package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// bg is a process started in a namespace for the benchmark (iperf3's
// server, a standalone wireguard-go). It dies with sitebench
// (Pdeathsig), and the lab's Close kills whatever still runs in its
// namespaces, so a crash leaves nothing behind.
type bg struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, valid once done is closed
}

// startBG runs argv in namespace ns, its output appended to logPath.
func startBG(ns, logPath string, argv ...string) (*bg, error) {
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own process group: a terminal's Ctrl-C reaches sitebench only,
	// which then stops it deliberately.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s in %s: %w", strings.Join(argv, " "), ns, err)
	}
	p := &bg{name: argv[0] + " in " + ns, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// pid is the process's own: "ip netns exec" execs the command in place.
func (p *bg) pid() int { return p.cmd.Process.Pid }

func (p *bg) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, SIGKILL after grace; safe on
// nil and on an exited process.
func (p *bg) stop(grace time.Duration) {
	if p == nil || p.exited() {
		return
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done
}

// nsOutput runs argv in namespace ns and returns its stdout alone (iperf3
// prints warnings on stderr before its JSON); stderr goes into the error.
func nsOutput(ctx context.Context, ns string, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.WaitDelay = 2 * time.Second
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Run(); err != nil {
		return so.String(), fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), ns, err, strings.TrimSpace(se.String()))
	}
	return so.String(), nil
}

// waitListening polls until something listens on TCP port in ns. (A test
// connection would use up an "iperf3 -s -1".)
func waitListening(ctx context.Context, ns string, port int, p *bg) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		out, err := nsOutput(ctx, ns, "ss", "-ltnH", "sport", "=", ":"+strconv.Itoa(port))
		if err == nil && strings.TrimSpace(out) != "" {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing listens on tcp/%d in %s: %w", port, ns, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitFile waits for path to exist (a UAPI socket), failing early if p
// exits.
func waitFile(ctx context.Context, path string, timeout time.Duration, p *bg) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not appear: %w", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
