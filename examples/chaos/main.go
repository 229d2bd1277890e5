// Command chaos is the load generator and observer of examples/chaos.sh.
//
// It sends a bounded load of GET requests to a URL (the content director),
// for files of a local directory (the site every node serves), and checks
// every body byte for byte. Meanwhile it polls each node's admin endpoint
// (GET /shardcache/status) every 20ms and notes when a node sees a member
// go down or come back. The script writes what it does to an events file,
// one line each: "<unix-ms> kill <node>", "<unix-ms> restart <node>",
// "<unix-ms> reload <node>", and "stop" to end the run. At the end chaos
// prints one line: requests sent, failed (not 200, or a transport error),
// wrong (200 with other bytes), the failures in the 2 s after each kill and
// after it, and how long the other nodes took to see the killed one down.
//
//	go run ./examples/chaos -url http://127.0.0.1:8080 -site examples/single/site \
//		-admin n1=127.0.0.1:2991,n2=127.0.0.1:2992,n3=127.0.0.1:2993,director=127.0.0.1:2990 \
//		-events /tmp/events
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	at     time.Time
	failed bool
	wrong  bool
	why    string
}

type event struct {
	at   time.Time
	what string // kill, restart, reload
	node string
}

// observation: at time at, observer saw member up or not.
type observation struct {
	at       time.Time
	observer string
	member   string
	up       bool
	ready    bool
}

func main() {
	url := flag.String("url", "http://127.0.0.1:8080", "where to send the load (the director)")
	site := flag.String("site", "examples/single/site", "the directory every node serves")
	admins := flag.String("admin", "", "name=host:port of each node's admin endpoint, comma-separated")
	eventsPath := flag.String("events", "", "the events file the script writes")
	workers := flag.Int("workers", 8, "concurrent requests")
	budget := flag.Int64("budget", 300000, "the most requests to send")
	maxDur := flag.Duration("max", 60*time.Second, "the longest run")
	flag.Parse()

	files := map[string][]byte{}
	err := filepath.WalkDir(*site, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(p, ".gz") {
			if _, err := os.Stat(strings.TrimSuffix(p, ".gz")); err == nil {
				return nil // a precompressed sidecar: not served under its own name
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(*site, p)
		files["/"+filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil || len(files) == 0 {
		fmt.Fprintf(os.Stderr, "chaos: reading %s: %v (%d files)\n", *site, err, len(files))
		os.Exit(2)
	}
	var paths []string
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	time.AfterFunc(*maxDur, halt)

	// The observers.
	var obsMu sync.Mutex
	var obs []observation
	var pollWG sync.WaitGroup
	for _, kv := range strings.Split(*admins, ",") {
		name, addr, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		pollWG.Add(1)
		go func() {
			defer pollWG.Done()
			c := &http.Client{Timeout: 500 * time.Millisecond}
			last := map[string]string{}
			for {
				select {
				case <-stop:
					return
				default:
				}
				var st struct {
					Members []struct {
						Name  string `json:"name"`
						Up    bool   `json:"up"`
						Ready bool   `json:"ready"`
					} `json:"members"`
				}
				if resp, err := c.Get("http://" + addr + "/shardcache/status"); err == nil {
					err = json.NewDecoder(resp.Body).Decode(&st)
					resp.Body.Close()
					if err == nil {
						now := time.Now()
						for _, m := range st.Members {
							k := fmt.Sprint(m.Up, m.Ready)
							if last[m.Name] != k {
								last[m.Name] = k
								obsMu.Lock()
								obs = append(obs, observation{now, name, m.Name, m.Up, m.Ready})
								obsMu.Unlock()
							}
						}
					}
				} else {
					clear(last) // restarted: start over
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}

	// The events file: "stop" ends the run.
	var events []event
	readEvents := func() bool {
		b, err := os.ReadFile(*eventsPath)
		if err != nil {
			return false
		}
		events = events[:0]
		stopped := false
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 1 && f[0] == "stop" {
				stopped = true
			}
			if len(f) == 3 {
				ms, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					events = append(events, event{time.UnixMilli(ms), f[1], f[2]})
				}
			}
		}
		return stopped
	}
	if *eventsPath != "" {
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				if readEvents() {
					halt()
					return
				}
			}
		}()
	}

	// The load.
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: *workers * 2}
	client := &http.Client{Timeout: 10 * time.Second, Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var left atomic.Int64
	left.Store(*budget)
	var resMu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	started := time.Now()
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			var mine []result
			for left.Add(-1) >= 0 {
				select {
				case <-stop:
					left.Store(0)
					continue
				default:
				}
				p := paths[r.IntN(len(paths))]
				res := result{at: time.Now()}
				resp, err := client.Get(*url + p)
				if err != nil {
					res.failed, res.why = true, err.Error()
				} else {
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch {
					case err != nil:
						res.failed, res.why = true, err.Error()
					case resp.StatusCode != http.StatusOK:
						res.failed, res.why = true, resp.Status
					case !bytes.Equal(body, files[p]):
						res.wrong, res.why = true, fmt.Sprintf("%s: %d bytes, want %d", p, len(body), len(files[p]))
					}
				}
				mine = append(mine, res)
			}
			resMu.Lock()
			results = append(results, mine...)
			resMu.Unlock()
		}()
	}
	wg.Wait()
	halt()
	pollWG.Wait()
	elapsed := time.Since(started)
	if *eventsPath != "" {
		readEvents()
	}

	// The report.
	var sent, failed, wrong int
	for _, r := range results {
		sent++
		if r.failed {
			failed++
		}
		if r.wrong {
			wrong++
		}
	}
	line := fmt.Sprintf("sent %d, failed %d, wrong %d in %s", sent, failed, wrong, elapsed.Round(100*time.Millisecond))
	reasons := map[string]int{}
	for _, ev := range events {
		switch ev.what {
		case "kill":
			var in2s, later int
			for _, r := range results {
				if !r.failed || r.at.Before(ev.at) {
					continue
				}
				if r.at.Before(ev.at.Add(2 * time.Second)) {
					in2s++
				} else {
					later++
				}
				reasons[shortReason(r.why)]++
			}
			line += fmt.Sprintf("; kill -9 %s: failed in the 2s after it %d, later %d", ev.node, in2s, later)
			// Time until each other node saw it down.
			seen := map[string]time.Duration{}
			for _, o := range obs {
				if o.member == ev.node && !o.up && !o.at.Before(ev.at) && o.observer != ev.node {
					if _, ok := seen[o.observer]; !ok {
						seen[o.observer] = o.at.Sub(ev.at)
					}
				}
			}
			var parts []string
			var worst time.Duration
			for name, d := range seen {
				parts = append(parts, fmt.Sprintf("%s %dms", name, d.Milliseconds()))
				worst = max(worst, d)
			}
			sort.Strings(parts)
			if len(parts) > 0 {
				line += fmt.Sprintf(", marked down after %dms (%s)", worst.Milliseconds(), strings.Join(parts, ", "))
			} else {
				line += ", never seen down"
			}
		case "restart":
			var ready time.Duration = -1
			for _, o := range obs {
				if o.member == ev.node && o.up && o.ready && !o.at.Before(ev.at) {
					d := o.at.Sub(ev.at)
					if ready < 0 || d < ready {
						ready = d
					}
				}
			}
			if ready >= 0 {
				line += fmt.Sprintf("; restarted %s seen up and ready after %dms", ev.node, ready.Milliseconds())
			}
		case "reload":
			n := 0
			for _, r := range results {
				if r.failed && !r.at.Before(ev.at) && r.at.Before(ev.at.Add(2*time.Second)) {
					n++
				}
			}
			line += fmt.Sprintf("; reload %s: failed in the 2s after it %d", ev.node, n)
		}
	}
	fmt.Println(line)
	if len(reasons) > 0 {
		var parts []string
		for k, v := range reasons {
			parts = append(parts, fmt.Sprintf("%s ×%d", k, v))
		}
		sort.Strings(parts)
		fmt.Println("  failures after the kill: " + strings.Join(parts, ", "))
	}
	for _, r := range results {
		if r.wrong {
			fmt.Println("  wrong body: " + r.why)
			break
		}
	}
	if wrong > 0 {
		os.Exit(1)
	}
}

func shortReason(s string) string {
	switch {
	case strings.Contains(s, "connection refused"):
		return "connection refused"
	case strings.Contains(s, "connection reset"):
		return "connection reset"
	case strings.Contains(s, "EOF"):
		return "EOF"
	}
	if len(s) > 40 {
		return s[:40]
	}
	return s
}
