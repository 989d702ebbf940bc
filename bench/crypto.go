// Package bench holds meshd's benchmark harness: the ChaCha20-Poly1305
// ceiling (this file, also run as Go benchmarks in crypto_test.go) and,
// under cmd/meshbench, the namespace benchmarks that bench/*.sh drive.
package bench

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"runtime"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// The crypto ceiling models WireGuard's data path: every packet of a
// batch is sealed (or opened) on its own with a 64-bit counter nonce, no
// additional data, as wireguard-go does for a 64 KiB GSO batch of
// MTU-sized packets.
const (
	PacketSize = 1420
	BatchBytes = 64 << 10
	// BatchPackets is how many whole PacketSize packets fit in a batch.
	BatchPackets = BatchBytes / PacketSize
)

// Batch is one worker's buffers; not safe for concurrent use.
type Batch struct {
	aead    cipher.AEAD
	plain   [][]byte
	sealed  [][]byte
	scratch []byte
	counter uint64
}

// NewBatch returns a batch of BatchPackets random packets under a random
// key; Open-side ciphertexts are prepared once up front.
func NewBatch() *Batch {
	key := make([]byte, chacha20poly1305.KeySize)
	rand.Read(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		panic(err) // only on a wrong key size
	}
	b := &Batch{aead: aead, scratch: make([]byte, 0, PacketSize+aead.Overhead())}
	for i := 0; i < BatchPackets; i++ {
		p := make([]byte, PacketSize)
		rand.Read(p)
		b.plain = append(b.plain, p)
		b.sealed = append(b.sealed, aead.Seal(nil, nonce(uint64(i)), p, nil))
	}
	return b
}

// Bytes is the plaintext size of one batch.
func (b *Batch) Bytes() int64 { return int64(BatchPackets * PacketSize) }

func nonce(counter uint64) []byte {
	var n [chacha20poly1305.NonceSize]byte
	binary.LittleEndian.PutUint64(n[4:], counter)
	return n[:]
}

// Seal encrypts every packet of the batch once.
func (b *Batch) Seal() {
	var n [chacha20poly1305.NonceSize]byte
	for _, p := range b.plain {
		binary.LittleEndian.PutUint64(n[4:], b.counter)
		b.counter++
		b.scratch = b.aead.Seal(b.scratch[:0], n[:], p, nil)
	}
}

// Open authenticates and decrypts every packet of the batch once.
func (b *Batch) Open() {
	var n [chacha20poly1305.NonceSize]byte
	for i, c := range b.sealed {
		binary.LittleEndian.PutUint64(n[4:], uint64(i))
		var err error
		b.scratch, err = b.aead.Open(b.scratch[:0], n[:], c, nil)
		if err != nil {
			panic("chacha20poly1305: open of a freshly sealed packet failed: " + err.Error())
		}
	}
}

// CeilingResult is one line of the crypto ceiling.
type CeilingResult struct {
	Op      string  // "seal" or "open"
	Workers int     // goroutines, each busy on its own batch
	Gbps    float64 // plaintext Gbit/s, all workers together
}

// Ceiling measures seal and open throughput for about d each, with one
// worker and with one worker per CPU (GOMAXPROCS).
func Ceiling(d time.Duration) []CeilingResult {
	var out []CeilingResult
	for _, op := range []string{"seal", "open"} {
		for _, w := range uniq(1, runtime.GOMAXPROCS(0)) {
			out = append(out, CeilingResult{Op: op, Workers: w, Gbps: measure(op, w, d)})
		}
	}
	return out
}

func uniq(a, b int) []int {
	if a == b {
		return []int{a}
	}
	return []int{a, b}
}

func measure(op string, workers int, d time.Duration) float64 {
	batches := make([]*Batch, workers)
	for i := range batches {
		batches[i] = NewBatch()
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	start := time.Now()
	deadline := start.Add(d)
	for _, b := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n int64
			for time.Now().Before(deadline) {
				for range 16 { // amortise the clock read
					if op == "seal" {
						b.Seal()
					} else {
						b.Open()
					}
					n += b.Bytes()
				}
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(total) * 8 / time.Since(start).Seconds() / 1e9
}
