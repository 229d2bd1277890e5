// Command zipfload writes the item tree of bench/director.sh and drives a
// Zipf-distributed request mix over it.
//
//	zipfload gen -dir DIR [-n 10000 -min 1024 -max 8192 -seed 1]
//	zipfload run -base http://127.0.0.1:PORT [-n 10000 -s 1.1 -count 60000 -c 32 -seed 1 -timeout 120s]
//
// gen writes n files of random bytes, of sizes uniform in [min, max], at
// DIR/dNN/item-NNNNN.bin (100 directories). Everything is a function of
// the seed.
//
// run makes the request list first, deterministically (the same seed, n
// and s give the same list): count draws of a Zipf rank (math/rand/v2,
// exponent s, v = 1) mapped through a fixed permutation of the items, so
// that the popular items are spread over the tree rather than all in d00.
// Then c workers send the requests in list order over keep-alive
// connections until the list is done or the timeout passes, and it prints
// one line of key=value pairs: requests, errors (transport errors and
// statuses other than 200), seconds, rps, bytes.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "gen":
		gen(os.Args[2:])
	case "run":
		run(os.Args[2:])
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: zipfload gen -dir DIR [-n N -min B -max B -seed S]")
	fmt.Fprintln(os.Stderr, "       zipfload run -base URL [-n N -s EXP -count N -c N -seed S -timeout D]")
	os.Exit(2)
}

// itemPath is the URL path (and the path under the tree) of item i.
func itemPath(i int) string { return fmt.Sprintf("/d%02d/item-%05d.bin", i%100, i) }

func gen(args []string) {
	fs := flag.NewFlagSet("gen", flag.ExitOnError)
	dir := fs.String("dir", "", "directory to write the tree to")
	n := fs.Int("n", 10000, "number of items")
	minSize := fs.Int("min", 1<<10, "smallest item, bytes")
	maxSize := fs.Int("max", 8<<10, "largest item, bytes")
	seed := fs.Uint64("seed", 1, "random seed")
	_ = fs.Parse(args)
	if *dir == "" || *n <= 0 || *minSize <= 0 || *maxSize < *minSize {
		usage()
	}
	r := rand.New(rand.NewPCG(*seed, 0x5eed))
	var total int64
	for i := 0; i < *n; i++ {
		size := *minSize + r.IntN(*maxSize-*minSize+1)
		b := make([]byte, size)
		for j := 0; j < size; j += 8 {
			var w [8]byte
			binary.LittleEndian.PutUint64(w[:], r.Uint64())
			copy(b[j:], w[:])
		}
		p := filepath.Join(*dir, filepath.FromSlash(itemPath(i)[1:]))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			fatal(err)
		}
		total += int64(size)
	}
	fmt.Printf("items=%d bytes=%d\n", *n, total)
}

// requestList returns the count item paths to request, in order.
func requestList(n, count int, s float64, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, 0x21bf))
	perm := r.Perm(n) // rank → item
	z := rand.NewZipf(r, s, 1, uint64(n-1))
	out := make([]string, count)
	for i := range out {
		out[i] = itemPath(perm[z.Uint64()])
	}
	return out
}

func run(args []string) {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	base := fs.String("base", "", "http://host:port to send the requests to")
	n := fs.Int("n", 10000, "number of items (as generated)")
	s := fs.Float64("s", 1.1, "Zipf exponent (> 1)")
	count := fs.Int("count", 60000, "requests to send")
	conc := fs.Int("c", 32, "concurrent workers (one keep-alive connection each)")
	seed := fs.Uint64("seed", 1, "random seed of the request list")
	timeout := fs.Duration("timeout", 120*time.Second, "stop after this long even if requests remain")
	_ = fs.Parse(args)
	if *base == "" || *n <= 1 || *s <= 1 || *count <= 0 || *conc <= 0 {
		usage()
	}
	list := requestList(*n, *count, *s, *seed)
	tr := &http.Transport{
		MaxIdleConns:        *conc,
		MaxIdleConnsPerHost: *conc,
		MaxConnsPerHost:     *conc,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var next, done, errs, bytes atomic.Int64
	stop := time.Now().Add(*timeout)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(list)) || time.Now().After(stop) {
					return
				}
				resp, err := client.Get(*base + list[i])
				if err != nil {
					errs.Add(1)
					continue
				}
				k, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					errs.Add(1)
				}
				bytes.Add(k)
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	tr.CloseIdleConnections()
	fmt.Printf("requests=%d errors=%d seconds=%.3f rps=%.0f bytes=%d\n",
		done.Load(), errs.Load(), secs, float64(done.Load())/secs, bytes.Load())
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "zipfload:", err)
	os.Exit(1)
}
