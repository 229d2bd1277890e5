// Command scaleget makes one full pass of GETs over the tree bench/gensmall
// wrote (file i is d<i mod dirs>/f<i>.bin) against one node, c requests in
// flight, and checks each answer: status 200 and as many bytes as the file
// holds on disk. It prints one line of JSON: requests made, whether that is
// every file (complete), errors, seconds, requests per second, and the
// first few errors. With -t it stops starting requests after that long.
//
//	scaleget -url http://127.0.0.1:8080 -root DIR -n 1000000 -dirs 100000 -c 16 [-t 5m]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	base := flag.String("url", "", "the node's base URL")
	root := flag.String("root", "", "the tree on disk (sizes are checked against it)")
	n := flag.Int("n", 0, "files in the tree")
	dirs := flag.Int("dirs", 1000, "directories the files are spread over")
	conc := flag.Int("c", 16, "requests in flight")
	limit := flag.Duration("t", 0, "stop starting requests after this long (0: no limit)")
	flag.Parse()
	if *base == "" || *root == "" || *n <= 0 {
		flag.Usage()
		os.Exit(2)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: *conc, MaxConnsPerHost: *conc, DisableCompression: true}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	var next, errs atomic.Int64
	var mu sync.Mutex
	var samples []string
	fail := func(format string, args ...any) {
		if errs.Add(1) <= 5 {
			mu.Lock()
			samples = append(samples, fmt.Sprintf(format, args...))
			mu.Unlock()
		}
	}
	buf := make([][]byte, *conc)
	start := time.Now()
	var done atomic.Int64
	var wg sync.WaitGroup
	for w := range *conc {
		buf[w] = make([]byte, 64<<10)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if *limit > 0 && time.Since(start) > *limit {
					return
				}
				i := int(next.Add(1) - 1)
				if i >= *n {
					return
				}
				done.Add(1)
				rel := fmt.Sprintf("d%04d/f%06d.bin", i%*dirs, i)
				fi, err := os.Stat(filepath.Join(*root, rel))
				if err != nil {
					fail("%s: %v", rel, err)
					continue
				}
				resp, err := client.Get(*base + "/" + rel)
				if err != nil {
					fail("%s: %v", rel, err)
					continue
				}
				got, err := io.CopyBuffer(io.Discard, resp.Body, buf[w])
				resp.Body.Close()
				switch {
				case err != nil:
					fail("%s: reading: %v", rel, err)
				case resp.StatusCode != http.StatusOK:
					fail("%s: status %d", rel, resp.StatusCode)
				case got != fi.Size():
					fail("%s: %d bytes, want %d", rel, got, fi.Size())
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"requests": done.Load(), "complete": done.Load() == int64(*n), "errors": errs.Load(), "seconds": secs,
		"rps": float64(done.Load()) / secs, "samples": samples,
	})
}
