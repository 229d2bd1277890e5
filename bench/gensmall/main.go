// Command gensmall writes the trees bench/memory.sh serves: n files of
// random bytes (every file different), sizes drawn uniformly from
// [min, max], spread over a number of directories.
//
//	gensmall -dir DIR -n 100000 -dirs 1000 -min 256 -max 4096
//	gensmall -dir DIR -n 4 -dirs 1 -min 201326592 -max 201326592
//
// It prints one line of JSON: files, directories, total bytes, and what
// those bodies cost as Go heap objects ("rounded": each size rounded up to
// its runtime size class, or to whole 8 KiB pages above 32 KiB), so that
// memory.sh can tell size-class rounding from the store's own overhead.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
)

// sizeClasses are Go's small-object size classes (internal/runtime/gc/sizeclasses.go,
// Go 1.26); larger objects take whole 8 KiB pages.
var sizeClasses = []int64{
	8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256,
	288, 320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280,
	1408, 1536, 1792, 2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528,
	6784, 6912, 8192, 9472, 9728, 10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072,
	20480, 21760, 24576, 27264, 28672, 32768,
}

// rounded returns the heap bytes an allocation of n bytes occupies.
func rounded(n int64) int64 {
	if n == 0 {
		return 0
	}
	if n > sizeClasses[len(sizeClasses)-1] {
		return (n + 8191) &^ 8191
	}
	i := sort.Search(len(sizeClasses), func(i int) bool { return sizeClasses[i] >= n })
	return sizeClasses[i]
}

func main() {
	dir := flag.String("dir", "", "write the tree to this directory (created)")
	n := flag.Int("n", 100000, "number of files")
	dirs := flag.Int("dirs", 1000, "number of directories the files are spread over")
	minSize := flag.Int64("min", 256, "smallest file, bytes")
	maxSize := flag.Int64("max", 4096, "largest file, bytes")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	if *dir == "" || *n < 1 || *dirs < 1 || *minSize < 0 || *maxSize < *minSize {
		fmt.Fprintln(os.Stderr, "usage: gensmall -dir DIR [-n N -dirs N -min BYTES -max BYTES -seed N]")
		os.Exit(2)
	}
	if err := run(*dir, *n, *dirs, *minSize, *maxSize, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "gensmall:", err)
		os.Exit(1)
	}
}

func run(dir string, n, dirs int, lo, hi int64, seed uint64) error {
	dirs = min(dirs, n)
	for d := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("d%04d", d)), 0o755); err != nil {
			return err
		}
	}
	// Sizes first, from one generator, so the tree is the same for a seed
	// whatever the number of writers.
	sizes := make([]int64, n)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	var total, round int64
	for i := range sizes {
		sizes[i] = lo + rng.Int64N(hi-lo+1)
		total += sizes[i]
		round += rounded(sizes[i])
	}

	jobs := make(chan int, 256)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range max(1, min(8, runtime.NumCPU()*2)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for i := range jobs {
				if err := writeFile(filepath.Join(dir, fmt.Sprintf("d%04d", i%dirs), fmt.Sprintf("f%06d.bin", i)),
					sizes[i], seed, uint64(i), &buf); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]int64{
		"files": int64(n), "dirs": int64(dirs), "bytes": total, "rounded": round,
	})
}

// writeFile writes size random bytes (ChaCha8, keyed by seed and file
// index: every file different) to path, at most 4 MiB at a time.
func writeFile(path string, size int64, seed, idx uint64, buf *[]byte) error {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[0:], seed)
	binary.LittleEndian.PutUint64(key[8:], idx)
	src := rand.NewChaCha8(key)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	chunk := min(size, 4<<20)
	if int64(cap(*buf)) < chunk {
		*buf = make([]byte, chunk)
	}
	for left := size; left > 0; {
		b := (*buf)[:min(left, chunk)]
		_, _ = src.Read(b) // never fails
		if _, err := f.Write(b); err != nil {
			f.Close()
			return err
		}
		left -= int64(len(b))
	}
	return f.Close()
}
