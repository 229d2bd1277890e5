package integration

// Tests of a cluster that changes: each is the acceptance test of a bug
// reported on the static cluster (see "The dynamic cluster" in DESIGN.md:
// never a 404 for a file that exists; Provision prepares, Start commits).
// Three Caddy processes, LAN on 127.0.0.1 (free ports), SAN on
// 127.0.5.2-4:7946 (dynamic_harness_test.go). Run them with
//
//	CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -count=1 -run TestDynamic -v ./caddytest/

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDynamicDifferingRoots: three nodes, each with its own copy of one
// site at a different path and no `group` line, so each node's group is
// named by its own root and no two nodes hold the same group. Every node
// must serve every file byte for byte (the files its peers own from its own
// storage, as their groups differ), and log a warning that names the peer
// and both group names.
func TestDynamicDifferingRoots(t *testing.T) {
	needCaddy(t)
	site := genClusterSite(60, 21)
	members := dynMembers(3)
	tmp := t.TempDir()
	roots := []string{
		filepath.Join(tmp, "a", "www"),
		filepath.Join(tmp, "mnt", "site"),
		filepath.Join(tmp, "srv", "x"),
	}
	for _, r := range roots {
		writeClusterSite(t, r, site)
	}
	g := newNodeGroup(t, newClusterSecret(t))
	specs := dynSpecs(t, members, roots, "")
	nodes := dynStart(t, g, specs)
	ftWaitReady(t, 30*time.Second, nodes)

	// Each node's group name, from its status (the default: its root).
	groups := make([]string, len(nodes))
	for i, n := range nodes {
		st := n.status(t)
		if len(st.Groups) != 1 {
			t.Fatalf("%s: status shows %d groups, want 1: %+v", n.name, len(st.Groups), st.Groups)
		}
		groups[i] = st.Groups[0].Group
		t.Logf("%s: group %q, primed %d items, table of content %d items", n.name, groups[i], st.Groups[0].PrimedItems, st.Groups[0].TOCItems)
	}

	// Every file from every node.
	bases := make([]string, len(nodes))
	for i, n := range nodes {
		bases[i] = n.base
	}
	d := dynServeAll(nodes, bases, site)
	d.report(t, fmt.Sprintf("every node GETs every one of the %d files once (roots at different paths, no group line)", len(site)))
	perNode := map[string]int{}
	for _, o := range d.bad {
		perNode[o.node]++
	}
	if len(d.bad) > 0 {
		t.Logf("failures per node (of %d files each): %v", len(site), perNode)
	}

	// The warning: on each node, for each peer, a warn-level line that
	// says "group", names the peer, its own group and the peer's.
	warned := func(i, j int) bool {
		for _, e := range nodes[i].logs() {
			if e.str("level") != "warn" || !strings.Contains(strings.ToLower(e.String()), "group") {
				continue
			}
			s := e.String()
			if dynMentions(e, nodes[j].name) && strings.Contains(s, groups[i]) && strings.Contains(s, groups[j]) {
				return true
			}
		}
		return false
	}
	all := func() bool {
		for i := range nodes {
			for j := range nodes {
				if i != j && !warned(i, j) {
					return false
				}
			}
		}
		return true
	}
	pollEvery(5*time.Second, 100*time.Millisecond, all)
	for i, n := range nodes {
		for j, o := range nodes {
			if i != j && !warned(i, j) {
				t.Errorf("%s's log has no warning (level warn, \"group\") naming peer %s and both group names %q and %q",
					n.name, o.name, groups[i], groups[j])
			}
		}
	}
}

// TestDynamicGroupAddedByReload: a three-node cluster serving one site; a
// reload of each node, one after the other, adds a second site (its own
// port, its own copy per node, group `extra`). Every file of the new site
// must be served by every node, within 20s of the last reload, and no
// answer for one of its files may be a 404, during the rollout or after.
func TestDynamicGroupAddedByReload(t *testing.T) {
	needCaddy(t)
	site := genClusterSite(60, 22)
	extra := genClusterSite(60, 23)
	members := dynMembers(3)
	roots := writeClusterRoots(t, members, site)
	g := newNodeGroup(t, newClusterSecret(t))
	specs := dynSpecs(t, members, roots, "site")
	nodes := dynStart(t, g, specs)
	ftWaitReady(t, 30*time.Second, nodes)
	dynWaitKnown(t, nodes, "site", len(site))
	bases := make([]string, len(nodes))
	for i, n := range nodes {
		bases[i] = n.base
	}
	dynServeAll(nodes, bases, site).report(t, "the first site, before the reloads")

	// The second site: a copy per node, under another directory.
	tmp := t.TempDir()
	extraBases := make([]string, len(nodes))
	for i := range specs {
		root := filepath.Join(tmp, members[i].name, "extra")
		writeClusterSite(t, root, extra)
		s := dynSite{port: freePort(t), root: root, group: "extra"}
		specs[i].sites = append(specs[i].sites, s)
		extraBases[i] = s.base()
	}
	rollout := &dynTally{}
	for i, n := range nodes {
		start := time.Now()
		n.reload(specs[i].caddyfile())
		t.Logf("%s reloaded with the second site in %s", n.name, time.Since(start).Round(time.Millisecond))
		// The nodes reloaded so far serve the new site: no 404 for a file
		// that exists, even while their peers do not have the group yet.
		d := dynServeAll(nodes[:i+1], extraBases[:i+1], extra)
		rollout.requests += d.requests
		for _, o := range d.bad {
			if o.err == nil && (o.status == http.StatusNotFound || o.status == http.StatusOK) {
				rollout.fail(o)
			}
		}
	}
	rollout.report(t, "the new site on the nodes reloaded so far, during the rollout")

	last := time.Now()
	d, ok := dynPollAll(t, nodes, extraBases, extra, 20*time.Second)
	d.report(t, "the new site on every node after the last reload (every answer checked until all are 200)")
	if ok {
		t.Logf("every file of the new site served by every node %s after the last reload", time.Since(last).Round(time.Millisecond))
	}
	// The first site is still served.
	dynServeAll(nodes, bases, site).report(t, "the first site, after the reloads")
}

// TestDynamicMemberRemovedByReload: three nodes; n1 and n2 are reloaded
// with peer lists without n3, and n3 is stopped: after the reloads, then
// after the stop (reload_then_stop), or before the reloads
// (stop_then_reload). n1 and n2 must serve every file byte for byte at
// every step, never a 404, also to a load running through the changes.
func TestDynamicMemberRemovedByReload(t *testing.T) {
	needCaddy(t)
	for _, order := range []string{"reload_then_stop", "stop_then_reload"} {
		t.Run(order, func(t *testing.T) {
			site := genClusterSite(300, 24)
			members := dynMembers(3)
			roots := writeClusterRoots(t, members, site)
			g := newNodeGroup(t, newClusterSecret(t))
			specs := dynSpecs(t, members, roots, "site")
			nodes := dynStart(t, g, specs)
			ftWaitReady(t, 30*time.Second, nodes)
			dynWaitKnown(t, nodes, "site", len(site))
			n1, n2, n3 := nodes[0], nodes[1], nodes[2]
			owned := 0
			for _, p := range site.paths() {
				if n1.mustWhere(t, p).Owner == "n3" {
					owned++
				}
			}
			t.Logf("n3 owns %d of the %d files", owned, len(site))
			left := nodes[:2]
			bases := []string{n1.base, n2.base}
			dynServeAll(nodes, []string{n1.base, n2.base, n3.base}, site).report(t, "three nodes, before any change")

			var lastReload time.Time
			reload := func() {
				for i := 0; i < 2; i++ {
					specs[i].members = members[:2]
					start := time.Now()
					nodes[i].reload(specs[i].caddyfile())
					lastReload = time.Now()
					t.Logf("%s reloaded without n3 in %s", nodes[i].name, time.Since(start).Round(time.Millisecond))
				}
			}
			stop := func() {
				closeIdleClients()
				start := time.Now()
				n3.stop()
				t.Logf("n3 stopped (SIGTERM) in %s", time.Since(start).Round(time.Millisecond))
				// Both see it down (a clean shutdown is seen at once).
				gone := func(n *clusterNode) bool {
					st, ok := tryStatus(n)
					if !ok {
						return false
					}
					m, listed := st.member("n3")
					return !listed || !m.Up
				}
				if ok, _ := pollEvery(5*time.Second, 50*time.Millisecond, func() bool { return gone(n1) && gone(n2) }); !ok {
					t.Logf("n1 or n2 still lists n3 as up 5s after it stopped")
				}
			}
			// A load on n1 and n2 from before the first change to the end:
			// every answer is checked.
			load := ftStartLoad([]ftTarget{{"n1", n1.base, 2}, {"n2", n2.base, 2}}, site, site.paths(), 40000, 60*time.Second)
			defer func() {
				rs := load.stop()
				// The old servers of the reloads shut down with a grace
				// period of 5s, and a node's exit waits for them: seen
				// twice in four runs, a connection of the load's kept an
				// old server to its full grace period, and the node then
				// took more than the harness's 5s to exit on SIGTERM. Let
				// the grace period pass before the nodes are stopped.
				load.tr.CloseIdleConnections()
				closeIdleClients()
				if d := time.Until(lastReload.Add(5500 * time.Millisecond)); d > 0 {
					time.Sleep(d)
				}
				var bad []ftResult
				transport := 0
				for _, r := range rs {
					switch {
					case r.err != "" && r.status == 0:
						transport++ // a kept-alive connection closed by a reload: logged
					case r.failed() || r.wrong:
						bad = append(bad, r)
					}
				}
				t.Logf("load on n1 and n2 during the changes: %d requests, %d transport errors (%s)", len(rs), transport, ftStatusCounts(rs))
				if len(bad) > 0 {
					var ex []string
					for _, r := range bad[:min(10, len(bad))] {
						ex = append(ex, "  "+load.targets[r.target].name+": "+r.String())
					}
					t.Errorf("load on n1 and n2 during the changes: %d of %d answers were not 200 with the file's bytes (%s):\n%s",
						len(bad), len(rs), ftStatusCounts(bad), strings.Join(ex, "\n"))
				}
			}()
			if order == "reload_then_stop" {
				reload()
				dynServeAll(left, bases, site).report(t, "n1 and n2 right after their reloads without n3 (n3 still running)")
				d, _ := dynPollAll(t, left, bases, site, 20*time.Second)
				d.report(t, "n1 and n2 after their reloads without n3 (n3 still running; every answer checked until all are 200)")
				stop()
			} else {
				stop()
				dynServeAll(left, bases, site).report(t, "n1 and n2 with n3 stopped, before their reloads")
				reload()
			}
			dynServeAll(left, bases, site).report(t, "n1 and n2 reloaded without n3, n3 stopped: one pass")
			d, ok := dynPollAll(t, left, bases, site, 20*time.Second)
			d.report(t, "n1 and n2 reloaded without n3, n3 stopped (every answer checked until all are 200)")
			if ok {
				for _, n := range left {
					if st, ok := tryStatus(n); ok {
						gs, _ := dynGroup(st, "site")
						t.Logf("%s: primed %d + table of content %d items of %d", n.name, gs.PrimedItems, gs.TOCItems, len(site))
					}
				}
			}
		})
	}
}

// TestDynamicFailedReload: a three-node cluster; n1 is sent a config in
// which the shardcache handler of the site (with another memory and hot)
// provisions, then a reverse_proxy after it fails to provision (a CA file
// that does not exist), so Caddy's /load answers an error and n1 keeps its
// running config. Nothing the running node shares may have changed: n2 and
// n3 still fetch n1's files from n1's memory (their peer tier counts them,
// with no peer error and no storage read, and n1's served_to_peers counts
// them), the bytes right, and n1 serves every file as before.
func TestDynamicFailedReload(t *testing.T) {
	needCaddy(t)
	site := genClusterSite(120, 25)
	members := dynMembers(3)
	roots := writeClusterRoots(t, members, site)
	g := newNodeGroup(t, newClusterSecret(t))
	specs := dynSpecs(t, members, roots, "site")
	nodes := dynStart(t, g, specs)
	ftWaitReady(t, 30*time.Second, nodes)
	dynWaitKnown(t, nodes, "site", len(site))
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]

	// n1's files, each requested once per node (a second request could
	// be a hot hit).
	var owned []string
	for _, p := range site.paths() {
		if n1.mustWhere(t, p).Owner == "n1" && len(site.file(p)) > 0 {
			owned = append(owned, p)
		}
	}
	if len(owned) < 25 {
		t.Fatalf("n1 owns %d non-empty files of %d; the test needs 25", len(owned), len(site))
	}
	pre, postN2, postN3 := owned[:5], owned[5:15], owned[15:25]
	grp := func(n *clusterNode) clusterGroupStatus { return n.status(t).group() }
	fetch := func(n *clusterNode, paths []string, when string) {
		t.Helper()
		for _, p := range paths {
			if o := dynGet(n.name, n.base, p, site); !o.ok() {
				t.Errorf("%s: %s", when, o)
			}
		}
	}
	// checkPeerFetches checks that n's GETs of paths (n1's files) came
	// from n1's memory: before/after are n's and n1's group status.
	checkPeerFetches := func(when string, n *clusterNode, paths []string, nb, na clusterGroupStatus) {
		t.Helper()
		peer := na.tier("peer").Requests - nb.tier("peer").Requests
		storage := na.tier("storage").Requests - nb.tier("storage").Requests
		errs := na.PeerErrors - nb.PeerErrors
		if peer != int64(len(paths)) || storage != 0 || errs != 0 {
			t.Errorf("%s: %d GETs on %s of files n1 owns: its peer tier counted %d, storage tier %d, peer errors %d; want %d, 0, 0 (from n1's memory)",
				when, len(paths), n.name, peer, storage, errs, len(paths))
		}
	}

	// The premise: n2 fetches n1's files from n1's memory.
	b1, b2 := grp(n1), grp(n2)
	fetch(n2, pre, "before the failed reload")
	a1, a2 := grp(n1), grp(n2)
	checkPeerFetches("before the failed reload", n2, pre, b2, a2)
	if d := a1.ServedPeers - b1.ServedPeers; d < int64(len(pre)) {
		t.Errorf("before the failed reload: n1's served_to_peers moved by %d for %d fetches by n2", d, len(pre))
	}
	if t.Failed() {
		t.Fatal("the cluster does not fetch from owners' memory before the failed reload; nothing to compare with")
	}
	primedBefore := a1

	// The config that fails after the shardcache handler provisioned.
	badCA := filepath.Join(t.TempDir(), "no-such-ca.pem")
	bad := globalBlock(specs[0].admin, ftQuietAdmin,
		shardcacheOption(specs[0].self, specs[0].members, "{env."+clusterSecretEnv+"}", "fetch_timeout 2s")) +
		fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	route {
		shardcache {
			root %s
			group site
			memory 48MiB
			hot 2MiB
		}
		reverse_proxy 127.0.0.1:9 {
			transport http {
				tls_trust_pool file %s
			}
		}
	}
}
`, specs[0].sites[0].port, specs[0].sites[0].root, badCA)
	logLines := len(n1.logs())
	code, answer := ftLoadConfig(t, n1, bad)
	if code == http.StatusOK {
		t.Fatalf("POST /load of a config whose reverse_proxy cannot provision (CA file %s missing): 200 %s; want an error", badCA, answer)
	}
	// The handler at position 0 of the route (shardcache) provisioned: the
	// error is the reverse_proxy's, at position 1. (Provision logs
	// nothing, so this is the evidence.)
	if !strings.Contains(answer, "no-such-ca.pem") || !strings.Contains(answer, "position 1: loading module 'reverse_proxy'") {
		t.Fatalf("POST /load: %d %s; want the error of the reverse_proxy's CA pool, the handler after shardcache (position 1 of the route)", code, answer)
	}
	t.Logf("POST /load of the failing config: %d %s", code, strings.TrimSpace(answer))
	// What n1 logged about the failed config (shardcache's lines).
	for _, e := range n1.logs()[logLines:] {
		if strings.Contains(e.str("logger"), "shardcache") || strings.Contains(e.String(), "shardcache") {
			t.Logf("n1 logged during the failed load: %s", e)
		}
	}
	if r := get(t, n1.base, owned[0]); r.status != 200 {
		t.Errorf("n1 after the failed reload: GET %s: %d", owned[0], r.status)
	}

	// After: n2 and n3 fetch other files of n1's.
	b1, b2 = grp(n1), grp(n2)
	b3 := grp(n3)
	fetch(n2, postN2, "after the failed reload")
	fetch(n3, postN3, "after the failed reload")
	a1, a2 = grp(n1), grp(n2)
	a3 := grp(n3)
	checkPeerFetches("after the failed reload", n2, postN2, b2, a2)
	checkPeerFetches("after the failed reload", n3, postN3, b3, a3)
	if d := a1.ServedPeers - b1.ServedPeers; d < int64(len(postN2)+len(postN3)) {
		t.Errorf("after the failed reload: n1's served_to_peers moved by %d for %d fetches by n2 and n3; want at least %d",
			d, len(postN2)+len(postN3), len(postN2)+len(postN3))
	}
	if a1.PrimedItems != primedBefore.PrimedItems || a1.PrimedBytes != primedBefore.PrimedBytes || !a1.Ready {
		t.Errorf("n1 after the failed reload: primed %d items, %d bytes, ready %v; before it: %d, %d, %v",
			a1.PrimedItems, a1.PrimedBytes, a1.Ready, primedBefore.PrimedItems, primedBefore.PrimedBytes, primedBefore.Ready)
	}
	// n1 serves everything as before.
	dynServeAll(nodes[:1], []string{n1.base}, site).report(t, "n1 after the failed reload")
}

// TestDynamicConditionalEpochMtime: files whose modification time is the
// Unix epoch (0) or 1s after it, served by a three-node cluster, compared
// on every node (the owner and two non-owners) with Caddy's file_server on
// the same node's copy: the same status, the same body (the status only
// for If-None-Match, as the ETags differ), and a Content-Length equal to
// the bytes sent, for plain, If-Modified-Since, If-Unmodified-Since,
// If-None-Match and If-Range + Range requests.
func TestDynamicConditionalEpochMtime(t *testing.T) {
	needCaddy(t)
	site := genClusterSite(20, 26)
	text := func(name string, n int) []byte {
		return []byte(strings.Repeat(name+" abcdefghijklmnopqrstuvwxyz0123456789\n", n))
	}
	mtimes := map[string]time.Time{}
	for _, f := range []struct {
		name string
		mt   int64
		body []byte
	}{
		{"epoch0.txt", 0, text("epoch0.txt", 60)},
		{"epoch1.txt", 1, text("epoch1.txt", 60)},
		{"epoch0/big.bin", 0, bytes.Repeat([]byte("0123456789abcdef"), 8<<10)},
		{"epoch1/big.bin", 1, bytes.Repeat([]byte("fedcba9876543210"), 8<<10)},
		{"sub/epoch0.html", 0, text("<p>epoch0.html</p>", 20)},
		{"sub/epoch1.json", 1, text("epoch1.json", 20)},
		// A control with an ordinary mtime, where file_server has an ETag.
		{"control.txt", fixedTime.Unix(), text("control.txt", 30)},
	} {
		site[f.name] = f.body
		mtimes["/"+f.name] = time.Unix(f.mt, 0)
	}
	members := dynMembers(3)
	roots := writeClusterRoots(t, members, site)
	for _, root := range roots {
		for p, mt := range mtimes {
			if err := os.Chtimes(filepath.Join(root, filepath.FromSlash(p[1:])), mt, mt); err != nil {
				t.Fatal(err)
			}
		}
	}
	g := newNodeGroup(t, newClusterSecret(t))
	specs := dynSpecs(t, members, roots, "site")
	fsBases := make([]string, len(specs))
	for i := range specs {
		port := freePort(t)
		fsBases[i] = fmt.Sprintf("http://127.0.0.1:%d", port)
		specs[i].extra = fmt.Sprintf(`
http://127.0.0.1:%d {
	bind 127.0.0.1
	file_server {
		root %s
	}
}
`, port, roots[i])
	}
	nodes := dynStart(t, g, specs)
	ftWaitReady(t, 30*time.Second, nodes)
	dynWaitKnown(t, nodes, "site", len(site))

	var paths []string
	for p := range mtimes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	owners := map[string]string{}
	for _, p := range paths {
		owners[p] = nodes[0].mustWhere(t, p).Owner
	}
	t.Logf("owners: %v", owners)

	const (
		before = "Wed, 31 Dec 1969 23:59:59 GMT"
		epoch  = "Thu, 01 Jan 1970 00:00:00 GMT"
		epoch1 = "Thu, 01 Jan 1970 00:00:01 GMT"
		past   = "Sat, 01 Jan 2000 00:00:00 GMT"
		future = "Fri, 01 Jan 2100 00:00:00 GMT"
	)
	type condCase struct {
		name    string
		headers []string // $ETAG: the server's own ETag of the path
		// With $ETAG: the ETags differ between the servers, so only the
		// statuses are compared. file_server sends no ETag for a file
		// whose mtime is 0 or 1 (Caddy's usefulModTime): then
		// shardcache's answer to its own ETag must be wantStatus and
		// wantBody(file) (RFC 9110).
		wantStatus int
		wantBody   func(file []byte) []byte
	}
	cases := []condCase{{name: "plain"}}
	for _, d := range []struct{ name, date string }{
		{"1969-12-31T23:59:59", before}, {"the epoch", epoch}, {"the epoch+1s", epoch1},
		{"a past date (2000)", past}, {"a future date (2100)", future},
	} {
		cases = append(cases,
			condCase{name: "If-Modified-Since " + d.name, headers: []string{"If-Modified-Since: " + d.date}},
			condCase{name: "If-Unmodified-Since " + d.name, headers: []string{"If-Unmodified-Since: " + d.date}},
			condCase{name: "If-Range " + d.name + " + Range", headers: []string{"If-Range: " + d.date, "Range: bytes=0-9"}},
		)
	}
	none := func([]byte) []byte { return nil }
	cases = append(cases,
		condCase{name: "If-None-Match its ETag", headers: []string{"If-None-Match: $ETAG"},
			wantStatus: http.StatusNotModified, wantBody: none},
		condCase{name: "If-None-Match its ETag + If-Modified-Since the epoch", headers: []string{"If-None-Match: $ETAG", "If-Modified-Since: " + epoch},
			wantStatus: http.StatusNotModified, wantBody: none},
		condCase{name: "If-Range its ETag + Range", headers: []string{"If-Range: $ETAG", "Range: bytes=0-9"},
			wantStatus: http.StatusPartialContent, wantBody: func(b []byte) []byte { return b[:10] }},
		condCase{name: "Range", headers: []string{"Range: bytes=5-20"}},
	)

	mismatches, requests := 0, 0
	report := func(format string, args ...any) {
		mismatches++
		if mismatches <= 40 {
			t.Errorf(format, args...)
		}
	}
	// clCheck: a Content-Length equal to the bytes sent.
	clCheck := func(server string, r *response) []string {
		if cl := r.header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(r.body)) {
			return []string{fmt.Sprintf("%s: Content-Length %s, %d bytes sent", server, cl, len(r.body))}
		}
		return nil
	}
	for ni, n := range nodes {
		scBase, fsBase := n.base, fsBases[ni]
		for _, p := range paths {
			role := "non-owner"
			if owners[p] == n.name {
				role = "owner"
			}
			who := fmt.Sprintf("%s (%s of %s; mtime %d)", n.name, role, p, mtimes[p].Unix())
			// Each server's own ETag of p ("" for none).
			fsPlain, err := condDo(fsBase, p)
			if err != nil {
				t.Fatalf("%s: file_server: GET %s: %v", n.name, p, err)
			}
			scPlain, err := condDo(scBase, p)
			if err != nil {
				report("%s GET %s [plain, for its ETag]: shardcache: %v", who, p, err)
				continue
			}
			fsTag, scTag := fsPlain.etag(), scPlain.etag()
			if scTag == "" {
				report("%s GET %s: shardcache sends no ETag", who, p)
				continue
			}
			for _, c := range cases {
				usesETag := false
				hdrs := func(tag string) []string {
					hs := make([]string, len(c.headers))
					for i, h := range c.headers {
						if strings.Contains(h, "$ETAG") {
							usesETag = true
						}
						hs[i] = strings.ReplaceAll(h, "$ETAG", tag)
					}
					return hs
				}
				scHeaders := hdrs(scTag)
				requests++
				got, gerr := condDo(scBase, p, scHeaders...)
				if gerr != nil {
					report("%s GET %s [%s]: shardcache: %v", who, p, c.name, gerr)
					continue
				}
				diffs := clCheck("shardcache", got)
				if usesETag && fsTag == "" {
					// Nothing to compare with: RFC 9110.
					if wb := c.wantBody(site.file(p)); got.status != c.wantStatus || !bytes.Equal(got.body, wb) {
						diffs = append(diffs, fmt.Sprintf("shardcache %d with %d bytes %s; want %d with %d bytes (file_server sends no ETag for this mtime)",
							got.status, len(got.body), clusterPreview(got.body), c.wantStatus, len(wb)))
					}
				} else {
					want, werr := condDo(fsBase, p, hdrs(fsTag)...)
					if werr != nil {
						t.Fatalf("%s GET %s [%s]: file_server: %v", who, p, c.name, werr)
					}
					diffs = append(diffs, clCheck("file_server", want)...)
					if want.status != got.status {
						diffs = append(diffs, fmt.Sprintf("status: file_server %d, shardcache %d", want.status, got.status))
					}
					if !usesETag && !bytes.Equal(want.body, got.body) {
						diffs = append(diffs, fmt.Sprintf("body: file_server %d bytes %s, shardcache %d bytes %s",
							len(want.body), clusterPreview(want.body), len(got.body), clusterPreview(got.body)))
					}
				}
				if len(diffs) > 0 {
					report("%s GET %s [%s]:\n  %s", who, p, c.name, strings.Join(diffs, "\n  "))
				}
			}
			if lw, lg := fsPlain.header.Get("Last-Modified"), scPlain.header.Get("Last-Modified"); lw != lg {
				t.Logf("%s GET %s: Last-Modified: file_server %q, shardcache %q (not compared)", who, p, lw, lg)
			}
		}
	}
	if mismatches > 40 {
		t.Errorf("... and %d more mismatches", mismatches-40)
	}
	t.Logf("%d requests to each server, %d mismatches", requests, mismatches)
}

// condClient is the client of TestDynamicConditionalEpochMtime: a new
// connection per request, no compression, no redirect, bounded in time.
// Go's client reports a body shorter than its Content-Length as an error
// ("unexpected EOF") when it reads it.
var condClient = &http.Client{
	Timeout:       5 * time.Second,
	CheckRedirect: noRedirects,
	Transport: &http.Transport{
		DisableCompression: true,
		DisableKeepAlives:  true,
	},
}

// condDo GETs base+p with headers ("Name: value") and reads the whole body;
// a short body is an error that says so.
func condDo(base, p string, headers ...string) (*response, error) {
	req, err := http.NewRequest(http.MethodGet, base+p, nil)
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := condClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("%d with Content-Length %q: body cut short after %d bytes: %w",
			resp.StatusCode, resp.Header.Get("Content-Length"), len(body), err)
	}
	return &response{proto: resp.Proto, status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// etag returns r's ETag ("" for a nil r).
func (r *response) etag() string {
	if r == nil {
		return ""
	}
	return r.header.Get("Etag")
}

// TestDynamicMetricsTwoSitesOneRoot: one node with two sites on the same
// root and different `memory` (two stores of one root): GET /metrics on the
// admin endpoint must answer 200 with each caddy_shardcache_* series once
// per label set. Then a reload to a config without shardcache (one
// `respond` site) must stop the store series: no caddy_shardcache_* sample
// with a group label remains.
func TestDynamicMetricsTwoSitesOneRoot(t *testing.T) {
	needCaddy(t)
	root := filepath.Join(t.TempDir(), "site")
	writeClusterSite(t, root, genClusterSite(30, 27))
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p1, p2 := freePort(t), freePort(t)
	cf := globalBlock(admin) + fmt.Sprintf(`
http://127.0.0.1:%d {
	shardcache {
		root %s
		memory 32MiB
	}
}

http://127.0.0.1:%d {
	shardcache {
		root %s
		memory 16MiB
	}
}
`, p1, root, p2, root)
	n := startCaddy(t, cf)
	waitFor(t, 30*time.Second, "both stores of "+root+" primed", func() bool {
		return len(n.findLogs(func(e logEntry) bool { return isPrimed(e) && sameRoot(e, root) })) == 2
	})
	cn := &clusterNode{node: n, name: "the node"}

	samples, raw, err := scrapeMetrics(cn)
	if err != nil {
		t.Errorf("two sites on one root with memory 32MiB and 16MiB: %v\n%.1500s", err, raw)
	} else {
		seen := map[string]int{}
		for _, s := range samples {
			if strings.HasPrefix(s.name, "caddy_shardcache_") {
				seen[s.name+"{"+s.labels+"}"]++
			}
		}
		if _, ok := metricValue(samples, "caddy_shardcache_ready"); !ok {
			t.Errorf("GET /metrics: no caddy_shardcache_ready sample\n%.1500s", raw)
		}
		var dups []string
		for k, c := range seen {
			if c > 1 {
				dups = append(dups, fmt.Sprintf("%s ×%d", k, c))
			}
		}
		sort.Strings(dups)
		if len(dups) > 0 {
			t.Errorf("GET /metrics: %d series appear more than once: %s", len(dups), strings.Join(dups, "; "))
		}
	}

	// A reload to a config without shardcache.
	p3 := freePort(t)
	n.reload(globalBlock(admin) + fmt.Sprintf(`
http://127.0.0.1:%d {
	respond "no shardcache here"
}
`, p3))
	if r := get(t, fmt.Sprintf("http://127.0.0.1:%d", p3), "/"); r.status != 200 || string(r.body) != "no shardcache here" {
		t.Fatalf("after the reload: GET / on the respond site: %d %q", r.status, r.body)
	}
	samples, raw, err = scrapeMetrics(cn)
	if err != nil {
		t.Fatalf("after a reload without shardcache: %v\n%.1500s", err, raw)
	}
	var left []string
	for _, s := range samples {
		if strings.HasPrefix(s.name, "caddy_shardcache_") && strings.Contains(s.labels, `group="`) {
			left = append(left, s.name+"{"+s.labels+"}")
		}
	}
	if len(left) > 0 {
		t.Errorf("after a reload to a config without shardcache, /metrics still exports %d store series, e.g. %s",
			len(left), strings.Join(left[:min(5, len(left))], "; "))
	}
}
