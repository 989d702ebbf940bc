package procstat

import (
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
