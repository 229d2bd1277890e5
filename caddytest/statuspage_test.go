package integration

import (
	"bytes"
	"io"
	"net/http"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStatusPage runs a 2-node cluster and checks the admin endpoint's
// HTML page (GET /shardcache/) on both nodes (1), and the CLI's `where` (2)
// and `purge` (3) against a live node.
func TestStatusPage(t *testing.T) {
	needCaddy(t)
	site := genClusterSite(60, 11)
	members := clusterMembers(2)
	roots := writeClusterRoots(t, members, site)
	secret := newClusterSecret(t)
	nodes := startClusterNodes(t, secret, clusterConfigs(t, members, roots))
	if !waitClusterReady(t, nodes, site.paths(), len(site)) {
		return
	}
	n1, n2 := nodes[0], nodes[1]

	t.Run("1_page", func(t *testing.T) {
		fetch := func(n *clusterNode, p string, hdr ...string) (int, string, string) {
			t.Helper()
			req, _ := http.NewRequest(http.MethodGet, "http://"+n.admin+p, nil)
			for i := 0; i+1 < len(hdr); i += 2 {
				req.Header.Set(hdr[i], hdr[i+1])
			}
			resp, err := adminClient.Do(req)
			if err != nil {
				t.Fatalf("%s: GET %s: %v", n.name, p, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
		}
		for _, n := range nodes {
			// /shardcache redirects to /shardcache/ (the client follows).
			for _, p := range []string{"/shardcache/", "/shardcache"} {
				code, ctype, body := fetch(n, p)
				if code != 200 || ctype != "text/html; charset=utf-8" {
					t.Fatalf("%s: GET %s: %d %q: %s", n.name, p, code, ctype, clusterPreview([]byte(body)))
				}
				for _, want := range []string{
					`<meta http-equiv="refresh" content="2">`,
					"node " + n.name,
					"group " + clusterGroup,
					"<h2>Members</h2>",
				} {
					if !strings.Contains(body, want) {
						t.Errorf("%s: GET %s: page lacks %q", n.name, p, want)
					}
				}
				// Every member: itself in the title, the other in the members
				// table, both on the ring.
				for _, m := range members {
					if !strings.Contains(body, ">"+m.name+"<") {
						t.Errorf("%s: GET %s: page does not list member %s", n.name, p, m.name)
					}
					if m.name != n.name && !strings.Contains(body, "<td>"+m.name+"</td>") {
						t.Errorf("%s: GET %s: members table lacks %s", n.name, p, m.name)
					}
				}
				if strings.Contains(strings.ToLower(body), "<script") {
					t.Errorf("%s: GET %s: page has a script", n.name, p)
				}
			}
			// The JSON status is still the JSON status.
			if _, ok := tryStatus(n); !ok {
				t.Errorf("%s: GET /shardcache/status no longer answers JSON", n.name)
			}
			// A browser following a link or refresh from the page itself
			// (Sec-Fetch-* and a Referer of the admin origin) passes the
			// admin endpoint's origin check.
			code, _, body := fetch(n, "/shardcache/", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Site", "same-origin",
				"Sec-Fetch-Dest", "document", "Referer", "http://"+n.admin+"/shardcache/")
			if code != 200 {
				t.Errorf("%s: browser-like GET /shardcache/ with Referer: %d %s", n.name, code, clusterPreview([]byte(body)))
			}
			// A typed URL on loopback (Sec-Fetch-Mode: navigate, no Origin
			// or Referer) is decided by Caddy's origin check before any
			// route: log what it answers.
			code, _, body = fetch(n, "/shardcache/", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Site", "none", "Sec-Fetch-Dest", "document")
			t.Logf("%s: browser-like GET /shardcache/ without Origin or Referer: %d %s", n.name, code, clusterPreview([]byte(body)))
		}
	})

	// A file n2 owns, of 1-64 KiB.
	var p string
	for _, q := range site.paths() {
		if sz := len(site.file(q)); sz >= 1<<10 && sz <= 64<<10 && path.Base(q) != "index.html" && n1.mustWhere(t, q).Owner == "n2" {
			p = q
			break
		}
	}
	if p == "" {
		t.Fatal("no file of 1-64 KiB owned by n2")
	}

	t.Run("2_cli_where", func(t *testing.T) {
		stdout, stderr, err := runCaddySplit(t, 15*time.Second, "shardcache", "where", p, "--address", n1.admin)
		if err != nil {
			t.Fatalf("caddy shardcache where %s: %v\nstdout:\n%s\nstderr:\n%s", p, err, stdout, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "PATH") || !strings.Contains(lines[0], "OWNER") {
			t.Fatalf("caddy shardcache where %s: want a header and one row, got:\n%s", p, stdout)
		}
		f := strings.Fields(lines[1])
		// PATH GROUP OWNER HOLDERS HERE FOUND VERSION SIZE IN-MEMORY
		if len(f) < 9 || f[0] != p || f[1] != clusterGroup || f[2] != "n2" || f[4] != "no" || f[5] != "yes" {
			t.Errorf("caddy shardcache where %s on n1: row %q; want path, group %s, owner n2, not here, found", p, lines[1], clusterGroup)
		}
		// A bad path is refused by name, before asking the node.
		stdout, stderr, err = runCaddySplit(t, 15*time.Second, "shardcache", "where", "no-slash", "--address", n1.admin)
		if err == nil || !strings.Contains(stderr, `no-slash`) {
			t.Errorf("caddy shardcache where no-slash: err %v, stderr %q; want a failure naming the path", err, stderr)
		}
		// An admin address where nothing listens fails.
		if _, stderr, err := runCaddySplit(t, 15*time.Second, "shardcache", "where", p, "--address", "127.0.0.1:1"); err == nil {
			t.Errorf("caddy shardcache where --address 127.0.0.1:1: no error (stderr %q)", stderr)
		}
	})

	t.Run("3_cli_purge", func(t *testing.T) {
		// Make n1 hold a hot copy of p (owned by n2), change p on n2's
		// storage where no watcher sees it, and purge through n1's CLI.
		for i := 0; i < 10; i++ {
			if r := get(t, n1.base, p); r.status != 200 || !bytes.Equal(r.body, site.file(p)) {
				t.Fatalf("n1: GET %s: %d %s", p, r.status, clusterPreview(r.body))
			}
		}
		if w := n1.mustWhere(t, p); !w.Resident {
			t.Fatalf("n1: after 10 GETs of %s, /where says %+v; want a resident hot copy", p, w)
		}
		old := site.file(p)
		want := bytes.Repeat([]byte("statuspage "), len(old)/11+1)[:len(old)]
		rewriteUnseen(t, filepath.Join(roots[1], filepath.FromSlash(p[1:])), want)

		start := time.Now()
		stdout, stderr, err := runCaddySplit(t, 15*time.Second, "shardcache", "purge", p, "--address", n1.admin)
		if err != nil {
			t.Fatalf("caddy shardcache purge %s: %v\nstdout:\n%s\nstderr:\n%s", p, err, stdout, stderr)
		}
		if !strings.Contains(stdout, "purged path "+p+":") || !strings.Contains(stdout, "sent to the other members: yes") {
			t.Errorf("caddy shardcache purge %s: output %q", p, stdout)
		}
		if w := n1.mustWhere(t, p); w.Resident {
			t.Errorf("n1: /where %s after the purge: %+v; want its hot copy dropped", p, w)
		}
		for _, n := range nodes {
			ok, _ := pollUntil(3*time.Second, func() bool {
				r, err := do(http.MethodGet, n.base, p)
				return err == nil && r.status == 200 && bytes.Equal(r.body, want)
			})
			if !ok {
				t.Errorf("%s: GET %s 3s after `caddy shardcache purge` on n1: not the new bytes", n.name, p)
			}
		}
		t.Logf("purge %s via the CLI on n1 (owner n2): new bytes everywhere %s after; output %q",
			p, time.Since(start).Round(time.Millisecond), strings.TrimSpace(stdout))
		site[p[1:]] = want

		// By prefix.
		dir := path.Dir(p) + "/"
		stdout, stderr, err = runCaddySplit(t, 15*time.Second, "shardcache", "purge", "--prefix", dir, "--address", n2.admin)
		if err != nil || !strings.Contains(stdout, "purged prefix "+dir+":") {
			t.Errorf("caddy shardcache purge --prefix %s: %v\nstdout:\n%s\nstderr:\n%s", dir, err, stdout, stderr)
		}
		// Bad values are refused by name.
		for _, args := range [][]string{{"--prefix", "img/"}, {"rel/path"}, {"/a", "--prefix", "/b/"}, {}} {
			full := append([]string{"shardcache", "purge", "--address", n1.admin}, args...)
			_, stderr, err := runCaddySplit(t, 15*time.Second, full...)
			if err == nil {
				t.Errorf("caddy %s: no error", strings.Join(full, " "))
				continue
			}
			for _, a := range args {
				if !strings.HasPrefix(a, "--") && !strings.Contains(stderr, a) {
					t.Errorf("caddy %s: stderr %q does not name %q", strings.Join(full, " "), stderr, a)
				}
			}
		}
	})
}
