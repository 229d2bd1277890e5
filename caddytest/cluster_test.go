package integration

// Cluster tests: three Caddy processes (LAN 127.0.0.1 on free ports, SAN
// 127.0.0.2:7946, 127.0.0.3:7946, 127.0.0.4:7946 over QUIC), each with its
// own copy of one generated site, as one shardcache cluster. Run them with
//
//	CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -count=1 -run Cluster ./caddytest/

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardcache/caddy-shardcache/peering"
)

// clusterChangeDeadline is how soon every node must serve a change made on
// its owner's copy.
const clusterChangeDeadline = 2 * time.Second

// TestClusterServing runs a three-node cluster over a generated site of 300
// files and checks, in order: every node serves everything (1), each node
// primed its own third (2), non-owned items come from the owners' memory
// (3), HEAD and 304 move no bytes (4), changes on an owner's copy reach
// every node within 2s (7), and a hot copy and storage answer when an
// owner is gone (5).
func TestClusterServing(t *testing.T) {
	needCaddy(t)
	began := time.Now()
	site := genClusterSite(300, 1)
	members := clusterMembers(3)
	roots := writeClusterRoots(t, members, site)
	secret := newClusterSecret(t)
	nodes := startClusterNodes(t, secret, clusterConfigs(t, members, roots))
	if !waitClusterReady(t, nodes, site.paths(), len(site)) {
		return // the subtests assume every node knows every item
	}
	t.Logf("3 nodes ready in %s (%d files, %d bytes)", time.Since(began).Round(time.Millisecond), len(site), siteBytes(site))
	n1 := nodes[0]
	byName := map[string]*clusterNode{}
	for _, n := range nodes {
		byName[n.name] = n
	}

	// Who owns what, by n1's ring (subtest 2 checks that the nodes agree).
	owners := map[string]string{}
	for _, p := range site.paths() {
		owners[p] = n1.mustWhere(t, p).Owner
	}
	notOwnedBy := func(name string) []string {
		var out []string
		for _, p := range site.paths() {
			if owners[p] != name {
				out = append(out, p)
			}
		}
		return out
	}
	// Paths later subtests change; the others leave them alone.
	reserved := map[string]bool{}

	t.Run("1_every_node_serves_everything", func(t *testing.T) {
		type seen struct{ etag, ctype, lastMod string }
		var mu sync.Mutex
		views := make([]map[string]seen, len(nodes))
		paths := site.paths()
		for ni, n := range nodes {
			views[ni] = map[string]seen{}
			forEachParallel(len(paths), 8, func(i int) {
				p := paths[i]
				want := site.file(p)
				s, ok := checkServes(t, n, p, want)
				if ok {
					mu.Lock()
					views[ni][p] = s
					mu.Unlock()
				}
			})
		}
		// The same headers on every node.
		for _, p := range paths {
			a, ok := views[0][p]
			if !ok {
				continue
			}
			if a.etag == "" {
				t.Errorf("%s: GET %s: no ETag", nodes[0].name, p)
			}
			for ni := 1; ni < len(nodes); ni++ {
				if b, ok := views[ni][p]; ok && b != a {
					t.Errorf("GET %s: %s answers ETag %s, Content-Type %q, Last-Modified %q; %s answers %s, %q, %q",
						p, nodes[0].name, a.etag, a.ctype, a.lastMod, nodes[ni].name, b.etag, b.ctype, b.lastMod)
				}
			}
		}
		// Directory indexes, redirects and misses.
		for _, n := range nodes {
			for _, d := range clusterDirs {
				idx := site.file("/" + path.Join(d, "index.html"))
				if idx == nil {
					continue
				}
				u := "/" + d + "/"
				if d == "" {
					u = "/"
				}
				if r, err := do(http.MethodGet, n.base, u); err != nil {
					t.Errorf("%s: GET %s: %v", n.name, u, err)
				} else if r.status != 200 || !bytes.Equal(r.body, idx) {
					t.Errorf("%s: GET %s: %d %s; want 200 and its index.html (%d bytes)", n.name, u, r.status, clusterPreview(r.body), len(idx))
				}
				if d != "" {
					if r, err := do(http.MethodGet, n.base, "/"+d); err != nil {
						t.Errorf("%s: GET /%s: %v", n.name, d, err)
					} else if r.status != http.StatusPermanentRedirect || r.header.Get("Location") != "/"+d+"/" {
						t.Errorf("%s: GET /%s: %d Location %q; want 308 to /%s/", n.name, d, r.status, r.header.Get("Location"), d)
					}
				}
			}
			for _, p := range []string{"/no-such-file.txt", "/docs/no-such.html", "/no-such-dir/x.bin", "/docs/api/v1/index.htm"} {
				for _, m := range []string{http.MethodGet, http.MethodHead} {
					if r, err := do(m, n.base, p); err != nil {
						t.Errorf("%s: %s %s: %v", n.name, m, p, err)
					} else if r.status != http.StatusNotFound {
						t.Errorf("%s: %s %s: %d %s; want 404", n.name, m, p, r.status, clusterPreview(r.body))
					}
				}
			}
		}
	})

	t.Run("2_each_node_primed_its_third", func(t *testing.T) {
		total := len(site)
		var sumItems, sumBytes int64
		primed := map[string]int64{}
		for _, n := range nodes {
			g := n.status(t).group()
			primed[n.name] = g.PrimedItems
			sumItems += g.PrimedItems
			sumBytes += g.PrimedBytes
			share := float64(g.PrimedItems) / float64(total)
			t.Logf("%s primed %d items (%.1f%%), %d bytes; table of content %d items", n.name, g.PrimedItems, 100*share, g.PrimedBytes, g.TOCItems)
			if share < 0.20 || share > 0.47 {
				t.Errorf("%s primed %d of %d items (%.1f%%); want between 20%% and 47%%", n.name, g.PrimedItems, total, 100*share)
			}
			if g.PrimedItems+g.TOCItems != int64(total) {
				t.Errorf("%s: primed %d + table of content %d = %d items; want %d", n.name, g.PrimedItems, g.TOCItems, g.PrimedItems+g.TOCItems, total)
			}
			// The store's "primed" log line says the same.
			lines := n.findLogs(isPrimed)
			if len(lines) != 1 {
				t.Errorf("%s logged %d \"primed\" lines; want 1: %v", n.name, len(lines), lines)
			} else if items, _ := lines[0].num("items"); int64(items) != g.PrimedItems {
				t.Errorf("%s: the \"primed\" line says %v items, the status %d: %s", n.name, items, g.PrimedItems, lines[0])
			}
		}
		if sumItems != int64(total) || sumBytes != siteBytes(site) {
			t.Errorf("the nodes primed %d items, %d bytes in all; want the whole site once: %d items, %d bytes", sumItems, sumBytes, total, siteBytes(site))
		}
		// Every path: one owner, the same on every node, which holds it;
		// the others know it from the owner's table of content.
		count := map[string]int64{}
		var mu sync.Mutex
		paths := site.paths()
		forEachParallel(len(paths), 8, func(i int) {
			p := paths[i]
			var version string
			for _, n := range nodes {
				w, err := n.where(p)
				if err != nil {
					t.Error(err)
					return
				}
				if w.Owner != owners[p] {
					t.Errorf("%s: where %s: owner %q; %s says %q", n.name, p, w.Owner, n1.name, owners[p])
				}
				if !w.Found || w.Size != int64(len(site.file(p))) {
					t.Errorf("%s: where %s: found %v, size %d; want found, %d", n.name, p, w.Found, w.Size, len(site.file(p)))
				}
				if w.Local != (n.name == w.Owner) {
					t.Errorf("%s: where %s: local %v with owner %s", n.name, p, w.Local, w.Owner)
				}
				if w.Local && !w.Resident {
					t.Errorf("%s: where %s: the owner does not hold it in memory", n.name, p)
				}
				if version == "" {
					version = w.Version
				} else if w.Version != version {
					t.Errorf("%s: where %s: version %q; another node says %q", n.name, p, w.Version, version)
				}
			}
			mu.Lock()
			count[owners[p]]++
			mu.Unlock()
		})
		for _, n := range nodes {
			if count[n.name] != primed[n.name] {
				t.Errorf("%s owns %d paths by /where but primed %d items", n.name, count[n.name], primed[n.name])
			}
		}
	})

	t.Run("3_non_owned_items_come_from_owners_memory", func(t *testing.T) {
		others := notOwnedBy(n1.name)
		for _, p := range others {
			if err := os.Remove(filepath.Join(roots[0], filepath.FromSlash(p[1:]))); err != nil {
				t.Fatal(err)
			}
		}
		before := n1.status(t)
		// The watcher sees the deletions within ~100ms; none of them is
		// n1's to publish or to act on.
		time.Sleep(1200 * time.Millisecond)
		forEachParallel(len(others), 8, func(i int) {
			p := others[i]
			want := site.file(p)
			r, err := do(http.MethodGet, n1.base, p)
			if err != nil {
				t.Errorf("%s: GET %s: %v", n1.name, p, err)
			} else if r.status != 200 || !bytes.Equal(r.body, want) {
				t.Errorf("%s: GET %s (owner %s, deleted from %s's copy): %d %s; want 200 and its %d bytes",
					n1.name, p, owners[p], n1.name, r.status, clusterPreview(r.body), len(want))
			}
		})
		after := n1.status(t)
		bg, ag := before.group(), after.group()
		t.Logf("%s: %d non-owned items deleted from its copy and served; tiers before %v, after %v; hot %+v",
			n1.name, len(others), bg.Tiers, ag.Tiers, ag.Hot)
		if ag.tier("peer").Requests <= bg.tier("peer").Requests {
			t.Errorf("%s: peer tier requests %d → %d; want growth", n1.name, bg.tier("peer").Requests, ag.tier("peer").Requests)
		}
		if ag.tier("storage").Requests != 0 || ag.tier("storage").Bytes != 0 {
			t.Errorf("%s: storage tier %+v (was %+v); want 0", n1.name, ag.tier("storage"), bg.tier("storage"))
		}
		if ag.TOCItems != bg.TOCItems || ag.PrimedItems != bg.PrimedItems {
			t.Errorf("%s: primed %d → %d, table of content %d → %d after deleting non-owned files from its copy; want no change",
				n1.name, bg.PrimedItems, ag.PrimedItems, bg.TOCItems, ag.TOCItems)
		}
		// n1 published nothing about files it does not own.
		for _, n := range nodes[1:] {
			if g := n.status(t).group(); g.PrimedItems+g.TOCItems != int64(len(site)) {
				t.Errorf("%s: primed %d + table of content %d; want %d (n1 must not publish deletions of files it does not own)",
					n.name, g.PrimedItems, g.TOCItems, len(site))
			}
		}
	})

	t.Run("4_head_and_304_move_no_bytes", func(t *testing.T) {
		var batch []string
		for _, p := range notOwnedBy(n1.name) {
			if len(site.file(p)) > 0 && len(batch) < 60 {
				batch = append(batch, p)
			}
		}
		type snap struct {
			peer, hot  clusterTier
			hits, miss int64
			served     map[string]int64
		}
		take := func() snap {
			g := n1.status(t).group()
			s := snap{peer: g.tier("peer"), hot: g.tier("hot"), served: map[string]int64{}}
			if g.Hot != nil {
				s.hits, s.miss = g.Hot.Hits, g.Hot.Misses
			}
			for _, n := range nodes[1:] {
				s.served[n.name] = n.status(t).group().ServedPeers
			}
			return s
		}
		before := take()
		for _, p := range batch {
			want := site.file(p)
			h := mustDo(t, http.MethodHead, n1.base, p)
			etag := h.header.Get("Etag")
			if h.status != 200 || len(h.body) != 0 || h.header.Get("Content-Length") != fmt.Sprint(len(want)) || etag == "" {
				t.Errorf("%s: HEAD %s: %d, Content-Length %q, ETag %q, %d body bytes; want 200, %d, an ETag, none",
					n1.name, p, h.status, h.header.Get("Content-Length"), etag, len(h.body), len(want))
				continue
			}
			c := mustDo(t, http.MethodGet, n1.base, p, "If-None-Match: "+etag)
			if c.status != http.StatusNotModified || len(c.body) != 0 {
				t.Errorf("%s: GET %s If-None-Match: %s: %d, %d bytes; want 304, none", n1.name, p, etag, c.status, len(c.body))
			}
			c = mustDo(t, http.MethodGet, n1.base, p, `If-None-Match: "nope", `+etag)
			if c.status != http.StatusNotModified || len(c.body) != 0 {
				t.Errorf("%s: GET %s If-None-Match: \"nope\", %s: %d, %d bytes; want 304, none", n1.name, p, etag, c.status, len(c.body))
			}
			c = mustDo(t, http.MethodHead, n1.base, p, "If-None-Match: "+etag)
			if c.status != http.StatusNotModified {
				t.Errorf("%s: HEAD %s If-None-Match: %s: %d; want 304", n1.name, p, etag, c.status)
			}
		}
		after := take()
		if !reflect.DeepEqual(before, after) {
			t.Errorf("%s: %d HEAD and 304 requests of items it does not own moved bytes: peer tier %+v → %+v, hot tier %+v → %+v, hot hits/misses %d/%d → %d/%d, served to peers %v → %v",
				n1.name, 3*len(batch), before.peer, after.peer, before.hot, after.hot, before.hits, before.miss, after.hits, after.miss, before.served, after.served)
		}
	})

	t.Run("7_changes_on_the_owners_copy_reach_every_node", func(t *testing.T) {
		type expect struct {
			path    string
			body    []byte // nil: 404
			oldETag string
		}
		var exps []expect
		rootOf := map[string]string{}
		for i, m := range members {
			rootOf[m.name] = roots[i]
		}
		// One changed file per owner (new bytes, new size).
		changed := map[string]string{}
		for _, p := range site.paths() {
			o := owners[p]
			if _, done := changed[o]; done || path.Base(p) == "index.html" || len(site.file(p)) < 100 || len(site.file(p)) > 64<<10 {
				continue
			}
			changed[o] = p
		}
		// One deleted file (owned by n2) and one new file (owned by n3).
		var deleted string
		for _, p := range site.paths() {
			if owners[p] == "n2" && path.Base(p) != "index.html" && p != changed["n2"] && len(site.file(p)) > 0 {
				deleted = p
				break
			}
		}
		created := pathOwnedBy(t, n1, "n3", "/blog/new-%d.txt")
		for _, o := range []string{"n1", "n2", "n3"} {
			p := changed[o]
			if p == "" {
				t.Fatalf("no file to change owned by %s", o)
			}
			old := mustDo(t, http.MethodGet, n1.base, p)
			exps = append(exps, expect{path: p, body: []byte(fmt.Sprintf("changed on %s's copy at %s\n%s", o, time.Now().Format(time.RFC3339Nano), strings.Repeat("x", 77))), oldETag: old.header.Get("Etag")})
		}
		exps = append(exps, expect{path: created, body: []byte("created on n3's copy\n")}, expect{path: deleted})
		for _, e := range exps {
			reserved[e.path] = true
		}
		for _, n := range nodes {
			if r := mustDo(t, http.MethodGet, n.base, created); r.status != http.StatusNotFound {
				t.Fatalf("%s: GET %s before it is created: %d", n.name, created, r.status)
			}
		}

		start := time.Now()
		for _, e := range exps {
			owner := owners[e.path]
			if e.path == created {
				owner = "n3"
			}
			fp := filepath.Join(rootOf[owner], filepath.FromSlash(e.path[1:]))
			var err error
			if e.body == nil {
				err = os.Remove(fp)
			} else {
				err = os.WriteFile(fp, e.body, 0o644)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		ok := func(n *clusterNode, e expect) (bool, string) {
			r, err := do(http.MethodGet, n.base, e.path)
			if err != nil {
				return false, err.Error()
			}
			if e.body == nil {
				return r.status == http.StatusNotFound, fmt.Sprintf("%d %s", r.status, clusterPreview(r.body))
			}
			etag := r.header.Get("Etag")
			return r.status == 200 && bytes.Equal(r.body, e.body) && etag != "" && etag != e.oldETag,
				fmt.Sprintf("%d ETag %s %s", r.status, etag, clusterPreview(r.body))
		}
		// Poll every node for every change until all are served; past the
		// deadline keep polling a little to say how late they are.
		type key struct{ node, path string }
		doneAt := map[key]time.Duration{}
		last := map[key]string{}
		for i := 0; i < 400 && len(doneAt) < len(nodes)*len(exps) && time.Since(start) < 10*time.Second; i++ {
			for _, n := range nodes {
				for _, e := range exps {
					k := key{n.name, e.path}
					if _, done := doneAt[k]; done {
						continue
					}
					good, what := ok(n, e)
					if good {
						doneAt[k] = time.Since(start)
					}
					last[k] = what
				}
			}
			time.Sleep(25 * time.Millisecond)
		}
		var slowest time.Duration
		for _, n := range nodes {
			for _, e := range exps {
				k := key{n.name, e.path}
				d, done := doneAt[k]
				what := "changed"
				switch {
				case e.path == created:
					what = "created"
				case e.body == nil:
					what = "deleted"
				}
				switch {
				case !done:
					t.Errorf("%s: %s %s (owner %s) not served within 10s; last GET: %s", n.name, what, e.path, owners[e.path], last[k])
				case d > clusterChangeDeadline:
					t.Errorf("%s: %s %s served after %s; want within %s", n.name, what, e.path, d.Round(time.Millisecond), clusterChangeDeadline)
				}
				slowest = max(slowest, d)
			}
		}
		t.Logf("changes served on every node within %s", slowest.Round(time.Millisecond))
		// Every node agrees on the new ETags.
		for _, e := range exps {
			if e.body == nil {
				continue
			}
			var etags []string
			for _, n := range nodes {
				etags = append(etags, mustDo(t, http.MethodHead, n.base, e.path).header.Get("Etag"))
			}
			if etags[0] != etags[1] || etags[0] != etags[2] {
				t.Errorf("HEAD %s: ETags %v differ between nodes", e.path, etags)
			}
		}
		// The site as it is now, for the subtests after this one.
		for _, e := range exps {
			if e.body == nil {
				delete(site, e.path[1:])
			} else {
				site[e.path[1:]] = e.body
			}
		}
		owners[created] = "n3"
	})

	t.Run("5_hot_copy_and_storage_when_the_owner_is_gone", func(t *testing.T) {
		victim := byName["n2"]
		// A key n2 owns, not changed above, of moderate size.
		var hotKey string
		for _, p := range site.paths() {
			if owners[p] == victim.name && !reserved[p] && len(site.file(p)) >= 1024 && len(site.file(p)) <= 64<<10 {
				hotKey = p
				break
			}
		}
		if hotKey == "" {
			t.Fatal("no key of n2 to make hot")
		}
		want := site.file(hotKey)
		// n1's copy must not be able to answer it (subtest 3 deleted it).
		if err := os.Remove(filepath.Join(roots[0], filepath.FromSlash(hotKey[1:]))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		for i := 0; i < 10; i++ {
			if r := mustDo(t, http.MethodGet, n1.base, hotKey); r.status != 200 || !bytes.Equal(r.body, want) {
				t.Fatalf("%s: GET %s (#%d): %d %s; want 200 and its %d bytes", n1.name, hotKey, i+1, r.status, clusterPreview(r.body), len(want))
			}
		}
		if w := n1.mustWhere(t, hotKey); !w.Resident {
			t.Errorf("%s: where %s after 10 GETs: %+v; want resident (a hot copy)", n1.name, hotKey, w)
		}

		// Two files n2 owns that n1 never asked for: one also on n1's
		// copy, one only on n2's.
		present := pathOwnedBy(t, n1, victim.name, "/docs/fallback-present-%d.txt")
		absent := pathOwnedBy(t, n1, victim.name, "/docs/fallback-absent-%d.txt")
		presentBody := []byte("a file n2 owns, on n1's copy too\n" + strings.Repeat("p", 3000))
		absentBody := []byte("a file n2 owns, on n2's copy only\n")
		for _, f := range []struct {
			root string
			p    string
			b    []byte
		}{{roots[1], present, presentBody}, {roots[0], present, presentBody}, {roots[1], absent, absentBody}} {
			if err := os.WriteFile(filepath.Join(f.root, filepath.FromSlash(f.p[1:])), f.b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 5*time.Second, "n1's table of content to list "+present+" and "+absent, func() bool {
			a, err1 := n1.where(present)
			b, err2 := n1.where(absent)
			return err1 == nil && err2 == nil && a.Found && b.Found
		})
		// And one of n2's files that subtest 3 deleted from n1's copy and
		// n1 holds no copy of (if the hot cache has not taken them all).
		var oldAbsent string
		for _, p := range site.paths() {
			if owners[p] != victim.name || reserved[p] || p == hotKey {
				continue
			}
			if _, err := os.Stat(filepath.Join(roots[0], filepath.FromSlash(p[1:]))); err == nil {
				continue
			}
			if w := n1.mustWhere(t, p); w.Found && !w.Resident {
				oldAbsent = p
				break
			}
		}

		before := n1.status(t).group()
		closeIdleClients()
		stopped := time.Now()
		victim.stop() // SIGTERM by PID, then wait (SIGKILL after 5s)
		select {
		case <-victim.exited:
		default:
			t.Fatalf("%s still running after stop", victim.name)
		}
		t.Logf("%s (pid %d) stopped in %s: %v", victim.name, victim.cmd.Process.Pid, time.Since(stopped).Round(time.Millisecond), victim.waitErr)
		waitFor(t, 8*time.Second, "n1 to see n2 down", func() bool {
			var st clusterStatus
			if err := n1.adminGet("/shardcache/status", &st); err != nil {
				return false
			}
			m, ok := st.member(victim.name)
			return ok && !m.Up
		})
		t.Logf("%s saw %s down %s after the SIGTERM", n1.name, victim.name, time.Since(stopped).Round(time.Millisecond))

		// The hot copy answers.
		if r := mustDo(t, http.MethodGet, n1.base, hotKey); r.status != 200 || !bytes.Equal(r.body, want) {
			t.Errorf("%s: GET %s (hot, owner %s stopped): %d %s; want 200 and its %d bytes", n1.name, hotKey, victim.name, r.status, clusterPreview(r.body), len(want))
		}
		mid := n1.status(t).group()
		if mid.tier("hot").Requests <= before.tier("hot").Requests {
			t.Errorf("%s: hot tier requests %d → %d after GET %s with its owner stopped; want growth", n1.name, before.tier("hot").Requests, mid.tier("hot").Requests, hotKey)
		}

		// Storage answers when the file is there.
		if r := mustDo(t, http.MethodGet, n1.base, present); r.status != 200 || !bytes.Equal(r.body, presentBody) {
			t.Errorf("%s: GET %s (owner %s stopped, file on %s's copy): %d %s; want 200 and its %d bytes",
				n1.name, present, victim.name, n1.name, r.status, clusterPreview(r.body), len(presentBody))
		}
		after := n1.status(t).group()
		if after.tier("storage").Requests <= mid.tier("storage").Requests {
			t.Errorf("%s: storage tier %+v → %+v after GET %s with its owner stopped; want growth", n1.name, mid.tier("storage"), after.tier("storage"), present)
		}
		if after.PeerErrors <= before.PeerErrors {
			t.Errorf("%s: peer_errors %d → %d after GET %s with its owner stopped; want growth", n1.name, before.PeerErrors, after.PeerErrors, present)
		}
		t.Logf("%s: tiers %v → %v, peer_errors %d → %d", n1.name, before.Tiers, after.Tiers, before.PeerErrors, after.PeerErrors)

		// And never wrong bytes when it is not; HEAD says what GET says.
		for _, p := range []string{absent, oldAbsent} {
			if p == "" {
				t.Logf("every file of n2 deleted from n1's copy is in n1's hot cache: the deleted-in-subtest-3 case is skipped")
				continue
			}
			r := mustDo(t, http.MethodGet, n1.base, p)
			if r.status != http.StatusNotFound && r.status != http.StatusBadGateway {
				t.Errorf("%s: GET %s (owner %s stopped, file not on %s's copy): %d %s; want 404 or 502",
					n1.name, p, victim.name, n1.name, r.status, clusterPreview(r.body))
			}
			// A 502 says "cannot get it now": HEAD may still describe
			// the file. A 404 says "no such file": HEAD must not
			// describe it.
			h := mustDo(t, http.MethodHead, n1.base, p)
			if r.status == http.StatusNotFound && h.status != http.StatusNotFound {
				t.Errorf("%s: HEAD %s (owner %s stopped, file not on %s's copy): %d (Content-Length %s, ETag %s), but GET answers 404: HEAD describes a file GET says does not exist",
					n1.name, p, victim.name, n1.name, h.status, h.header.Get("Content-Length"), h.header.Get("Etag"))
			}
		}

		// The survivors serve their own items and each other's.
		for _, n := range []*clusterNode{nodes[0], nodes[2]} {
			for _, p := range site.paths() {
				if owners[p] == victim.name || len(site.file(p)) == 0 {
					continue
				}
				if r := mustDo(t, http.MethodGet, n.base, p); r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
					t.Errorf("%s: GET %s (owner %s) with %s stopped: %d %s", n.name, p, owners[p], victim.name, r.status, clusterPreview(r.body))
				}
			}
		}
	})
}

// checkServes checks GET, HEAD, a Range and a 304 of p on n against want,
// and returns the headers that must be the same on every node.
func checkServes(t *testing.T, n *clusterNode, p string, want []byte) (s struct{ etag, ctype, lastMod string }, ok bool) {
	r, err := do(http.MethodGet, n.base, p)
	if err != nil {
		t.Errorf("%s: GET %s: %v", n.name, p, err)
		return s, false
	}
	if r.status != 200 || !bytes.Equal(r.body, want) {
		t.Errorf("%s: GET %s: %d %s; want 200 and its %d bytes", n.name, p, r.status, clusterPreview(r.body), len(want))
		return s, false
	}
	s.etag, s.ctype, s.lastMod = r.header.Get("Etag"), r.header.Get("Content-Type"), r.header.Get("Last-Modified")
	ok = true
	if h, err := do(http.MethodHead, n.base, p); err != nil {
		t.Errorf("%s: HEAD %s: %v", n.name, p, err)
		ok = false
	} else if h.status != 200 || len(h.body) != 0 || h.header.Get("Content-Length") != fmt.Sprint(len(want)) || h.header.Get("Etag") != s.etag {
		t.Errorf("%s: HEAD %s: %d, Content-Length %q, ETag %q, %d body bytes; want 200, %d, %s, none",
			n.name, p, h.status, h.header.Get("Content-Length"), h.header.Get("Etag"), len(h.body), len(want), s.etag)
		ok = false
	}
	if len(want) >= 2 {
		from := len(want) / 4
		to := from + min(len(want)/2, 10000) - 1
		to = max(to, from)
		rng := fmt.Sprintf("bytes=%d-%d", from, to)
		if rr, err := do(http.MethodGet, n.base, p, "Range: "+rng); err != nil {
			t.Errorf("%s: GET %s Range: %s: %v", n.name, p, rng, err)
			ok = false
		} else if cr := fmt.Sprintf("bytes %d-%d/%d", from, to, len(want)); rr.status != http.StatusPartialContent ||
			!bytes.Equal(rr.body, want[from:to+1]) || rr.header.Get("Content-Range") != cr {
			t.Errorf("%s: GET %s Range: %s: %d, Content-Range %q, %s; want 206, %s and bytes %d-%d",
				n.name, p, rng, rr.status, rr.header.Get("Content-Range"), clusterPreview(rr.body), cr, from, to)
			ok = false
		}
	}
	if s.etag != "" {
		if c, err := do(http.MethodGet, n.base, p, "If-None-Match: "+s.etag); err != nil {
			t.Errorf("%s: GET %s If-None-Match: %v", n.name, p, err)
			ok = false
		} else if c.status != http.StatusNotModified || len(c.body) != 0 {
			t.Errorf("%s: GET %s If-None-Match: %s: %d, %d bytes; want 304, none", n.name, p, s.etag, c.status, len(c.body))
			ok = false
		}
	}
	return s, ok
}

func siteBytes(s clusterSite) int64 {
	var n int64
	for _, b := range s {
		n += int64(len(b))
	}
	return n
}

// TestClusterHandshakeRefusals checks that the SAN port answers only
// holders of a certificate from the cluster CA: (a) a QUIC client without a
// client certificate, (b) a fourth node with the wrong secret, (c) a client
// with a certificate from another CA are all refused, and the node keeps
// serving. A client with a certificate from the cluster CA (derived from
// the secret) is the control: it is answered.
func TestClusterHandshakeRefusals(t *testing.T) {
	needCaddy(t)
	site := genClusterSite(40, 2)
	members := clusterMembers(4) // n4 is the one with the wrong secret
	roots := writeClusterRoots(t, members, site)
	secret, wrong := newClusterSecret(t), newClusterSecret(t)
	cfgs := clusterConfigs(t, members, roots)
	good := startClusterNodes(t, secret, cfgs[:3])
	n1 := good[0]
	owners := map[string]string{}
	var own1 string // a file n1 owns, for the raw clients to ask for
	known := 0      // the items n1, n2 and n3 publish: all but n4's
	for _, p := range site.paths() {
		owners[p] = n1.mustWhere(t, p).Owner
		if owners[p] == "n1" && own1 == "" && len(site.file(p)) > 0 {
			own1 = p
		}
		if owners[p] != "n4" {
			known++
		}
	}
	// n1, n2 and n3 find each other (n4 is in their ring, and down).
	if !waitClusterReady(t, good, site.paths(), known) {
		return
	}
	n4 := startClusterNodes(t, wrong, cfgs[3:])[0]
	if own1 == "" {
		t.Fatal("n1 owns no non-empty file")
	}

	// The control: a leaf from the cluster CA gets an answer.
	probe, err := peering.CredentialsFromSecret(secret, "probe")
	if err != nil {
		t.Fatal(err)
	}
	control := func(when string) {
		t.Helper()
		st, rest, err := sanGet(n1.san, probe.ClientConfig("n1"), clusterGroup, own1)
		if err != nil || st != 0 || !endsWith(rest, site.file(own1)) {
			t.Fatalf("%s: a client with a certificate from the cluster CA asked %s for %s: status %d, %d bytes, %v; want status 0 and its %d bytes",
				when, n1.san, own1, st, len(rest), err, len(site.file(own1)))
		}
	}
	control("before the refusals")
	servedBefore := n1.status(t).group().ServedPeers

	t.Run("a_no_client_certificate", func(t *testing.T) {
		tc := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{peering.ALPN}, MinVersion: tls.VersionTLS13}
		st, rest, err := sanGet(n1.san, tc, clusterGroup, own1)
		if !refusedAtConnection(err) || len(rest) > 0 {
			t.Errorf("a QUIC client without a client certificate: status %d, %d bytes, err %v; want the connection refused", st, len(rest), err)
		} else {
			t.Logf("refused: %v", err)
		}
	})

	t.Run("c_certificate_from_another_ca", func(t *testing.T) {
		// (c1) the CA of another secret, (c2) a CA made here; both leaves
		// name a member (n2), and the clients skip verifying the server.
		other, err := peering.CredentialsFromSecret(newClusterSecret(t), "n2")
		if err != nil {
			t.Fatal(err)
		}
		own, err := foreignCredentials("n2")
		if err != nil {
			t.Fatal(err)
		}
		for name, creds := range map[string]*peering.Credentials{"another secret's CA": other, "a CA of its own": own} {
			tc := creds.ClientConfig("n1")
			tc.InsecureSkipVerify = true
			// Send the certificate whatever CAs the server says it
			// accepts (Go's client sends none that does not match them).
			cert := tc.Certificates[0]
			tc.Certificates = nil
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
			st, rest, err := sanGet(n1.san, tc, clusterGroup, own1)
			if !refusedAtConnection(err) || len(rest) > 0 {
				t.Errorf("a QUIC client with a certificate from %s: status %d, %d bytes, err %v; want the connection refused", name, st, len(rest), err)
			} else {
				t.Logf("%s: refused: %v", name, err)
			}
		}
	})

	t.Run("b_fourth_node_with_the_wrong_secret", func(t *testing.T) {
		// Both ways fail: n4 dials the others and they dial n4.
		for _, o := range good {
			waitFor(t, 10*time.Second, "n4 to fail dialling "+o.name, func() bool {
				return len(n4.findLogs(func(e logEntry) bool {
					return e.str("msg") == "dialling peer failed; retrying" && e.str("peer") == o.name
				})) > 0
			})
			waitFor(t, 10*time.Second, o.name+" to fail dialling n4", func() bool {
				return len(o.findLogs(func(e logEntry) bool {
					return e.str("msg") == "dialling peer failed; retrying" && e.str("peer") == "n4"
				})) > 0
			})
		}
		time.Sleep(time.Second) // a few more rounds of redials
		for _, e := range n4.findLogs(func(e logEntry) bool {
			return e.str("msg") == "dialling peer failed; retrying" && e.str("peer") == "n1"
		}) {
			t.Logf("n4 dialling n1: %s", e.str("error"))
		}
		for _, e := range n1.findLogs(func(e logEntry) bool {
			return e.str("msg") == "dialling peer failed; retrying" && e.str("peer") == "n4"
		}) {
			t.Logf("n1 dialling n4: %s", e.str("error"))
		}
		if ups := n4.findLogs(func(e logEntry) bool { return isPeerUp(e, "") || e.str("msg") == "peer subscribed" }); len(ups) > 0 {
			t.Errorf("n4 (wrong secret) logged peers up or subscribed: %v", ups)
		}
		st4 := n4.status(t)
		for _, m := range st4.Members {
			if m.Up {
				t.Errorf("n4 (wrong secret) sees %s up", m.Name)
			}
		}
		for _, o := range good {
			if ups := o.findLogs(func(e logEntry) bool {
				return (isPeerUp(e, "n4") || e.str("msg") == "peer subscribed") && e.str("peer") == "n4"
			}); len(ups) > 0 {
				t.Errorf("%s logged n4 (wrong secret) up or subscribed: %v", o.name, ups)
			}
			st := o.status(t)
			if m, ok := st.member("n4"); !ok || m.Up {
				t.Errorf("%s's status shows n4 (wrong secret) as %+v (listed %v); want listed, not up", o.name, m, ok)
			}
			for _, p := range good {
				if m, ok := st.member(p.name); p != o && (!ok || !m.Up) {
					t.Errorf("%s's status shows %s as %+v; want up", o.name, p.name, m)
				}
			}
		}
		// n4's share is served by the others from their own storage.
		for _, p := range site.paths() {
			if owners[p] != "n4" {
				continue
			}
			for _, o := range good {
				if r := mustDo(t, http.MethodGet, o.base, p); r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
					t.Errorf("%s: GET %s (owner n4, never up): %d %s; want 200 and its %d bytes", o.name, p, r.status, clusterPreview(r.body), len(site.file(p)))
				}
			}
		}
	})

	// n1 served no refused client, and keeps serving.
	if got := n1.status(t).group().ServedPeers; got != servedBefore {
		t.Errorf("n1 served %d peer fetches during the refusals; want 0", got-servedBefore)
	}
	control("after the refusals")
	for _, p := range site.paths() {
		if r := mustDo(t, http.MethodGet, n1.base, p); r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
			t.Errorf("n1: GET %s after the refusals: %d %s", p, r.status, clusterPreview(r.body))
		}
	}
}

// foreignCredentials returns credentials for name from a CA made here, not
// derived from any cluster secret.
func foreignCredentials(name string) (*peering.Credentials, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{CommonName: "not the cluster CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	leaf, err := peering.IssueLeaf(ca, key, name)
	if err != nil {
		return nil, err
	}
	return peering.NewCredentials(leaf, ca)
}

// TestClusterAdaptValidate checks that `caddy adapt` of a cluster
// Caddyfile keeps the secret's placeholder and never its value, that
// `caddy validate` binds no SAN port, and that a too-short secret is
// refused without being shown.
func TestClusterAdaptValidate(t *testing.T) {
	needCaddy(t)
	root := filepath.Join(t.TempDir(), "site")
	writeTree(t, root, map[string][]byte{"index.html": []byte("hello\n")})
	members := clusterMembers(3)
	cfg := clusterConfigs(t, members, []string{root, root, root})[0]
	cf := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cf, []byte(clusterCaddyfile(cfg)), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := newClusterSecret(t)
	env := []string{clusterSecretEnv + "=" + secret}

	t.Run("adapt_keeps_the_placeholder", func(t *testing.T) {
		stdout, stderr, err := runCaddyEnv(t, 30*time.Second, env, "adapt", "--config", cf, "--adapter", "caddyfile")
		if err != nil {
			t.Fatalf("caddy adapt: %v\n%s", err, stderr)
		}
		if strings.Contains(stdout+stderr, secret) {
			t.Errorf("caddy adapt shows the secret's value:\n%s\n%s", stdout, stderr)
		}
		var cfgJSON struct {
			Apps struct {
				Shardcache struct {
					Secret string `json:"secret"`
					Node   struct{ Name, Address string }
					Peers  []struct{ Name, Address string }
				} `json:"shardcache"`
			} `json:"apps"`
		}
		if err := json.Unmarshal([]byte(stdout), &cfgJSON); err != nil {
			t.Fatalf("caddy adapt output: %v\n%s", err, stdout)
		}
		sc := cfgJSON.Apps.Shardcache
		if sc.Secret != "{env."+clusterSecretEnv+"}" || sc.Node.Name != "n1" || sc.Node.Address != "127.0.0.2:7946" || len(sc.Peers) != 2 {
			t.Errorf("caddy adapt: shardcache app %+v; want secret {env.%s}, node n1 127.0.0.2:7946 and 2 peers", sc, clusterSecretEnv)
		}
	})

	t.Run("validate_binds_no_san_port", func(t *testing.T) {
		stdout, stderr, err := runCaddyEnv(t, 30*time.Second, env, "validate", "--config", cf, "--adapter", "caddyfile")
		out := stdout + stderr
		if err != nil {
			t.Fatalf("caddy validate: %v\n%s", err, out)
		}
		if strings.Contains(out, secret) {
			t.Errorf("caddy validate shows the secret's value:\n%s", out)
		}
		for _, msg := range []string{"peering listening", "node started", "priming"} {
			if strings.Contains(out, `"msg":"`+msg+`"`) {
				t.Errorf("caddy validate logged %q: it must not start the node:\n%s", msg, out)
			}
		}
		pc, err := net.ListenPacket("udp", "127.0.0.2:7946")
		if err != nil {
			t.Fatalf("127.0.0.2:7946 is not free to bind after caddy validate: %v", err)
		}
		// Again with the port held by the test: validate must not need it.
		stdout, stderr, err = runCaddyEnv(t, 30*time.Second, env, "validate", "--config", cf, "--adapter", "caddyfile")
		pc.Close()
		if err != nil {
			t.Errorf("caddy validate with 127.0.0.2:7946 taken: %v\n%s%s", err, stdout, stderr)
		}
	})

	t.Run("short_secret_refused_unseen", func(t *testing.T) {
		short := "tooshort-Zq7x1" // 14 bytes
		stdout, stderr, err := runCaddyEnv(t, 30*time.Second, []string{clusterSecretEnv + "=" + short}, "validate", "--config", cf, "--adapter", "caddyfile")
		out := stdout + stderr
		if err == nil {
			t.Fatalf("caddy validate accepted a %d-byte secret:\n%s", len(short), out)
		}
		if strings.Contains(out, short) {
			t.Errorf("caddy validate shows the short secret's value:\n%s", out)
		}
		if !strings.Contains(out, "{env."+clusterSecretEnv+"}") {
			t.Errorf("caddy validate's error does not name the placeholder:\n%s", out)
		}
	})
}
