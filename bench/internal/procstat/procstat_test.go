package procstat

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	stat := "4242 (meshd (x) y) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 75 0 0 20 0 12 0 3141 1000000 500 18446744073709551615"
	got, err := ParseStatCPU([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	if want := 3250 * time.Millisecond; got != want {
		t.Errorf("utime 250 + stime 75 ticks = %s, want %s", got, want)
	}
	for _, bad := range []string{"4242 meshd S 1", "4242 (meshd) S 1 2 3", "4242 (meshd) S 1 4242 4242 0 -1 4194560 2000 0 0 0 x 75"} {
		if _, err := ParseStatCPU([]byte(bad)); err == nil {
			t.Errorf("ParseStatCPU(%q) accepted", bad)
		}
	}
}

func TestParseMachineCPU(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	busy, total, err := ParseMachineCPU([]byte("cpu  100 10 50 800 20 5 5 10 40 2\ncpu0 1 2 3\n"))
	if err != nil {
		t.Fatal(err)
	}
	if busy != 180 || total != 1000 {
		t.Errorf("busy %d total %d, want 180 and 1000 (guest time is already in user)", busy, total)
	}
	if _, _, err := ParseMachineCPU([]byte("intr 1 2 3\n")); err == nil {
		t.Error("a first line that is not cpu accepted")
	}
}

// TestPinThreads: every thread of a running Go program ends up allowed
// on the one CPU only, as /proc reports it.
func TestPinThreads(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.benchtime=1x", "-test.bench=^BenchmarkIdleForPinning$")
	cmd.Env = append(os.Environ(), "PROCSTAT_IDLE=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	time.Sleep(100 * time.Millisecond) // the runtime's threads start
	if err := PinThreads(cmd.Process.Pid, 0); err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", cmd.Process.Pid, task.Name()))
		if err != nil {
			continue // exited meanwhile
		}
		if !strings.Contains(string(b), "Cpus_allowed_list:\t0\n") {
			t.Errorf("thread %s not pinned to CPU 0:\n%s", task.Name(), b)
		}
	}
	if err := PinThreads(1<<22+1, 0); err == nil {
		t.Error("pinning a process that does not exist succeeded")
	}
}

// BenchmarkIdleForPinning is TestPinThreads' subject: a Go process that
// waits to be killed.
func BenchmarkIdleForPinning(b *testing.B) {
	if os.Getenv("PROCSTAT_IDLE") == "" {
		b.Skip("run by TestPinThreads")
	}
	time.Sleep(time.Minute)
}
