package bench

import (
	"testing"
	"time"
)

// go test -run '^$' -bench ChaCha ./bench/
// MB/s is plaintext throughput; x8/1000 gives Gbit/s.

func BenchmarkChaChaSeal1Core(b *testing.B) { benchSerial(b, (*Batch).Seal) }
func BenchmarkChaChaOpen1Core(b *testing.B) { benchSerial(b, (*Batch).Open) }

// The AllCores variants run one batch per goroutine, GOMAXPROCS of them
// (set with -cpu), so MB/s is the whole machine's ceiling.
func BenchmarkChaChaSealAllCores(b *testing.B) { benchParallel(b, (*Batch).Seal) }
func BenchmarkChaChaOpenAllCores(b *testing.B) { benchParallel(b, (*Batch).Open) }

func benchSerial(b *testing.B, op func(*Batch)) {
	batch := NewBatch()
	b.SetBytes(batch.Bytes())
	b.ResetTimer()
	for b.Loop() {
		op(batch)
	}
}

func benchParallel(b *testing.B, op func(*Batch)) {
	b.SetBytes(NewBatch().Bytes())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		batch := NewBatch()
		for pb.Next() {
			op(batch)
		}
	})
}

func TestCeilingReportsEveryLine(t *testing.T) {
	res := Ceiling(20 * time.Millisecond)
	if len(res) < 2 {
		t.Fatalf("got %d lines, want seal and open at least", len(res))
	}
	for _, r := range res {
		if r.Gbps <= 0 {
			t.Fatalf("%+v: no throughput measured", r)
		}
	}
}

func TestOpenReversesSeal(t *testing.T) {
	b := NewBatch()
	b.Seal()
	b.Open() // panics if a packet fails authentication
}
