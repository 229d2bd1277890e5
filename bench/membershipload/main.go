// Command membershipload is the load of bench/membership.sh: Zipf-chosen
// GETs of a site's files on several targets at once, each request counted
// in the phase (read from a file the script rewrites) in which it started.
//
//	membershipload -paths FILE -phase FILE -target name=URL... [-c 2 -rate 100 -s 1.1]
//	membershipload -paths FILE -shares
//
// FILE of paths: one "PATH SIZE" per line. A request fails on a transport
// error, a status other than 200 or a body of another size. Every response's
// X-Node header (the node that answered) is compared with the owner of the
// path on the rings n1-n3 and n1-n4 (peering.Ring, as the nodes build it).
// It runs until the phase file says "end", then prints per phase and target:
// requests, failed, bytes, and the answers by an owner on ring 3, ring 4,
// either. -shares prints, for rings 3 and 4, each node's files and bytes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shardcache/caddy-shardcache/peering"
)

type count struct{ req, fail, bytes, own3, own4, own34 int64 }

func main() {
	pathsFile := flag.String("paths", "", "file of \"PATH SIZE\" lines")
	phaseFile := flag.String("phase", "", "file holding the current phase name")
	conc := flag.Int("c", 2, "workers per target")
	rate := flag.Float64("rate", 100, "requests per second per target (0: unlimited)")
	s := flag.Float64("s", 1.1, "Zipf exponent")
	shares := flag.Bool("shares", false, "print the bytes and files each node owns on rings 3 and 4, and exit")
	var targets []string
	flag.Func("target", "name=URL (repeat)", func(v string) error { targets = append(targets, v); return nil })
	flag.Parse()

	var paths []string
	var sizes []int64
	f, err := os.Open(*pathsFile)
	if err != nil {
		fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var p string
		var n int64
		if _, err := fmt.Sscan(sc.Text(), &p, &n); err == nil {
			paths, sizes = append(paths, p), append(sizes, n)
		}
	}
	f.Close()
	if len(paths) < 2 || (len(targets) == 0 && !*shares) {
		fatal(fmt.Errorf("need paths and targets"))
	}
	ring3 := peering.NewRing(0, nil, "n1", "n2", "n3")
	ring4 := peering.NewRing(0, nil, "n1", "n2", "n3", "n4")
	owner3 := make([]string, len(paths))
	owner4 := make([]string, len(paths))
	for i, p := range paths {
		owner3[i], owner4[i] = ring3.Owner(p), ring4.Owner(p)
	}

	if *shares {
		b := map[string]int64{}
		n := map[string]int64{}
		for i := range paths {
			b["3 "+owner3[i]] += sizes[i]
			n["3 "+owner3[i]]++
			b["4 "+owner4[i]] += sizes[i]
			n["4 "+owner4[i]]++
		}
		for _, k := range []string{"3 n1", "3 n2", "3 n3", "4 n1", "4 n2", "4 n3", "4 n4"} {
			fmt.Printf("%s %d %d\n", k, n[k], b[k])
		}
		return
	}

	var phase atomic.Value
	phase.Store("start")
	go func() {
		for {
			if b, err := os.ReadFile(*phaseFile); err == nil {
				if p := strings.TrimSpace(string(b)); p != "" {
					phase.Store(p)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	var mu sync.Mutex
	counts := map[string]*count{} // "phase target"
	var order []string
	tr := &http.Transport{MaxIdleConnsPerHost: *conc, DisableCompression: true}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for ti, t := range targets {
		name, base, _ := strings.Cut(t, "=")
		var tick <-chan time.Time
		if *rate > 0 {
			tick = time.NewTicker(time.Duration(float64(time.Second) / *rate)).C
		}
		for w := 0; w < *conc; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(ti), uint64(w)))
				perm := rand.New(rand.NewPCG(1, 1)).Perm(len(paths)) // rank → file, the same for all
				z := rand.NewZipf(r, *s, 1, uint64(len(paths)-1))
				for {
					if tick != nil {
						<-tick
					}
					ph := phase.Load().(string)
					if ph == "end" {
						return
					}
					i := perm[z.Uint64()]
					resp, err := client.Get(base + paths[i])
					var n int64
					ok := err == nil
					node := ""
					if err == nil {
						n, err = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						node = resp.Header.Get("X-Node")
						ok = err == nil && resp.StatusCode == http.StatusOK && n == sizes[i]
					}
					mu.Lock()
					k := ph + " " + name
					c := counts[k]
					if c == nil {
						c = &count{}
						counts[k] = c
						order = append(order, k)
					}
					c.req++
					c.bytes += n
					if !ok {
						c.fail++
						if c.fail <= 3 {
							st := 0
							if resp != nil {
								st = resp.StatusCode
							}
							fmt.Fprintf(os.Stderr, "membershipload: %s %s%s: status %d, %d of %d bytes, err %v\n", k, base, paths[i], st, n, sizes[i], err)
						}
					} else {
						c.own3 += b2i(node == owner3[i])
						c.own4 += b2i(node == owner4[i])
						c.own34 += b2i(node == owner3[i] || node == owner4[i])
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	for _, k := range order {
		c := counts[k]
		fmt.Printf("%s %d %d %d %d %d %d\n", k, c.req, c.fail, c.bytes, c.own3, c.own4, c.own34)
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "membershipload:", err)
	os.Exit(2)
}
