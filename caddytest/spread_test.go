package integration

// Spreading hot paths behind the director, end to end: three content nodes
// and a director with two sites, one with `lb_policy shardcache` (hot
// paths spread) and one with `lb_policy shardcache { spread off }` (every
// request to its path's owner, as before spreading), under a bounded Zipf
// load (s = 1.1 over 10,000 files of 1-4 KiB, every body checked). Run it
// with
//
//	CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -count=1 -run TestSpread -v ./caddytest/

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	spreadFiles = 10_000
	spreadZipfS = 1.1
	// spreadWarm requests let the director learn the popular paths and
	// the members fetch them; spreadMeasured are counted.
	spreadWarm     = 20_000
	spreadMeasured = 40_000
	spreadWorkers  = 16
)

// spreadSite is 10,000 files of 1-4 KiB, each unique, named like bench's
// zipfload items.
func spreadSite() clusterSite {
	r := rand.New(rand.NewPCG(13, 17))
	site := clusterSite{}
	for i := range spreadFiles {
		p := fmt.Sprintf("d%02d/item-%05d.bin", i%100, i)
		b := make([]byte, 1024+r.IntN(3072))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		copy(b, p)
		site[p] = b
	}
	return site
}

// spreadStatusView is what the test reads of a status: spread paths on the
// director, push counters and tiers on the nodes.
type spreadStatusView struct {
	Spread []struct {
		Path     string   `json:"path"`
		Share    float64  `json:"share"`
		Width    int      `json:"width"`
		Members  []string `json:"members"`
		Requests int64    `json:"requests"`
	} `json:"spread"`
	Push *struct {
		Carried int   `json:"carried"`
		Items   int64 `json:"pushed_items"`
		Bytes   int64 `json:"pushed_bytes"`
	} `json:"push"`
	Groups []clusterGroupStatus `json:"groups"`
}

// spreadCounters is one node's requests, bytes served, and bytes that
// crossed the SAN to it (peer fetches and pushes).
type spreadCounters struct{ requests, served, san int64 }

func readSpreadCounters(t *testing.T, n *clusterNode) spreadCounters {
	t.Helper()
	var st spreadStatusView
	if err := n.adminGet("/shardcache/status", &st); err != nil {
		t.Fatal(err)
	}
	var c spreadCounters
	for _, g := range st.Groups {
		for _, tier := range tierNames {
			c.requests += g.Tiers[tier].Requests
			c.served += g.Tiers[tier].Bytes
		}
		c.san += g.Tiers["peer"].Bytes
	}
	if st.Push != nil {
		c.san += st.Push.Bytes
	}
	return c
}

// spreadLoad sends count GETs of Zipf-chosen paths to base from
// spreadWorkers connections and checks every body. The changed path (if
// any) may answer its old bytes until changedAt + 2 s, and must answer its
// new ones after that.
type spreadLoad struct {
	site    clusterSite
	ranked  []string // rank → path
	changed atomic.Pointer[spreadChange]

	wrong   atomic.Int64
	stale   atomic.Int64
	errs    atomic.Int64
	mu      sync.Mutex
	samples []string
	client  *http.Client
}

type spreadChange struct {
	path     string
	old, new []byte
	at       time.Time
}

func newSpreadLoad(site clusterSite) *spreadLoad {
	paths := site.paths()
	sort.Strings(paths)
	r := rand.New(rand.NewPCG(5, 5))
	r.Shuffle(len(paths), func(i, j int) { paths[i], paths[j] = paths[j], paths[i] })
	return &spreadLoad{site: site, ranked: paths, client: &http.Client{Timeout: 10 * time.Second, CheckRedirect: noRedirects,
		Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64,
			DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}}}
}

func (l *spreadLoad) fail(what string) {
	l.mu.Lock()
	if len(l.samples) < 5 {
		l.samples = append(l.samples, what)
	}
	l.mu.Unlock()
}

func (l *spreadLoad) run(base string, count int, limit time.Duration, seed uint64) {
	var budget atomic.Int64
	budget.Store(int64(count))
	deadline := time.Now().Add(limit)
	var wg sync.WaitGroup
	for w := range spreadWorkers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			z := rand.NewZipf(r, spreadZipfS, 1, uint64(len(l.ranked)-1))
			for budget.Add(-1) >= 0 && time.Now().Before(deadline) {
				p := l.ranked[z.Uint64()]
				resp, err := l.client.Get(base + p)
				if err != nil {
					l.errs.Add(1)
					l.fail(fmt.Sprintf("GET %s: %v", p, err))
					continue
				}
				var buf bytes.Buffer
				_, err = buf.ReadFrom(resp.Body)
				resp.Body.Close()
				got := buf.Bytes()
				want := l.site.file(p)
				if ch := l.changed.Load(); ch != nil && ch.path == p {
					switch {
					case bytes.Equal(got, ch.new):
						continue
					case bytes.Equal(got, ch.old) && time.Since(ch.at) <= 2*time.Second:
						continue
					case bytes.Equal(got, ch.old):
						l.stale.Add(1)
						l.fail(fmt.Sprintf("GET %s %s after the change (node %s): the old bytes", p,
							time.Since(ch.at).Round(time.Millisecond), resp.Header.Get("X-Node")))
						continue
					}
				}
				if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, want) {
					l.wrong.Add(1)
					l.fail(fmt.Sprintf("GET %s (node %s): %d %s; want its %d bytes (%v)", p, resp.Header.Get("X-Node"),
						resp.StatusCode, clusterPreview(got), len(want), err))
				}
			}
		})
	}
	wg.Wait()
}

// measure runs count requests through base and returns, from the nodes'
// own status, the busiest node's requests ÷ the mean, SAN bytes ÷ bytes
// served, and the per-node requests.
func (l *spreadLoad) measure(t *testing.T, nodes []*clusterNode, base string, count int, seed uint64) (float64, float64, []int64) {
	t.Helper()
	before := make([]spreadCounters, len(nodes))
	for i, n := range nodes {
		before[i] = readSpreadCounters(t, n)
	}
	l.run(base, count, 120*time.Second, seed)
	var per []int64
	var sum, top, served, san int64
	for i, n := range nodes {
		a := readSpreadCounters(t, n)
		d := a.requests - before[i].requests
		per = append(per, d)
		sum += d
		top = max(top, d)
		served += a.served - before[i].served
		san += a.san - before[i].san
	}
	if sum == 0 || served == 0 {
		t.Fatalf("no requests counted by the nodes: %v", per)
	}
	return float64(top) * float64(len(nodes)) / float64(sum), float64(san) / float64(served), per
}

// TestSpread: today's policy (spread off) and spreading side by side under
// the same Zipf load: with spreading the busiest node serves at most 1.05
// × the mean, SAN bytes (peer fetches and pushes) stay ≤ 5% of the bytes
// served, every body is right; the hottest file is spread over every node
// with pushed copies resident before requests reach them; changed on
// storage during the load it is served new by every node (direct and
// through the director) within 2 s, and the pushed copies are replaced by
// the new version.
func TestSpread(t *testing.T) {
	needCaddy(t)
	site := spreadSite()
	members := clusterMembers(3)
	roots := writeClusterRoots(t, members, site)
	d := newDirectorCluster(t, roots)
	nodes := []*clusterNode{d.launch(0), d.launch(1), d.launch(2)}
	const off = "shardcache {\n\t\t\tspread off\n\t\t}"
	dir := d.launchDirector("shardcache", off)
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range append(nodes[:3:3], dir) {
		n.waitUp(n.caddyfile, deadline)
	}
	for _, m := range members {
		ok, _ := pollUntil(30*time.Second, func() bool {
			v, ok := memberView(dir, m.name)
			return ok && v.Up && v.Ready
		})
		if !ok {
			t.Fatalf("the director does not see %s up and ready within 30s", m.name)
		}
	}
	l := newSpreadLoad(site)

	// Today's policy: every request to its path's owner.
	todayBusiest, todaySAN, todayPer := l.measure(t, nodes, d.sites[off], spreadMeasured, 1)
	t.Logf("spread off (today's policy): %d requests, per node %v: busiest ÷ mean %.3f, SAN bytes ÷ served %.3f%%",
		spreadMeasured, todayPer, todayBusiest, 100*todaySAN)

	// Spreading: warm up, then measure.
	spreadBase := d.sites["shardcache"]
	l.run(spreadBase, spreadWarm, 120*time.Second, 2)
	busiest, san, per := l.measure(t, nodes, spreadBase, spreadMeasured, 3)
	t.Logf("spread on: %d requests after %d to warm up, per node %v: busiest ÷ mean %.3f, SAN bytes ÷ served %.3f%%",
		spreadMeasured, spreadWarm, per, busiest, 100*san)
	var st spreadStatusView
	if err := dir.adminGet("/shardcache/status", &st); err != nil {
		t.Fatal(err)
	}
	var top []string
	for i, s := range st.Spread {
		if i < 5 {
			top = append(top, fmt.Sprintf("%s %.2f%% width %d members %v", s.Path, 100*s.Share, s.Width, s.Members))
		}
	}
	t.Logf("director: %d paths spread; the first: %s", len(st.Spread), strings.Join(top, "; "))
	if busiest > 1.05 {
		t.Errorf("spreading: busiest node %.3f × the mean (per node %v); want ≤ 1.05 (spread off: %.3f)", busiest, per, todayBusiest)
	}
	if san > 0.05 {
		t.Errorf("spreading: SAN bytes %.2f%% of the bytes served; want ≤ 5%%", 100*san)
	}
	if len(st.Spread) == 0 {
		t.Fatal("the director spreads no path")
	}
	samples, _, err := scrapeMetrics(dir)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := metricValue(samples, "caddy_shardcache_spread_requests_total"); !ok || v < spreadMeasured/10 {
		t.Errorf("caddy_shardcache_spread_requests_total = %v (%v); want at least a tenth of the %d requests", v, ok, spreadMeasured)
	}
	var pushed float64
	for _, n := range nodes {
		s, _, err := scrapeMetrics(n)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := metricValue(s, "caddy_shardcache_pushed_bytes_total")
		pushed += v
	}
	if pushed == 0 {
		t.Error("caddy_shardcache_pushed_bytes_total is 0 on every node")
	}

	// The hottest file: spread over every node, with a resident pushed
	// copy on each one that is not its owner.
	hot := l.ranked[0]
	var members3 []string
	for _, s := range st.Spread {
		if s.Path == hot {
			members3 = s.Members
		}
	}
	if len(members3) != 3 {
		t.Fatalf("the hottest file %s is served by %v; want all 3 nodes", hot, members3)
	}
	owner := members3[0]
	oldVersion := ""
	for _, n := range nodes {
		var ws []struct {
			Owner    string `json:"owner"`
			Local    bool   `json:"local"`
			Pushed   bool   `json:"pushed"`
			Resident bool   `json:"resident"`
			Version  string `json:"version"`
		}
		if err := n.adminGet("/shardcache/where?path="+hot, &ws); err != nil || len(ws) != 1 {
			t.Fatalf("%s: where %s: %v %+v", n.name, hot, err, ws)
		}
		if w := ws[0]; w.Owner != owner || !w.Resident || w.Local != (n.name == owner) || w.Pushed == (n.name == owner) {
			t.Errorf("%s: where %s: %+v; want owner %s, resident, pushed unless the owner", n.name, hot, w, owner)
		}
		oldVersion = ws[0].Version
	}
	var dw []struct {
		Spread *struct {
			Members []string `json:"members"`
		} `json:"spread"`
	}
	if err := dir.adminGet("/shardcache/where?path="+hot, &dw); err != nil || len(dw) != 1 || dw[0].Spread == nil || len(dw[0].Spread.Members) != 3 {
		t.Errorf("director: where %s: %v %+v; want its spread set of 3", hot, err, dw)
	}

	// Change it on storage (every node's copy, as a synced copy would)
	// during a load, and poll every node and the director.
	old := site.file(hot)
	newBody := append([]byte("changed while spread\n"), old...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run(spreadBase, 30_000, 30*time.Second, 4)
	}()
	time.Sleep(time.Second)
	l.changed.Store(&spreadChange{path: hot, old: old, new: newBody, at: time.Now()})
	changedAt := time.Now()
	for _, root := range roots {
		p := filepath.Join(root, filepath.FromSlash(hot[1:]))
		if err := os.WriteFile(p+".tmp", newBody, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			t.Fatal(err)
		}
	}
	targets := map[string]string{"director": spreadBase}
	for _, n := range nodes {
		targets[n.name] = n.base
	}
	var newAt sync.Map
	var wg sync.WaitGroup
	for name, base := range targets {
		wg.Go(func() {
			ok, took := pollEvery(2*time.Second, 20*time.Millisecond, func() bool {
				r, err := do(http.MethodGet, base, hot)
				return err == nil && r.status == 200 && bytes.Equal(r.body, newBody)
			})
			if ok {
				newAt.Store(name, took)
			}
		})
	}
	wg.Wait()
	var when []string
	for name := range targets {
		if v, ok := newAt.Load(name); ok {
			when = append(when, fmt.Sprintf("%s %s", name, v.(time.Duration).Round(time.Millisecond)))
		} else {
			t.Errorf("%s: GET %s still not the new bytes 2s after the change", name, hot)
		}
	}
	sort.Strings(when)
	t.Logf("%s changed on storage: new bytes served by %s after the change", hot, strings.Join(when, ", "))
	<-done
	// The pushed copies are of the new version.
	ok, _ := pollUntil(5*time.Second, func() bool {
		for _, n := range nodes {
			var ws []struct {
				Resident bool   `json:"resident"`
				Pushed   bool   `json:"pushed"`
				Version  string `json:"version"`
				Local    bool   `json:"local"`
			}
			if err := n.adminGet("/shardcache/where?path="+hot, &ws); err != nil || len(ws) != 1 || !ws[0].Resident ||
				ws[0].Version == oldVersion || ws[0].Pushed == ws[0].Local {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Errorf("the copies of %s are not all resident at the new version 5s after the change", hot)
	}
	t.Logf("%s: the copies on every node resident at the new version (checked %v after the change)", hot,
		time.Since(changedAt).Round(time.Millisecond))
	if n := l.wrong.Load(); n > 0 {
		t.Errorf("%d wrong bodies; e.g. %q", n, l.samples)
	}
	if n := l.stale.Load(); n > 0 {
		t.Errorf("%d responses with the old bytes of %s more than 2s after its change; e.g. %q", n, hot, l.samples)
	}
	if n := l.errs.Load(); n > 0 {
		t.Errorf("%d failed requests; e.g. %q", n, l.samples)
	}
}
