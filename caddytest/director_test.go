package integration

// Director tests: three content nodes (SAN 127.0.0.2-4:7946, each with its
// own copy of one generated site and `lan` set to its HTTP site) and a
// content director, a fourth Caddy that joins as an observer (SAN
// 127.0.0.9:7946) and proxies to the three sites with `lb_policy
// shardcache`, beside a second site with `lb_policy uri_hash`. Run them
// with
//
//	CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -count=1 -run Director ./caddytest/

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shardcache/caddy-shardcache/peering"
)

// directorBigFiles and directorBigSize make the late node's root slow to
// prime: sparse files (no disk blocks) it owns, which priming must read and
// hash (SHA-256) in full although they do not fit its memory budget.
const (
	directorBigFiles = 6
	directorBigSize  = 1 << 30
)

// TestDirector runs the three content nodes and the director, and checks
// in order: a node that is not yet primed gets no traffic from the
// director, and its traffic once it is (3); through the director every
// file is served byte for byte and the receiving node has it in memory
// (1); uri_hash sends most requests to a node that does not own them (2);
// purge by path and by prefix reaches every node (4); the metrics exist,
// move, and survive a reload (5); `caddy shardcache status` (6).
func TestDirector(t *testing.T) {
	needCaddy(t)
	began := time.Now()
	site := genClusterSite(300, 4)
	members := clusterMembers(3)
	roots := writeClusterRoots(t, members, site)
	// The ring the nodes compute (an observer is in no ring).
	ring := peering.NewRing(0, nil, "n1", "n2", "n3")
	owners := map[string]string{}
	for _, p := range site.paths() {
		owners[p] = ring.Owner(p)
	}
	// n3 is the late node: its copy also holds big files it owns.
	var big []string
	for i := 0; len(big) < directorBigFiles && i < 10000; i++ {
		p := fmt.Sprintf("/big/blob-%04d.bin", i)
		if ring.Owner(p) == "n3" {
			big = append(big, p)
		}
	}
	if err := os.MkdirAll(filepath.Join(roots[2], "big"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range big {
		writeSparse(t, filepath.Join(roots[2], filepath.FromSlash(p[1:])), directorBigSize)
	}

	d := newDirectorCluster(t, roots)
	n1, n2 := d.launch(0), d.launch(1)
	dir := d.launchDirector("shardcache", "uri_hash")
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range []*clusterNode{n1, n2, dir} {
		n.waitUp(n.caddyfile, deadline)
	}
	for _, name := range []string{"n1", "n2"} {
		ok, _ := pollUntil(20*time.Second, func() bool {
			m, ok := memberView(dir, name)
			return ok && m.Up && m.Ready
		})
		if !ok {
			t.Fatalf("the director does not see %s up and ready within 20s; its status: %+v", name, dir.status(t))
		}
	}
	t.Logf("n1, n2 and the director up in %s", time.Since(began).Round(time.Millisecond))
	if w := n1.mustWhere(t, site.paths()[0]); w.Owner != owners[site.paths()[0]] {
		t.Fatalf("n1 says %s is owned by %s; the test's ring says %s", w.Path, w.Owner, owners[w.Path])
	}

	var n3 *clusterNode
	ownedBy := func(name string) []string {
		var out []string
		for _, p := range site.paths() {
			if owners[p] == name {
				out = append(out, p)
			}
		}
		return out
	}

	t.Run("3_no_traffic_until_primed", func(t *testing.T) {
		n3 = d.launch(2)
		n3.waitUp(n3.caddyfile, time.Now().Add(20*time.Second))
		launched := time.Now()
		// The director sees n3 connected and not ready.
		ok, _ := pollUntil(10*time.Second, func() bool {
			m, ok := memberView(dir, "n3")
			return ok && m.Up
		})
		if !ok {
			t.Fatalf("the director does not see n3 up within 10s: %+v", dir.status(t))
		}
		if m, _ := memberView(dir, "n3"); m.Ready || nodeReady(n3) {
			t.Fatalf("n3 was primed %s after it answered HTTP, before the test could look: make its root bigger (directorBigFiles)",
				time.Since(launched).Round(time.Millisecond))
		}
		paths := ownedBy("n3")
		var rounds, requests int
		var n3Tiers, n3Served, otherPeer, otherHot, otherStorage int64
		for {
			before := snapshotCounters(t, []*clusterNode{n1, n2, n3})
			if nodeReady(n3) {
				break
			}
			var wrong atomic.Int32
			forEachParallel(len(paths), 8, func(i int) {
				p := paths[i]
				r, err := do(http.MethodGet, dir.base, p)
				switch {
				case err != nil:
					t.Errorf("GET %s through the director while n3 primes: %v", p, err)
				case r.status != 200 || !bytes.Equal(r.body, site.file(p)):
					t.Errorf("GET %s through the director while n3 primes: %d %s; want 200 and its %d bytes", p, r.status, clusterPreview(r.body), len(site.file(p)))
				case r.header.Get("X-Node") != "n1" && r.header.Get("X-Node") != "n2":
					wrong.Add(1)
				}
			})
			after := snapshotCounters(t, []*clusterNode{n1, n2, n3})
			if nodeReady(n3) {
				// n3 may have become ready during the round: the director
				// may then rightly have sent it some requests.
				break
			}
			rounds++
			requests += len(paths)
			if w := wrong.Load(); w > 0 {
				t.Errorf("round %d: %d of %d requests for n3's files were not served by n1 or n2 (X-Node) while n3 was not ready", rounds, w, len(paths))
			}
			b3, a3 := before["n3"], after["n3"]
			for _, tier := range tierNames {
				n3Tiers += a3.req[tier] - b3.req[tier]
			}
			n3Served += a3.served - b3.served
			req, _ := tierDelta(map[string]tierCounters{"n1": before["n1"], "n2": before["n2"]},
				map[string]tierCounters{"n1": after["n1"], "n2": after["n2"]})
			if got := sumTiers(req); got != int64(len(paths)) {
				t.Errorf("round %d: n1 and n2 counted %d requests (%v), want %d", rounds, got, req, len(paths))
			}
			otherPeer += req["peer"]
			otherStorage += req["storage"]
			otherHot += req["hot"]
		}
		if rounds == 0 {
			t.Fatalf("n3 was primed before one round of %d requests could run: make its root bigger (directorBigFiles)", len(paths))
		}
		primedIn := time.Since(launched)
		if n3Tiers != 0 {
			t.Errorf("n3 (not ready) counted %d requests in its tiers during %d rounds; want none", n3Tiers, rounds)
		}
		t.Logf("while n3 primed: %d rounds, %d requests for its %d files through the director, served by n1 and n2: %d from their storage, %d fetched from n3, %d from their hot caches",
			rounds, requests, len(paths), otherStorage, otherPeer, otherHot)
		if n3Served != 0 {
			// DESIGN.md, Lifecycle: "until primed the node reports
			// priming (... peers and the director learn it over peering
			// and send it no traffic)".
			t.Errorf("n3 answered %d fetches from n1 and n2 while it was not ready (they fetched n3's files from it: peer tier %d); want none: a priming node gets no traffic from its peers either",
				n3Served, otherPeer)
		}
		ok, _ = pollUntil(120*time.Second, func() bool { return nodeReady(n3) })
		if !ok {
			t.Fatalf("n3 not primed within 120s of its start: %+v", n3.status(t))
		}
		t.Logf("n3 primed about %s after it answered HTTP", primedIn.Round(100*time.Millisecond))
		ok, _ = pollUntil(5*time.Second, func() bool {
			m, ok := memberView(dir, "n3")
			return ok && m.Up && m.Ready
		})
		if !ok {
			t.Fatalf("the director does not see n3 ready within 5s of its status saying so: %+v", dir.status(t))
		}
		before := nodeCounters(t, n3)
		served := map[string]int{}
		for _, p := range paths {
			r := get(t, dir.base, p)
			if r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
				t.Errorf("GET %s through the director, n3 ready: %d %s", p, r.status, clusterPreview(r.body))
			}
			served[r.header.Get("X-Node")]++
		}
		after := nodeCounters(t, n3)
		if served["n3"] != len(paths) {
			t.Errorf("n3 ready: the director sent its %d files to %v; want all to n3", len(paths), served)
		}
		if got := after.req["local"] - before.req["local"]; got != int64(len(paths)) {
			t.Errorf("n3 ready: its local counter moved by %d for %d requests of its files", got, len(paths))
		}
	})
	if n3 == nil || !nodeReady(n3) {
		return // the subtests below need all three nodes
	}

	nodes := []*clusterNode{n1, n2, n3}
	all := append(site.paths(), big...)
	if !waitClusterReady(t, nodes, all, len(all)) {
		return
	}
	for _, p := range []string{site.paths()[1], site.paths()[100], big[0]} {
		for _, n := range nodes {
			if w := n.mustWhere(t, p); w.Owner != ring.Owner(p) || !w.Found {
				t.Fatalf("%s: where %s: %+v; want owner %s, found", n.name, p, w, ring.Owner(p))
			}
		}
	}
	// Directories with an index, as the director routes them.
	var dirs []string
	for _, p := range site.paths() {
		if path.Base(p) == "index.html" {
			dirs = append(dirs, strings.TrimSuffix(p, "index.html"))
		}
	}

	var shardShare float64 // share of non-local requests under lb_policy shardcache
	t.Run("1_director_sends_requests_to_owners", func(t *testing.T) {
		before := snapshotCounters(t, nodes)
		paths := site.paths()
		var mu sync.Mutex
		wrongNode := 0
		const passes = 2
		for pass := 0; pass < passes; pass++ {
			forEachParallel(len(paths), 8, func(i int) {
				p := paths[i]
				r, err := do(http.MethodGet, dir.base, p)
				if err != nil {
					t.Errorf("GET %s through the director: %v", p, err)
					return
				}
				if r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
					t.Errorf("GET %s through the director: %d %s; want 200 and its %d bytes", p, r.status, clusterPreview(r.body), len(site.file(p)))
				}
				if got := r.header.Get("X-Node"); got != owners[p] {
					mu.Lock()
					wrongNode++
					if wrongNode <= 5 {
						t.Errorf("GET %s through the director: served by %q, its owner is %s", p, got, owners[p])
					}
					mu.Unlock()
				}
			})
		}
		for _, dp := range dirs {
			ip := dp + "index.html"
			r := get(t, dir.base, dp)
			if r.status != 200 || !bytes.Equal(r.body, site.file(ip)) || r.header.Get("X-Node") != owners[ip] {
				t.Errorf("GET %s through the director: %d by %q %s; want 200, %s's bytes, served by %s",
					dp, r.status, r.header.Get("X-Node"), clusterPreview(r.body), ip, owners[ip])
			}
		}
		after := snapshotCounters(t, nodes)
		req, byts := tierDelta(before, after)
		all := sumTiers(req)
		want := int64(passes*len(paths) + len(dirs))
		if all != want {
			t.Errorf("the nodes counted %d requests (%v); want %d", all, req, want)
		}
		local := float64(req["local"]) / float64(max(all, 1))
		shardShare = 1 - local
		t.Logf("lb_policy shardcache: %d requests, tiers %v: local %.2f%%, peer bytes %d of %d", all, req, 100*local, byts["peer"], sumTiers(byts))
		if local < 0.99 {
			t.Errorf("lb_policy shardcache: %.2f%% of requests were local hits on the receiving node; want >= 99%% (tiers %v)", 100*local, req)
		}
		if req["peer"] > all/100 {
			t.Errorf("lb_policy shardcache: %d peer fetches of %d requests; want near zero", req["peer"], all)
		}
	})

	t.Run("2_uri_hash_sends_requests_anywhere", func(t *testing.T) {
		base := d.sites["uri_hash"]
		before := snapshotCounters(t, nodes)
		paths := site.paths()
		forEachParallel(len(paths), 8, func(i int) {
			p := paths[i]
			r, err := do(http.MethodGet, base, p)
			if err != nil {
				t.Errorf("GET %s through uri_hash: %v", p, err)
				return
			}
			if r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
				t.Errorf("GET %s through uri_hash: %d %s", p, r.status, clusterPreview(r.body))
			}
		})
		after := snapshotCounters(t, nodes)
		req, byts := tierDelta(before, after)
		all := sumTiers(req)
		if all != int64(len(paths)) {
			t.Errorf("the nodes counted %d requests (%v); want %d", all, req, len(paths))
		}
		remote := 1 - float64(req["local"])/float64(max(all, 1))
		t.Logf("not local hits: lb_policy uri_hash %.1f%% (tiers %v, peer bytes %d of %d); lb_policy shardcache %.2f%%",
			100*remote, req, byts["peer"], sumTiers(byts), 100*shardShare)
		if remote < 0.30 || remote < shardShare+0.25 {
			t.Errorf("lb_policy uri_hash: %.1f%% of requests were not local hits; want well above lb_policy shardcache's %.2f%% (> 30%%)",
				100*remote, 100*shardShare)
		}
	})

	t.Run("4_purge_reaches_every_node", func(t *testing.T) {
		rootOf := map[string]string{"n1": roots[0], "n2": roots[1], "n3": roots[2]}
		fileOf := func(p string) string {
			return filepath.Join(rootOf[owners[p]], filepath.FromSlash(p[1:]))
		}
		candidate := func(p string) bool {
			n := len(site.file(p))
			return n >= 1<<10 && n <= 64<<10 && path.Base(p) != "index.html"
		}
		// newBytes is the same length as the old ones, and different.
		newBytes := func(p, tag string) []byte {
			old := site.file(p)
			b := bytes.Repeat([]byte(tag+" "), len(old)/(len(tag)+1)+1)[:len(old)]
			if bytes.Equal(b, old) {
				b[0] ^= 0xff
			}
			return b
		}
		// serves reports whether n serves want at p.
		serves := func(n *clusterNode, p string, want []byte) bool {
			r, err := do(http.MethodGet, n.base, p)
			return err == nil && r.status == 200 && bytes.Equal(r.body, want)
		}
		makeHot := func(n *clusterNode, p string) {
			t.Helper()
			for i := 0; i < 10; i++ {
				if r := get(t, n.base, p); r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
					t.Fatalf("%s: GET %s: %d %s", n.name, p, r.status, clusterPreview(r.body))
				}
			}
			if w := n.mustWhere(t, p); !w.Resident || w.Local {
				t.Fatalf("%s: after 10 GETs of %s (owner %s), /where says %+v; want a resident hot copy", n.name, p, owners[p], w)
			}
		}
		hotItems := func(n *clusterNode) int64 {
			if h := n.status(t).group().Hot; h != nil {
				return h.Items
			}
			return -1
		}

		// By path: a file n1 owns, hot on n2; the purge goes to n3.
		var p string
		for _, q := range ownedBy("n1") {
			if candidate(q) {
				p = q
				break
			}
		}
		if p == "" {
			t.Fatal("no file of 1-64 KiB owned by n1")
		}
		makeHot(n2, p)
		hotBefore := hotItems(n2)
		want := newBytes(p, "purged-by-path")
		rewriteUnseen(t, fileOf(p), want)
		time.Sleep(time.Second)
		for _, n := range nodes {
			if !serves(n, p, site.file(p)) {
				t.Logf("NOTE: %s no longer serves the old bytes of %s 1s after a change no watcher should see; the purge below proves less", n.name, p)
			}
		}
		start := time.Now()
		code, body, err := adminPost(n3, "/shardcache/purge", fmt.Sprintf(`{"path": %q}`, p))
		if err != nil || code != 200 {
			t.Fatalf("POST /shardcache/purge {path %s} on n3: %d %s %v", p, code, body, err)
		}
		var res map[string]any
		if err := json.Unmarshal(body, &res); err != nil {
			t.Fatalf("purge answer %s: %v", body, err)
		}
		for _, k := range []string{"hot_dropped", "refreshed", "broadcast"} {
			if _, ok := res[k]; !ok {
				t.Errorf("purge answer %s: no %q", body, k)
			}
		}
		if res["broadcast"] != true {
			t.Errorf("purge answer on n3 %s: want broadcast true", body)
		}
		// The hot copy on n2 is dropped (before anything asks n2 again).
		if ok, _ := pollUntil(2*time.Second, func() bool { return hotItems(n2) == hotBefore-1 }); !ok {
			t.Errorf("n2: hot items %d 2s after the purge, %d before; want its copy of %s dropped", hotItems(n2), hotBefore, p)
		}
		if w := n2.mustWhere(t, p); w.Resident {
			t.Errorf("n2: /where %s after the purge: %+v; want not resident", p, w)
		}
		for _, n := range nodes {
			if ok, _ := pollUntil(2*time.Second-time.Since(start), func() bool { return serves(n, p, want) }); !ok {
				r, _ := do(http.MethodGet, n.base, p)
				got := "(error)"
				if r != nil {
					got = fmt.Sprintf("%d %s", r.status, clusterPreview(r.body))
				}
				t.Errorf("%s: GET %s (owner %s) 2s after POST purge {path} to n3: %s; want the new bytes", n.name, p, owners[p], got)
			}
		}
		t.Logf("purge by path %s (owner n1, hot on n2, POSTed to n3): new bytes on every node %s after the POST, answer %s",
			p, time.Since(start).Round(time.Millisecond), bytes.TrimSpace(body))
		site[p[1:]] = want

		// By prefix: one file of each owner under one directory, one of
		// them hot on a node that does not own it; the purge goes to n2.
		var prefix string
		var changed []string
		for _, dp := range clusterDirs {
			if dp == "" {
				continue
			}
			pre := "/" + dp + "/"
			var picked []string
			for _, o := range []string{"n1", "n2", "n3"} {
				for _, q := range ownedBy(o) {
					if strings.HasPrefix(q, pre) && candidate(q) && q != p {
						picked = append(picked, q)
						break
					}
				}
			}
			if len(picked) == 3 {
				prefix, changed = pre, picked
				break
			}
		}
		if prefix == "" {
			t.Fatal("no directory with a file of 1-64 KiB of each owner")
		}
		hotOn := n1
		if owners[changed[2]] == "n1" {
			hotOn = n2
		}
		makeHot(hotOn, changed[2])
		wants := map[string][]byte{}
		for _, q := range changed {
			wants[q] = newBytes(q, "purged-by-prefix")
			rewriteUnseen(t, fileOf(q), wants[q])
		}
		time.Sleep(500 * time.Millisecond)
		start = time.Now()
		code, body, err = adminPost(n2, "/shardcache/purge", fmt.Sprintf(`{"prefix": %q}`, prefix))
		if err != nil || code != 200 {
			t.Fatalf("POST /shardcache/purge {prefix %s} on n2: %d %s %v", prefix, code, body, err)
		}
		for _, n := range nodes {
			for _, q := range changed {
				if ok, _ := pollUntil(2*time.Second-time.Since(start), func() bool { return serves(n, q, wants[q]) }); !ok {
					t.Errorf("%s: GET %s (owner %s) 2s after POST purge {prefix %s} to n2: not the new bytes", n.name, q, owners[q], prefix)
				}
			}
		}
		if w := hotOn.mustWhere(t, changed[2]); w.Version == "" {
			t.Errorf("%s: /where %s after the prefix purge: %+v", hotOn.name, changed[2], w)
		}
		t.Logf("purge by prefix %s (%v, owners %s/%s/%s; %s hot on %s; POSTed to n2): new bytes on every node %s after the POST, answer %s",
			prefix, changed, owners[changed[0]], owners[changed[1]], owners[changed[2]], changed[2], hotOn.name,
			time.Since(start).Round(time.Millisecond), bytes.TrimSpace(body))
		for _, q := range changed {
			site[q[1:]] = wants[q]
		}
	})

	t.Run("5_metrics", func(t *testing.T) {
		samples, raw, err := scrapeMetrics(n1)
		if err != nil {
			t.Fatalf("%v\n%.2000s", err, raw)
		}
		// The names of README's Metrics table (a histogram shows as
		// _bucket, _sum and _count).
		names := []string{
			"caddy_shardcache_requests_total", "caddy_shardcache_bytes_total",
			"caddy_shardcache_peer_fetch_duration_seconds_bucket", "caddy_shardcache_peer_fetch_duration_seconds_count",
			"caddy_shardcache_peer_errors_total", "caddy_shardcache_peer_served_total",
			"caddy_shardcache_primed_items", "caddy_shardcache_primed_bytes", "caddy_shardcache_resident_bytes",
			"caddy_shardcache_ready", "caddy_shardcache_hot_items", "caddy_shardcache_hot_bytes",
			"caddy_shardcache_hot_admissions_total", "caddy_shardcache_hot_evictions_total",
			"caddy_shardcache_peers", "caddy_shardcache_peers_up",
		}
		for _, name := range names {
			if _, ok := metricValue(samples, name); !ok {
				t.Errorf("GET /metrics on n1's admin endpoint (no `metrics` global option): no %s", name)
			}
		}
		for _, tier := range tierNames {
			if _, ok := metricValue(samples, "caddy_shardcache_requests_total", `group="site"`, `tier="`+tier+`"`); !ok {
				t.Errorf("no caddy_shardcache_requests_total{group=\"site\",tier=%q}", tier)
			}
		}
		if v, _ := metricValue(samples, "caddy_shardcache_ready", `group="site"`); v != 1 {
			t.Errorf("caddy_shardcache_ready{group=\"site\"} = %v; want 1", v)
		}
		if v, _ := metricValue(samples, "caddy_shardcache_peers_up"); v != 2 {
			t.Errorf("caddy_shardcache_peers_up = %v; want 2", v)
		}
		for _, s := range samples {
			if strings.HasPrefix(s.name, "caddy_shardcache_") && (strings.Contains(s.labels, "/") || strings.Contains(s.labels, "127.0.0.1")) {
				t.Errorf("metric %s{%s}: a label carries a path or an address", s.name, s.labels)
			}
		}
		local := func() float64 {
			t.Helper()
			s, raw, err := scrapeMetrics(n1)
			if err != nil {
				t.Fatalf("%v\n%.2000s", err, raw)
			}
			v, ok := metricValue(s, "caddy_shardcache_requests_total", `group="site"`, `tier="local"`)
			if !ok {
				t.Fatal("no caddy_shardcache_requests_total{tier=\"local\"}")
			}
			return v
		}
		mine := ownedBy("n1")[:20]
		fetch := func() {
			for _, p := range mine {
				if r := get(t, n1.base, p); r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
					t.Errorf("n1: GET %s: %d %s", p, r.status, clusterPreview(r.body))
				}
			}
		}
		v0 := local()
		fetch()
		v1 := local()
		if v1-v0 != float64(len(mine)) {
			t.Errorf("requests_total{tier=\"local\"} on n1 moved %v -> %v for %d GETs of its own files", v0, v1, len(mine))
		}
		cf := strings.Replace(n1.caddyfile, "header X-Config v1", "header X-Config v2", 1)
		if cf == n1.caddyfile {
			t.Fatal("the node Caddyfile has no `header X-Config v1` to change")
		}
		n1.reload(cf)
		if r := get(t, n1.base, mine[0]); r.header.Get("X-Config") != "v2" {
			t.Fatalf("after the reload n1 answers X-Config %q; want v2 (the new config)", r.header.Get("X-Config"))
		}
		v2 := local()
		if v2 < v1+1 {
			t.Errorf("requests_total{tier=\"local\"} on n1: %v before the reload, %v after it and one more GET; want it kept counting", v1, v2)
		}
		fetch()
		v3 := local()
		if v3-v2 != float64(len(mine)) {
			t.Errorf("requests_total{tier=\"local\"} on n1 after the reload moved %v -> %v for %d GETs", v2, v3, len(mine))
		}
		t.Logf("requests_total{tier=\"local\"} on n1: %v, +%d GETs %v, reload and 1 GET %v, +%d GETs %v", v0, len(mine), v1, v2, len(mine), v3)
		if ok := nodeReady(n1); !ok {
			t.Errorf("n1 not ready after the reload")
		}
	})

	t.Run("6_status_command", func(t *testing.T) {
		for _, n := range []*clusterNode{n1, dir} {
			out, err := runCaddy(t, 15*time.Second, "shardcache", "status", "--address", n.admin)
			if err != nil {
				t.Errorf("caddy shardcache status --address %s (%s): %v\n%s", n.admin, n.name, err, out)
				continue
			}
			t.Logf("caddy shardcache status --address %s (%s):\n%s", n.admin, n.name, out)
			rows := map[string][]string{}
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				if len(f) >= 4 && (strings.HasPrefix(f[0], "n") || f[0] == "director") {
					rows[f[0]] = f
				}
			}
			self, ok := rows[n.name]
			if !ok || len(self) < 5 || self[1] != "(this)" || self[len(self)-1] != "yes" {
				t.Errorf("%s: no row `%s (this) <san> yes yes`: %q", n.name, n.name, self)
			}
			for _, m := range members {
				if m.name == n.name {
					continue
				}
				r, ok := rows[m.name]
				if !ok || r[1] != m.san || r[2] != "yes" || r[3] != "yes" {
					t.Errorf("%s: member row for %s: %q; want `%s %s yes yes`", n.name, m.name, r, m.name, m.san)
				}
			}
			if n == n1 && !regexp.MustCompile(`(?m)^site\s+\S+\s+yes\s`).MatchString(out) {
				t.Errorf("n1: no group row `site <root> yes ...`")
			}
		}
	})
	t.Logf("TestDirector took %s", time.Since(began).Round(time.Millisecond))
}

// TestDirectorSecretCommand checks `caddy shardcache secret`: at least 32
// characters of base64url, different on every run.
func TestDirectorSecretCommand(t *testing.T) {
	needCaddy(t)
	var got []string
	for i := 0; i < 2; i++ {
		stdout, stderr, err := runCaddySplit(t, 15*time.Second, "shardcache", "secret")
		if err != nil {
			t.Fatalf("caddy shardcache secret: %v\n%s", err, stderr)
		}
		s := strings.TrimSpace(stdout)
		if !regexp.MustCompile(`^[A-Za-z0-9_-]{32,}$`).MatchString(s) {
			t.Errorf("caddy shardcache secret printed %q; want >= 32 characters of base64url", s)
		}
		if b, err := base64.RawURLEncoding.DecodeString(s); err != nil || len(b) < 16 {
			t.Errorf("caddy shardcache secret %q: %d bytes decoded (%v)", s, len(b), err)
		}
		got = append(got, s)
	}
	if got[0] == got[1] {
		t.Errorf("caddy shardcache secret printed %q twice", got[0])
	}
}

// TestDirectorObserverRefusesContent checks that a Caddy configured as an
// observer cannot also serve shardcache content: the Caddyfile adapts, but
// validate and run fail, naming the observer.
func TestDirectorObserverRefusesContent(t *testing.T) {
	needCaddy(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "site")
	writeTree(t, root, map[string][]byte{"index.html": []byte("hello\n")})
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	port := freePort(t)
	cf := globalBlock(admin, fmt.Sprintf(`shardcache {
		node director 127.0.0.10:7946
		peer n1 127.0.0.2:7946
		secret {env.%s}
		observer
	}`, clusterSecretEnv)) + fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	shardcache {
		root %s
	}
}
`, port, root)
	cfPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfPath, []byte(cf), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{clusterSecretEnv + "=" + newClusterSecret(t)}
	if out, stderr, err := runCaddyEnv(t, 15*time.Second, env, "adapt", "--config", cfPath, "--adapter", "caddyfile"); err != nil {
		t.Errorf("caddy adapt of an observer with a shardcache site: %v; want it to pass (the error is the config's meaning, not its syntax)\n%s%s", err, out, stderr)
	}
	for _, cmd := range []string{"validate", "run"} {
		stdout, stderr, err := runCaddyEnv(t, 15*time.Second, env, cmd, "--config", cfPath, "--adapter", "caddyfile")
		out := stdout + stderr
		if err == nil {
			t.Errorf("caddy %s of an observer with a shardcache site succeeded; want a failure\n%s", cmd, out)
			continue
		}
		if strings.Contains(err.Error(), "still running") {
			t.Errorf("caddy %s of an observer with a shardcache site: %v", cmd, err)
			continue
		}
		if !strings.Contains(out, "observer") {
			t.Errorf("caddy %s of an observer with a shardcache site fails without saying why (no \"observer\"):\n%s", cmd, out)
		} else {
			lines := slices.DeleteFunc(strings.Split(out, "\n"), func(l string) bool { return !strings.Contains(l, "observer") })
			t.Logf("caddy %s: %s", cmd, strings.TrimSpace(lines[len(lines)-1]))
		}
	}
}
