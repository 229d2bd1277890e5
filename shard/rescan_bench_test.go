package shard

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRescan: one rescan of a tree of 30000 files (1 to 4 KiB) in
// 3000 directories by a store that holds a third of them, as a node of a
// three-node cluster does. It reports the process's CPU time per rescan
// (user and system, from getrusage) besides the wall time; the system
// calls a rescan makes are best counted with strace -c -f on the test
// binary (bench/README.md).
func BenchmarkRescan(b *testing.B) {
	s := rescanBenchStore(b)
	var r0, r1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s.rescan()
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	ns := func(tv syscall.Timeval) float64 { return float64(tv.Nano()) }
	b.ReportMetric((ns(r1.Utime)-ns(r0.Utime))/float64(b.N), "user-ns/op")
	b.ReportMetric((ns(r1.Stime)-ns(r0.Stime))/float64(b.N), "sys-ns/op")
	b.ReportMetric(float64(s.Stats().Items), "items")
}

// The tree and the primed store are made once per process, so that the
// system calls of a run with -benchtime 11x less those of one with 1x are
// those of ten rescans (the framework calls a benchmark once with N=1
// first); TestMain removes them.
var (
	rescanBench struct {
		once  sync.Once
		root  string
		store *Store
	}
)

func rescanBenchStore(b *testing.B) *Store {
	rb := &rescanBench
	rb.once.Do(func() {
		const nFiles, nDirs = 30000, 3000
		root, err := os.MkdirTemp("", "shard-rescan-bench-")
		if err != nil {
			b.Fatal(err)
		}
		rb.root = root
		for d := range nDirs {
			if err := os.MkdirAll(filepath.Join(root, fmt.Sprintf("d%04d", d)), 0o755); err != nil {
				b.Fatal(err)
			}
		}
		for i := range nFiles {
			body := strings.Repeat("x", 1024+i%3072)
			if err := os.WriteFile(filepath.Join(root, fmt.Sprintf("d%04d/f%06d.bin", i%nDirs, i)), []byte(body), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		own := func(p string) bool { return !rule(0)(p) } // a third
		s, err := New(Config{Root: root, Owns: own, Rescan: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		s.Start()
		waitFor(b, time.Minute, "store ready", s.Ready)
		s.rescan() // warm
		rb.store = s
	})
	if rb.store == nil {
		b.Fatal("no store")
	}
	return rb.store
}

func TestMain(m *testing.M) {
	code := m.Run()
	if rb := &rescanBench; rb.store != nil {
		rb.store.Close()
		os.RemoveAll(rb.root)
	}
	os.Exit(code)
}
