package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Process is a command started by StartProcess: a helper such as an
// iperf3 server or a tunnel daemon other than meshd, running in a lab
// namespace. Its methods may be called from any goroutine.
type Process struct{ p *process }

// StartProcess runs argv inside namespace ns via "ip netns exec",
// appending its stdout and stderr to logPath. Like meshd under Host.Start
// it gets its own process group, so a terminal's Ctrl-C reaches only the
// caller (which then stops it deliberately), and it dies with the caller.
func StartProcess(ns, logPath string, argv ...string) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("lab: StartProcess: empty command")
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: open log of %s: %w", argv[0], err)
	}
	p, err := spawn(append([]string{"netns", "exec", ns}, argv...), logf)
	if err != nil {
		return nil, fmt.Errorf("lab: start %s in netns %s: %w", strings.Join(argv, " "), ns, err)
	}
	return &Process{p: p}, nil
}

// spawn starts "ip argv..." with its output in logf, which it closes once
// the process is reaped (or at once if it never started).
func spawn(argv []string, logf *os.File) (*process, error) {
	cmd := exec.Command("ip", argv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// terminate sends SIGTERM to the process group and waits up to grace for
// the process to exit, then sends SIGKILL and waits; killed says whether
// SIGKILL was needed.
func (p *process) terminate(grace time.Duration) (killed bool, err error) {
	if err := p.signal(syscall.SIGTERM); err != nil {
		return false, err
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return false, nil
	case <-t.C:
	}
	_ = p.signal(syscall.SIGKILL)
	<-p.done
	return true, nil
}

// Pid is the process id of "ip netns exec", which execs the command, so
// it is the command's own pid (for /proc/<pid>/stat).
func (p *Process) Pid() int { return p.p.cmd.Process.Pid }

// Exited reports whether the process has exited and been reaped.
func (p *Process) Exited() bool { return p.p.exited() }

// Err is the process's exit error once it has exited, nil before.
func (p *Process) Err() error {
	if !p.p.exited() {
		return nil
	}
	return p.p.err
}

// Stop sends SIGTERM to the process group, SIGKILL after grace, and
// returns once the process is gone; an error says it had to be killed.
// Stopping a nil or already exited process does nothing.
func (p *Process) Stop(grace time.Duration) error {
	if p == nil || p.p.exited() {
		return nil
	}
	killed, err := p.p.terminate(grace)
	if err != nil {
		return fmt.Errorf("lab: SIGTERM pid %d: %w", p.Pid(), err)
	}
	if killed {
		return fmt.Errorf("lab: pid %d ignored SIGTERM for %s and was killed", p.Pid(), grace)
	}
	return nil
}
