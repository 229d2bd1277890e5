// Command gentree writes the file trees bench/run.sh serves.
//
//	gentree -bench DIR            the benchmark bodies and a few hundred other files
//	gentree -prime DIR -total N   a tree of N bytes of files of log-distributed sizes
//
// The benchmark bodies (DIR/b/1k.txt, 64k.txt, 1m.txt) are base64 text
// without braces or backslashes, so run.sh can inline them in a Caddyfile
// `respond` heredoc and have respond serve exactly the same bytes. The
// priming tree is random bytes, every file different, so that no layer can
// deduplicate it.
package main

import (
	"encoding/base64"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
)

func main() {
	benchDir := flag.String("bench", "", "write the benchmark tree to this directory")
	primeDir := flag.String("prime", "", "write the priming tree to this directory")
	total := flag.Int64("total", 1<<30, "priming tree: total bytes")
	minSize := flag.Int64("min", 1<<10, "priming tree: smallest file")
	maxSize := flag.Int64("max", 8<<20, "priming tree: largest file")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	if (*benchDir == "") == (*primeDir == "") {
		fmt.Fprintln(os.Stderr, "usage: gentree -bench DIR | -prime DIR [-total N -min N -max N]")
		os.Exit(2)
	}
	rng := rand.New(rand.NewChaCha8(seed32(*seed)))
	var err error
	if *benchDir != "" {
		err = writeBench(*benchDir, rng)
	} else {
		err = writePrime(*primeDir, rng, *total, *minSize, *maxSize)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gentree:", err)
		os.Exit(1)
	}
}

func seed32(s uint64) (b [32]byte) {
	binary.LittleEndian.PutUint64(b[:], s)
	return b
}

// text returns n bytes of base64 text in 76-column lines that neither
// starts nor ends with a newline.
func text(rng *rand.Rand, n int) []byte {
	raw := make([]byte, n)
	for i := range raw {
		raw[i] = byte(rng.Uint32())
	}
	enc := base64.StdEncoding.EncodeToString(raw) // longer than n
	out := make([]byte, 0, n)
	for i := 0; len(out) < n; i++ {
		if len(out)%77 == 76 {
			out = append(out, '\n')
		} else {
			out = append(out, enc[i])
		}
	}
	if out[n-1] == '\n' {
		out[n-1] = 'A'
	}
	return out
}

func writeBench(dir string, rng *rand.Rand) error {
	bodies := []struct {
		name string
		size int
	}{{"1k.txt", 1 << 10}, {"64k.txt", 64 << 10}, {"1m.txt", 1 << 20}}
	if err := os.MkdirAll(filepath.Join(dir, "b"), 0o755); err != nil {
		return err
	}
	for _, b := range bodies {
		if err := os.WriteFile(filepath.Join(dir, "b", b.name), text(rng, b.size), 0o644); err != nil {
			return err
		}
	}
	// A few hundred other files, so the store and file_server work on a
	// tree that is not trivial: 20 directories of 20 files, sizes
	// log-distributed from 64 B to 256 KiB, assorted types.
	exts := []string{".html", ".css", ".js", ".json", ".svg", ".txt", ".png", ".woff2"}
	for d := 0; d < 20; d++ {
		sub := filepath.Join(dir, "assets", fmt.Sprintf("d%02d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return err
		}
		for f := 0; f < 20; f++ {
			n := int(logSize(rng, 64, 256<<10))
			name := fmt.Sprintf("f%03d%s", f, exts[(d+f)%len(exts)])
			if f == 0 {
				name = "index.html"
			}
			if err := os.WriteFile(filepath.Join(sub, name), text(rng, n), 0o644); err != nil {
				return err
			}
		}
	}
	return os.WriteFile(filepath.Join(dir, "index.html"), []byte("<!doctype html><title>bench</title>\n"), 0o644)
}

// logSize draws a size log-uniformly from [lo, hi].
func logSize(rng *rand.Rand, lo, hi int64) int64 {
	l := math.Log(float64(lo)) + rng.Float64()*(math.Log(float64(hi))-math.Log(float64(lo)))
	return min(max(int64(math.Exp(l)), lo), hi)
}

func writePrime(dir string, rng *rand.Rand, total, lo, hi int64) error {
	// Every file is a window of a 16 MiB random pool at a random offset,
	// with its own index stamped into its first 8 bytes: distinct files,
	// made at disk speed rather than at random-number speed.
	pool := make([]byte, 16<<20+hi)
	for i := 0; i+8 <= len(pool); i += 8 {
		binary.LittleEndian.PutUint64(pool[i:], rng.Uint64())
	}
	type job struct {
		path string
		off  int64
		size int64
		idx  uint64
	}
	jobs := make(chan job, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				buf := make([]byte, j.size)
				copy(buf, pool[j.off:j.off+j.size])
				if j.size >= 8 {
					binary.LittleEndian.PutUint64(buf, j.idx^0x9e3779b97f4a7c15)
				}
				if err := os.WriteFile(j.path, buf, 0o644); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	const dirs = 64
	for d := 0; d < dirs; d++ {
		if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("p%02d", d)), 0o755); err != nil {
			close(jobs)
			wg.Wait()
			return err
		}
	}
	exts := []string{".bin", ".jpg", ".js", ".css", ".html", ".mp4", ".woff2", ".json"}
	var sum int64
	var n uint64
	for sum < total {
		size := min(logSize(rng, lo, hi), total-sum)
		path := filepath.Join(dir, fmt.Sprintf("p%02d", n%dirs), fmt.Sprintf("f%05d%s", n, exts[n%uint64(len(exts))]))
		jobs <- job{path: path, off: rng.Int64N(16 << 20), size: size, idx: n}
		sum += size
		n++
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	fmt.Printf("%d files, %d bytes\n", n, sum)
	return nil
}
