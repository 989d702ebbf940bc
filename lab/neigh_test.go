package lab

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func fakeNeighDirs(t *testing.T, thresh3, thresh2 int) (v4, v6 string) {
	t.Helper()
	root := t.TempDir()
	v4, v6 = filepath.Join(root, "ipv4"), filepath.Join(root, "ipv6")
	for _, d := range []string{v4, v6} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		writeInt(t, filepath.Join(d, "gc_thresh3"), thresh3)
		writeInt(t, filepath.Join(d, "gc_thresh2"), thresh2)
	}
	old := neighLimitDirs
	neighLimitDirs = []string{v4, v6}
	t.Cleanup(func() { neighLimitDirs = old })
	return v4, v6
}

func writeInt(t *testing.T, path string, n int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strconv.Itoa(n)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readInt(t *testing.T, path string) int {
	t.Helper()
	n, err := readIntFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNeighLimitsRaisedForBigLabsAndRestored(t *testing.T) {
	v4, v6 := fakeNeighDirs(t, 1024, 512)
	// 51 hosts with one segment: the size that overflowed the default.
	need := neighEntries(51, 1)
	raised, err := raiseNeighLimits(need)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{v4, v6} {
		if got := readInt(t, filepath.Join(d, "gc_thresh3")); got != 4*need {
			t.Errorf("%s gc_thresh3 = %d, want %d", d, got, 4*need)
		}
		if got := readInt(t, filepath.Join(d, "gc_thresh2")); got != 2*need {
			t.Errorf("%s gc_thresh2 = %d, want %d", d, got, 2*need)
		}
	}
	// Someone else raised one further meanwhile: theirs stays.
	writeInt(t, filepath.Join(v6, "gc_thresh3"), 100000)
	if err := restoreNeighLimits(raised); err != nil {
		t.Fatal(err)
	}
	if got := readInt(t, filepath.Join(v4, "gc_thresh3")); got != 1024 {
		t.Errorf("ipv4 gc_thresh3 = %d after restore, want 1024", got)
	}
	if got := readInt(t, filepath.Join(v4, "gc_thresh2")); got != 512 {
		t.Errorf("ipv4 gc_thresh2 = %d after restore, want 512", got)
	}
	if got := readInt(t, filepath.Join(v6, "gc_thresh3")); got != 100000 {
		t.Errorf("ipv6 gc_thresh3 = %d, another lab's value was overwritten", got)
	}
}

func TestNeighLimitsLeftAloneForSmallLabs(t *testing.T) {
	fakeNeighDirs(t, 1024, 512)
	raised, err := raiseNeighLimits(neighEntries(3, 2))
	if err != nil || len(raised) != 0 {
		t.Fatalf("a 3-host lab changed %v (err %v), want nothing", raised, err)
	}
}
