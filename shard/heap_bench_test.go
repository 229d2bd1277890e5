package shard

import (
	"bufio"
	"fmt"
	"hash/fnv"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkPrimedHeap primes the tree SHARDCACHE_HEAP_TREE names (all of
// it: a budget of twice its size) and reports what the Go heap holds then
// (runtime/metrics /memory/classes/heap/objects:bytes, after a forced
// collection), how long a forced collection takes (median of 5), the
// process's RSS and the bytes the store holds. bench/run.sh runs it on a
// 4 GiB tree for its heap/GC line (the "heapgc:" line it prints). Without
// SHARDCACHE_HEAP_TREE it is skipped.
//
// SHARDCACHE_HEAP_HOLD=k/3 holds about k thirds of the files (those whose
// path hashes to less than k mod 3), as a node of a cluster does, and the
// heap per held item ("B/item") is then mostly metadata: with a tree of
// small files (bench/gensmall), what issue 12's owned-file target counts,
// the store's share of the directories included. SHARDCACHE_HEAP_PROFILE=FILE
// writes a heap profile there once primed.
func BenchmarkPrimedHeap(b *testing.B) {
	dir := os.Getenv("SHARDCACHE_HEAP_TREE")
	if dir == "" {
		b.Skip("SHARDCACHE_HEAP_TREE is not set (a directory to prime; bench/run.sh sets it)")
	}
	var total int64
	if v := os.Getenv("SHARDCACHE_HEAP_BYTES"); v != "" {
		total, _ = strconv.ParseInt(v, 10, 64)
	}
	if os.Getenv("SHARDCACHE_HEAP_PROFILE") != "" {
		runtime.MemProfileRate = 4096 // finer than the default 512 KiB for small records
	}
	var owns func(string) bool
	if v := os.Getenv("SHARDCACHE_HEAP_HOLD"); v != "" {
		k, err := strconv.Atoi(strings.TrimSuffix(v, "/3"))
		if err != nil || !strings.HasSuffix(v, "/3") || k < 1 || k > 3 {
			b.Fatalf("SHARDCACHE_HEAP_HOLD=%q: want 1/3, 2/3 or 3/3", v)
		}
		owns = func(p string) bool {
			h := fnv.New32a()
			h.Write([]byte(p))
			return h.Sum32()%3 < uint32(k)
		}
	}
	s, err := New(Config{Root: dir, Memory: max(2*total, 0), Owns: owns})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	s.Start()
	for !s.Ready() {
		if time.Since(start) > 10*time.Minute {
			b.Fatal("not primed after 10 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	primed := time.Since(start)
	for b.Loop() {
		runtime.GC()
	}
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(sample)
	heap := sample[0].Value.Uint64()
	var gcs []time.Duration
	for range 5 {
		t0 := time.Now()
		runtime.GC()
		gcs = append(gcs, time.Since(t0))
	}
	slices.Sort(gcs)
	gc := gcs[len(gcs)/2]
	rss := rssBytes()
	st := s.Stats()
	b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(gc.Microseconds())/1000, "gc-ms")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	b.ReportMetric(float64(st.ResidentBytes)/(1<<20), "held-MiB")
	if st.Items > 0 {
		b.ReportMetric(float64(heap)/float64(st.Items), "B/item")
	}
	if f := os.Getenv("SHARDCACHE_HEAP_PROFILE"); f != "" {
		// What holds the heap, by allocation site (go tool pprof
		// -sample_index=inuse_space): sampled at the rate set below.
		if err := writeHeapProfile(f); err != nil {
			b.Fatal(err)
		}
	}
	// Where the rest of the RSS is: the runtime's view of its own memory
	// (mapped and not returned: objects, free and unused span space, its
	// metadata) beside the arenas' pages.
	classes := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/free:bytes"}, {Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/metadata/other:bytes"}, {Name: "/memory/classes/metadata/mspan/inuse:bytes"},
		{Name: "/memory/classes/other:bytes"}}
	metrics.Read(classes)
	fmt.Printf("runtime: total-released=%d free=%d unused=%d metadata_other=%d mspan=%d other=%d arenas_used=%d\n",
		classes[0].Value.Uint64()-classes[1].Value.Uint64(), classes[2].Value.Uint64(), classes[3].Value.Uint64(),
		classes[4].Value.Uint64(), classes[5].Value.Uint64(), classes[6].Value.Uint64(), Arenas().Used)
	fmt.Printf("heapgc: items=%d held=%d heap_objects=%d gc_ms=%.2f rss=%d primed_s=%.1f\n",
		st.Items, st.ResidentBytes, heap, float64(gc.Microseconds())/1000, rss, primed.Seconds())
	runtime.KeepAlive(s)
}

// writeHeapProfile writes the heap profile as of the last collection to
// the file name.
func writeHeapProfile(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// rssBytes is the process's resident set size (Linux; 0 elsewhere).
func rssBytes() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
