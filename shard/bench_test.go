package shard

import (
	"fmt"
	weakrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"
)

func BenchmarkLookup(b *testing.B) {
	files := make(map[string]string, 1000)
	for i := range 1000 {
		files[fmt.Sprintf("d%d/f%d.css", i%10, i)] = "x"
	}
	s := newStore(b, Config{}, files)
	startReady(b, s)
	const p = "/d7/f517.css"
	if it, _, err := s.Lookup(p); err != nil || it == nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if it, _, _ := s.Lookup(p); it == nil {
				b.Fatal("miss")
			}
		}
	})
}

// mixedSizes is the benchmark tree's share of bytes per file size: a web
// site's mix, where most files are small and most bytes are in big files.
var mixedSizes = []struct {
	size  int
	share float64
}{
	{1 << 10, 0.02}, {4 << 10, 0.03}, {16 << 10, 0.05}, {64 << 10, 0.10},
	{256 << 10, 0.15}, {1 << 20, 0.20}, {4 << 20, 0.25}, {16 << 20, 0.20},
}

// makeMixedTree writes about total bytes of random files of mixed sizes
// under dir, 100 files per directory, and returns the bytes and files
// written.
func makeMixedTree(b *testing.B, dir string, total int64) (bytes int64, n int) {
	rng := weakrand.NewChaCha8([32]byte{1})
	buf := make([]byte, 16<<20)
	rng.Read(buf)
	for _, ms := range mixedSizes {
		count := max(1, int(float64(total)*ms.share)/ms.size)
		for i := range count {
			d := filepath.Join(dir, strconv.Itoa(ms.size), strconv.Itoa(i/100))
			if i%100 == 0 {
				if err := os.MkdirAll(d, 0o755); err != nil {
					b.Fatal(err)
				}
			}
			// Different bytes per file: rotate the random buffer.
			off := (n * 4099) % (len(buf) - ms.size + 1)
			if err := os.WriteFile(filepath.Join(d, strconv.Itoa(i)), buf[off:off+ms.size], 0o644); err != nil {
				b.Fatal(err)
			}
			bytes += int64(ms.size)
			n++
		}
	}
	return bytes, n
}

// BenchmarkPrime primes a tree of mixed sizes from the page cache (256 MiB
// by default; SHARD_BENCH_MB sets it) with no memory limit, or
// SHARD_BENCH_MEMORY_MB. The 1 GiB measurement, not run in CI:
//
//	SHARD_BENCH_MB=1024 go test -run '^$' -bench BenchmarkPrime -benchtime 5x ./shard/
func BenchmarkPrime(b *testing.B) {
	mb := int64(256)
	if v, err := strconv.ParseInt(os.Getenv("SHARD_BENCH_MB"), 10, 64); err == nil {
		mb = v
	}
	var budget int64
	if v, err := strconv.ParseInt(os.Getenv("SHARD_BENCH_MEMORY_MB"), 10, 64); err == nil {
		budget = v << 20
	}
	dir := b.TempDir()
	total, n := makeMixedTree(b, dir, mb<<20)
	b.Logf("tree: %d files, %d bytes", n, total)
	b.SetBytes(total)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	b.ResetTimer()
	for b.Loop() {
		s, err := New(Config{Root: dir, Memory: budget})
		if err != nil {
			b.Fatal(err)
		}
		start, cpu := time.Now(), cpuTime()
		s.Start()
		for !s.Ready() {
			time.Sleep(time.Millisecond)
		}
		d, cpu := time.Since(start), cpuTime()-cpu
		if st := s.Stats(); st.PrimedBytes != total {
			b.Fatalf("primed %d bytes; want %d", st.PrimedBytes, total)
		}
		b.ReportMetric(float64(n)/d.Seconds(), "files/s")
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&m1)
		overhead := int64(m1.HeapAlloc) - int64(m0.HeapAlloc) - s.Stats().ResidentBytes
		b.ReportMetric(float64(overhead)/float64(n), "heap-B/file")
		b.StartTimer()
		if cpu > 0 {
			// What priming costs whatever else the machine is doing: on
			// idle cores, MB/s approaches this times the cores used.
			b.ReportMetric(float64(total)/1e6/cpu.Seconds(), "MB/cpu-s")
		}
		s.Close()
	}
}
