package integration

// Tests of `dynamic shardcache`, the upstream source that lists the
// cluster members' sites (the `lan` each advertises), so that the
// director's reverse_proxy names no node. The cluster here uses its own
// SAN addresses (127.0.27.2-4, director 127.0.27.10) so that it does not
// collide with the other cluster tests. Run them with
//
//	CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -count=1 -run DynamicUpstreams ./caddytest/

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shardcache/caddy-shardcache/peering"
)

// upsDirectorSAN is the director's SAN address in these tests; the
// members are ftMembers(27, 3): 127.0.27.2-4:7946.
const upsDirectorSAN = "127.0.27.10:7946"

// upsDirectorCaddyfile is a director whose reverse_proxy lists no
// upstream: they come from `dynamic shardcache`.
func upsDirectorCaddyfile(admin string, members []clusterMember, port int) string {
	return globalBlock(admin, observerOption(upsDirectorSAN, members)) + fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	reverse_proxy {
		dynamic shardcache
		lb_policy shardcache
		lb_try_duration 2s
		fail_duration 5s
	}
}
`, port)
}

// upstreamEntry is one entry of Caddy's GET /reverse_proxy/upstreams.
type upstreamEntry struct {
	Address     string `json:"address"`
	NumRequests int    `json:"num_requests"`
	Fails       int    `json:"fails"`
}

// adminUpstreams returns n's /reverse_proxy/upstreams, by address.
func adminUpstreams(t *testing.T, n *clusterNode) map[string]upstreamEntry {
	t.Helper()
	resp, err := adminClient.Get("http://" + n.admin + "/reverse_proxy/upstreams")
	if err != nil {
		t.Fatalf("GET /reverse_proxy/upstreams on %s: %v", n.name, err)
	}
	defer resp.Body.Close()
	var list []upstreamEntry
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /reverse_proxy/upstreams on %s: %s, %v", n.name, resp.Status, err)
	}
	out := map[string]upstreamEntry{}
	for _, e := range list {
		out[e.Address] = e
	}
	return out
}

// TestDirectorDynamicUpstreams runs three content nodes with `lan` and a
// director whose reverse_proxy has `dynamic shardcache` and no upstream,
// and checks: every request goes to its path's owner, which serves it from
// its memory (1); Caddy's upstreams admin endpoint lists the members'
// sites (2); with one node stopped (SIGTERM) under load, no request fails,
// it stays listed, and its paths are then served by the next member on
// the ring (3); with a second node killed (kill -9) under load, no request
// fails but those it was answering when it died (cut short mid-body), and
// the two nodes' paths go to the last one (4).
func TestDirectorDynamicUpstreams(t *testing.T) {
	needCaddy(t)
	began := time.Now()
	site := genClusterSite(240, 11)
	members := ftMembers(27, 3)
	roots := writeClusterRoots(t, members, site)
	ring := peering.NewRing(0, nil, "n1", "n2", "n3")
	paths := site.paths()

	g := newNodeGroup(t, newClusterSecret(t))
	cfgs := clusterConfigs(t, members, roots)
	nodes := make([]*clusterNode, len(cfgs))
	lans := map[string]string{} // member → its site
	for i, c := range cfgs {
		nodes[i] = g.launch(c.self.name, c.self.san, fmt.Sprintf("http://127.0.0.1:%d", c.port), c.root, directorNodeCaddyfile(c, "v1"))
		lans[c.self.name] = fmt.Sprintf("127.0.0.1:%d", c.port)
	}
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	port := freePort(t)
	cf := upsDirectorCaddyfile(admin, members, port)
	if strings.Contains(cf, lans["n1"]) {
		t.Fatalf("the director's Caddyfile names a node's site:\n%s", cf)
	}
	dir := g.launch("director", upsDirectorSAN, fmt.Sprintf("http://127.0.0.1:%d", port), "", cf)
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range append(slices.Clone(nodes), dir) {
		n.waitUp(n.caddyfile, deadline)
	}
	for _, m := range members {
		ok, _ := pollUntil(60*time.Second, func() bool {
			v, ok := memberView(dir, m.name)
			return ok && v.Up && v.Ready
		})
		if !ok {
			t.Fatalf("the director does not see %s up and ready within 60s; its status: %+v", m.name, dir.status(t))
		}
	}
	t.Logf("3 nodes and the director up and ready in %s", time.Since(began).Round(time.Millisecond))

	t.Run("1_requests_go_to_owners", func(t *testing.T) {
		before := snapshotCounters(t, nodes)
		var toOwner, total atomic.Int64
		var mu sync.Mutex
		var wrong []string
		const passes = 2
		for range passes {
			forEachParallel(len(paths), 8, func(i int) {
				p := paths[i]
				r, err := do(http.MethodGet, dir.base, p)
				total.Add(1)
				if err != nil {
					t.Errorf("GET %s through the director: %v", p, err)
					return
				}
				if r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
					t.Errorf("GET %s through the director: %d %s; want 200 and its %d bytes", p, r.status, clusterPreview(r.body), len(site.file(p)))
				}
				if got := r.header.Get("X-Node"); got == ring.Owner(p) {
					toOwner.Add(1)
				} else {
					mu.Lock()
					wrong = append(wrong, fmt.Sprintf("%s → %q (owner %s)", p, got, ring.Owner(p)))
					mu.Unlock()
				}
			})
		}
		after := snapshotCounters(t, nodes)
		req, _ := tierDelta(before, after)
		share := float64(toOwner.Load()) / float64(total.Load())
		t.Logf("%d requests through the director: %d (%.1f%%) served by their path's owner; the nodes' tiers: %v",
			total.Load(), toOwner.Load(), 100*share, req)
		if share < 0.99 {
			t.Errorf("%.1f%% of requests reached their owner; want ≥ 99%%; first: %q", 100*share, wrong[:min(5, len(wrong))])
		}
		if got := sumTiers(req); got != total.Load() {
			t.Errorf("the nodes counted %d requests (%v); want %d", got, req, total.Load())
		}
		if local := float64(req["local"]) / float64(sumTiers(req)); local < 0.99 {
			t.Errorf("%.1f%% of requests were served from the receiving node's memory (local tier: %v); want ≥ 99%%", 100*local, req)
		}
	})

	t.Run("2_admin_lists_the_members", func(t *testing.T) {
		ups := adminUpstreams(t, dir)
		var got []string
		for a := range ups {
			got = append(got, a)
		}
		slices.Sort(got)
		want := []string{lans["n1"], lans["n2"], lans["n3"]}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("the director's /reverse_proxy/upstreams lists %q; want the members' sites %q", got, want)
		}
		t.Logf("/reverse_proxy/upstreams: %+v", ups)
	})

	// load runs 4 clients through the director over every path while
	// during runs, then for 1.5s more, and returns how many requests it
	// sent and the failures.
	load := func(during func()) (int64, []string) {
		var sent atomic.Int64
		var mu sync.Mutex
		var failures []string
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := w; ; i += 4 {
					select {
					case <-stop:
						return
					default:
					}
					p := paths[i%len(paths)]
					r, err := do(http.MethodGet, dir.base, p)
					sent.Add(1)
					var why string
					switch {
					case err != nil:
						why = err.Error()
					case r.status != 200 || !bytes.Equal(r.body, site.file(p)):
						why = fmt.Sprintf("%d %s", r.status, clusterPreview(r.body))
					}
					if why != "" {
						mu.Lock()
						failures = append(failures, p+": "+why)
						mu.Unlock()
					}
				}
			})
		}
		time.Sleep(500 * time.Millisecond)
		during()
		time.Sleep(1500 * time.Millisecond)
		close(stop)
		wg.Wait()
		return sent.Load(), failures
	}
	// seenDown waits until the director shows name down.
	seenDown := func(t *testing.T, name string, since time.Time) time.Duration {
		ok, _ := pollUntil(10*time.Second, func() bool {
			v, ok := memberView(dir, name)
			return ok && !v.Up
		})
		if !ok {
			t.Errorf("the director does not see %s down within 10s", name)
		}
		return time.Since(since)
	}
	// servedByNext checks that every path owned by a member in down is
	// served, through the director, by the first member after it on the
	// ring that is not down.
	servedByNext := func(t *testing.T, down ...string) {
		var moved int
		for _, p := range paths {
			owners := ring.Owners(p, 3)
			if !slices.Contains(down, owners[0]) {
				continue
			}
			want := ""
			for _, o := range owners {
				if !slices.Contains(down, o) {
					want = o
					break
				}
			}
			moved++
			r, err := do(http.MethodGet, dir.base, p)
			if err != nil {
				t.Errorf("GET %s (%s's) with %v down: %v", p, owners[0], down, err)
				continue
			}
			if r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
				t.Errorf("GET %s (%s's) with %v down: %d %s; want 200 and its %d bytes", p, owners[0], down, r.status, clusterPreview(r.body), len(site.file(p)))
			}
			if got := r.header.Get("X-Node"); got != want {
				t.Errorf("GET %s (%s's) with %v down: served by %q; want the next member up, %s", p, owners[0], down, got, want)
			}
		}
		if moved == 0 {
			t.Fatalf("%v own none of the site's paths", down)
		}
		t.Logf("%d paths of %v served by the next member up on the ring", moved, down)
	}

	t.Run("3_node_stopped_under_load", func(t *testing.T) {
		var downIn time.Duration
		sent, failures := load(func() {
			at := time.Now()
			nodes[1].stop() // n2: SIGTERM
			downIn = seenDown(t, "n2", at)
		})
		t.Logf("n2 stopped (SIGTERM) under load (4 clients): %d requests, %d failed; the director saw n2 down %s after the signal",
			sent, len(failures), downIn.Round(time.Millisecond))
		if len(failures) > 0 {
			t.Errorf("%d of %d requests failed around the stop; first: %q", len(failures), sent, failures[:min(5, len(failures))])
		}
		ups := adminUpstreams(t, dir)
		if _, ok := ups[lans["n2"]]; !ok {
			t.Errorf("/reverse_proxy/upstreams no longer lists n2's site %s (down, it stays an upstream): %+v", lans["n2"], ups)
		}
		servedByNext(t, "n2")
	})

	t.Run("4_node_killed_under_load", func(t *testing.T) {
		var downIn time.Duration
		sent, failures := load(func() {
			at := time.Now()
			ftKill(t, nodes[2]) // n3: kill -9
			downIn = seenDown(t, "n3", at)
		})
		// A response n3 was sending when it died is cut short: the
		// client has its headers, nothing can retry it. Any other failure
		// (an error status, a refused connection) is the director's.
		var cut, other []string
		for _, f := range failures {
			if strings.HasSuffix(f, "unexpected EOF") {
				cut = append(cut, f)
			} else {
				other = append(other, f)
			}
		}
		t.Logf("kill -9 of n3 under load (4 clients): %d requests, %d failed (%d cut short mid-body by the kill); the director saw n3 down %s after the kill",
			sent, len(failures), len(cut), downIn.Round(time.Millisecond))
		if len(other) > 0 {
			t.Errorf("%d of %d requests failed around the kill other than by a cut body; first: %q", len(other), sent, other[:min(5, len(other))])
		}
		// The failed dials of the moment before the director saw n3 down
		// were counted on its address (passive health, kept for
		// fail_duration) although each request got new Upstream values:
		// logged, not required, as their number depends on how fast
		// peering noticed.
		ups := adminUpstreams(t, dir)
		if e, ok := ups[lans["n3"]]; !ok {
			t.Errorf("/reverse_proxy/upstreams no longer lists n3's site %s: %+v", lans["n3"], ups)
		} else {
			t.Logf("/reverse_proxy/upstreams after the kill: n3's site %s with %d fails; all: %+v", lans["n3"], e.Fails, ups)
		}
		servedByNext(t, "n2", "n3")
	})
}

// TestDynamicUpstreamsCaddyfileErrors checks that `dynamic shardcache`
// refuses an argument, naming it, and that a Caddy without the shardcache
// global option refuses the config, saying what is missing.
func TestDynamicUpstreamsCaddyfileErrors(t *testing.T) {
	needCaddy(t)
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Run("argument", func(t *testing.T) {
		cf := write("extra.Caddyfile", "http://127.0.0.1:9 {\n\treverse_proxy {\n\t\tdynamic shardcache extra\n\t\tlb_policy shardcache\n\t}\n}\n")
		out, err := runCaddy(t, 30*time.Second, "adapt", "--config", cf, "--adapter", "caddyfile")
		if err == nil {
			t.Fatalf("caddy adapt accepted `dynamic shardcache extra`:\n%.300s", out)
		}
		msg := lastErrorLine(out)
		if !strings.Contains(msg, "extra") || !strings.Contains(msg, "Caddyfile:3") {
			t.Errorf("the message does not name `extra` and line 3:\n%s", msg)
		}
		t.Logf("caddy adapt: %s", msg)
	})
	t.Run("no_node", func(t *testing.T) {
		cf := write("nonode.Caddyfile", "http://127.0.0.1:9 {\n\treverse_proxy {\n\t\tdynamic shardcache\n\t}\n}\n")
		if out, err := runCaddy(t, 30*time.Second, "adapt", "--config", cf, "--adapter", "caddyfile"); err != nil {
			t.Fatalf("caddy adapt of `dynamic shardcache`: %v\n%s", err, out)
		}
		out, err := runCaddy(t, 30*time.Second, "validate", "--config", cf, "--adapter", "caddyfile")
		if err == nil {
			t.Fatalf("caddy validate accepted `dynamic shardcache` without a cluster node:\n%.300s", out)
		}
		const want = "dynamic shardcache needs the shardcache global option: `node <name> <san_address>`"
		if !strings.Contains(out, want) {
			t.Errorf("caddy validate fails without saying %q:\n%s", want, out)
		} else {
			t.Logf("caddy validate: ...%s", out[strings.Index(out, want):][:len(want)])
		}
	})
}
