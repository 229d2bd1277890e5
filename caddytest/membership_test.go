package integration

// Tests of a cluster whose members come from DNS (`peers srv`), with no
// `peer` line anywhere: discovery, a DNS answer that flaps for less than
// the grace period, a fourth node that appears in DNS under load and one
// that disappears, with a director that finds the members the same way.
// Three or four Caddy processes and a director, LAN on 127.0.0.1 (free
// ports), SAN on 127.0.31.2-5:7946 and 127.0.31.10:7946
// (membership_harness_test.go). Run them with
//
//	CGO_ENABLED=0 go test -trimpath -tags nobadger,nomysql,nopgx -count=1 -run TestMembership -v ./caddytest/

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shardcache/caddy-shardcache/peering"
)

// TestMembershipDNS: three nodes and a director whose Caddyfiles name no
// peer, only `peers srv _shardcache._udp.www.test` answered by a DNS
// server of the test (refresh 500ms, grace 5s), each node with its own
// copy of one site (the same modification times).
//
//  1. They find each other: every ring lists n1-n3, every member is up
//     and ready, every node serves every file byte for byte, and so does
//     the director.
//  2. A DNS answer that fails (SERVFAIL) for 2s and then is empty for 2s
//     (less than grace) under load changes no ring and logs no
//     membership change; every answer of the load is right.
//  3. n4 starts and is added to the SRV answer under load: no failed or
//     wrong answer; every ring lists n1-n4; n4 holds its ring share
//     (about a quarter of the files), taken from its peers' memory:
//     what it read from storage for it is at most 5% of its bytes (opens
//     of n4's copy of the site, seen with inotify); the others moved no
//     file in.
//  4. n4 is removed from the SRV answer, kept up 2s, then stopped, under
//     load: no failed or wrong answer; the others' rings list n1-n3 and
//     they hold n4's former share, taken from n4's memory (storage reads
//     at most 5% of its bytes).
//
// Through all of it, at least 99% of the director's requests reach the
// path's owner (X-Node), per phase; while a ring changes, either the old
// or the new owner counts.
func TestMembershipDNS(t *testing.T) {
	needCaddy(t)
	began := time.Now()
	site := genClusterSite(360, 31)
	paths := site.paths()
	members := ftMembers(mbNet, 4) // n1..n4 at 127.0.31.2-5:7946
	roots := writeClusterRoots(t, members, site)
	ring3 := peering.NewRing(0, nil, "n1", "n2", "n3")
	ring4 := peering.NewRing(0, nil, "n1", "n2", "n3", "n4")
	want3, want4 := []string{"n1", "n2", "n3"}, []string{"n1", "n2", "n3", "n4"}

	d := mbStartDNS(t)
	for _, m := range members {
		d.setA(m)
	}
	d.setTargets(want3...)

	specs := make([]mbNodeSpec, len(members))
	for i, m := range members {
		specs[i] = mbNodeSpec{self: m, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), port: freePort(t), root: roots[i]}
	}
	// Every file any process opens under each node's copy of the site.
	watches := make([]*mbOpenWatch, len(roots))
	for i, r := range roots {
		watches[i] = mbWatchOpens(t, r)
	}

	g := newNodeGroup(t, newClusterSecret(t))
	var nodes []*clusterNode // n1..n3
	for _, s := range specs[:3] {
		cf := s.caddyfile(d.addr)
		if strings.Contains(cf, "\t\tpeer ") {
			t.Fatalf("%s's Caddyfile has a peer line:\n%s", s.self.name, cf)
		}
		nodes = append(nodes, g.launch(s.self.name, s.self.san, s.base(), s.root, cf))
	}
	dirAdmin, dirPort := fmt.Sprintf("127.0.0.1:%d", freePort(t)), freePort(t)
	dir := g.launch("director", mbDirectorSAN, fmt.Sprintf("http://127.0.0.1:%d", dirPort), "", mbDirectorCaddyfile(dirAdmin, d.addr, dirPort))
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range append(slices.Clone(nodes), dir) {
		n.waitUp(n.caddyfile, deadline)
	}
	ftWaitReady(t, 30*time.Second, nodes, dir)
	t.Logf("3 nodes and the director, found in DNS, up and ready in %s", time.Since(began).Round(time.Millisecond))

	var n4 *clusterNode

	// The load: workers on every node and through the director.
	nodeTargets := func(ns ...*clusterNode) []ftTarget {
		var ts []ftTarget
		for _, n := range ns {
			ts = append(ts, ftTarget{n.name, n.base, 1})
		}
		return append(ts, ftTarget{"director", dir.base, 2})
	}
	// checkLoad fails the test on any answer that is not 200 with the
	// file's bytes, and logs the counts per target.
	checkLoad := func(t *testing.T, what string, l *ftLoad, rs []ftResult) {
		t.Helper()
		var parts []string
		for i, tg := range l.targets {
			s := ftSummarize(rs, func(r ftResult) bool { return r.target == i })
			parts = append(parts, fmt.Sprintf("%s %d (failed %d, wrong %d)", tg.name, s.sent, s.failed, s.wrong))
		}
		all := ftSummarize(rs, nil)
		t.Logf("%s: %d requests: %s", what, all.sent, strings.Join(parts, ", "))
		if all.failed > 0 || all.wrong > 0 {
			var ex []string
			for _, r := range rs {
				if (r.failed() || r.wrong) && len(ex) < 10 {
					ex = append(ex, "  "+l.targets[r.target].name+": "+r.String())
				}
			}
			t.Errorf("%s: %d of %d answers failed (%s), %d were 200 with wrong bytes:\n%s",
				what, all.failed, all.sent, ftStatusCounts(rs), all.wrong, strings.Join(ex, "\n"))
		}
		if all.sent == 0 {
			t.Errorf("%s: the load sent no request", what)
		}
	}
	// ownerHits checks, for the director's requests sent in [from, to),
	// that at least 99% were answered by an owner of their path under one
	// of the rings given.
	type phaseRatio struct {
		name        string
		hits, total int
	}
	var ratios []phaseRatio
	ownerHits := func(t *testing.T, phase string, l *ftLoad, rs []ftResult, from, to time.Time, rings ...*peering.Ring) {
		t.Helper()
		di := slices.IndexFunc(l.targets, func(tg ftTarget) bool { return tg.name == "director" })
		hits, total := 0, 0
		var miss []string
		for _, r := range rs {
			if r.target != di || r.at.Before(from) || !r.at.Before(to) || r.failed() {
				continue
			}
			total++
			ok := false
			var owners []string
			for _, rg := range rings {
				owners = append(owners, rg.Owner(r.path))
				ok = ok || r.node == rg.Owner(r.path)
			}
			if ok {
				hits++
			} else if len(miss) < 5 {
				miss = append(miss, fmt.Sprintf("%s at %s → %q (owners %v)", r.path, r.at.Format("15:04:05.000"), r.node, owners))
			}
		}
		ratios = append(ratios, phaseRatio{phase, hits, total})
		if total == 0 {
			t.Errorf("director, %s: no request in the phase (%s to %s)", phase, from.Format("15:04:05.000"), to.Format("15:04:05.000"))
			return
		}
		share := float64(hits) / float64(total)
		t.Logf("director, %s (%s): %d of %d requests (%.2f%%) answered by their path's owner", phase,
			to.Sub(from).Round(time.Millisecond), hits, total, 100*share)
		if share < 0.99 {
			t.Errorf("director, %s: %.2f%% of requests reached an owner; want ≥ 99%%; e.g. %q", phase, 100*share, miss)
		}
	}
	bases := func(ns []*clusterNode) []string {
		var out []string
		for _, n := range ns {
			out = append(out, n.base)
		}
		return out
	}

	ok := t.Run("1_discovery", func(t *testing.T) {
		if ok, rings := mbRingsAre(append(slices.Clone(nodes), dir), want3); !ok {
			t.Errorf("the rings are not %v: %s", want3, rings)
		}
		for _, n := range append(slices.Clone(nodes), dir) {
			st := n.status(t)
			var names []string
			for _, m := range st.Members {
				names = append(names, fmt.Sprintf("%s@%s up=%v ready=%v", m.Name, m.Address, m.Up, m.Ready))
			}
			t.Logf("%s sees: %s", n.name, strings.Join(names, ", "))
			if _, listed := st.member("n4"); listed {
				t.Errorf("%s lists n4, which is not in DNS", n.name)
			}
		}
		// Every node knows every file (its own or a peer's table of
		// content), and holds exactly its share of the ring in memory.
		// (Not primed_items + toc_items: primed_items counts what priming
		// read, and a node that primed under another ring first counts
		// files it dropped since.)
		mbWaitFound(t, nodes, paths)
		mbCheckHolders(t, nodes, paths, ring3)
		for _, n := range nodes {
			want := 0
			for _, p := range paths {
				if ring3.Owner(p) == n.name {
					want++
				}
			}
			gs := mbGroup(t, n)
			var ringAtStart string
			for _, e := range n.findLogs(func(e logEntry) bool { return e.str("msg") == "node started" }) {
				ringAtStart = fmt.Sprint(e["ring"])
			}
			t.Logf("%s: primed %d items (%d bytes), its ring share %d of %d; its ring when its node started: %s", n.name, gs.PrimedItems, gs.PrimedBytes, want, len(site), ringAtStart)
		}
		dynServeAll(nodes, bases(nodes), site).report(t, "every file from every node")
		dynServeAll([]*clusterNode{dir}, []string{dir.base}, site).report(t, "every file through the director")
	})
	if !ok {
		t.Fatal("the cluster found in DNS does not work; the changes are not tried")
	}

	t.Run("2_dns_flap_shorter_than_grace", func(t *testing.T) {
		all := append(slices.Clone(nodes), dir)
		counts := func(msg string) []int {
			var out []int
			for _, n := range all {
				out = append(out, mbLogCount(n, msg))
			}
			return out
		}
		const (
			changed  = "cluster membership changed"
			setMsg   = "peer set changed"
			failMsg  = "peer lookup failed; keeping the last good set"
			emptyMsg = "peer lookup found no members; keeping the last set until the answer has been empty for the grace period"
			goneMsg  = "peer lookup has found no members for the grace period; the source now has none"
		)
		changedBefore, setBefore, failBefore, emptyBefore := counts(changed), counts(setMsg), counts(failMsg), counts(emptyMsg)
		l := ftStartLoad(nodeTargets(nodes...), site, paths, 60000, 60*time.Second)
		start := time.Now()
		time.Sleep(time.Second)
		flapAt := time.Now()
		d.setMode("servfail")
		time.Sleep(2 * time.Second)
		d.setMode("empty")
		time.Sleep(2 * time.Second)
		d.setMode("")
		backAt := time.Now()
		time.Sleep(1500 * time.Millisecond)
		rs := l.stop()
		end := time.Now()
		t.Logf("DNS: SERVFAIL for 2s (%d SRV questions), then no SRV record for 2s (%d SRV questions), from %s to %s",
			d.srvQueries("servfail"), d.srvQueries("empty"), flapAt.Format("15:04:05.000"), backAt.Format("15:04:05.000"))
		if d.srvQueries("servfail") == 0 || d.srvQueries("empty") == 0 {
			t.Errorf("the nodes did not ask DNS during the flap (SERVFAIL: %d, empty: %d SRV questions)", d.srvQueries("servfail"), d.srvQueries("empty"))
		}
		checkLoad(t, "load during the flap", l, rs)
		ownerHits(t, "steady, 3 nodes, DNS flapping", l, rs, start, end, ring3)

		if ok, rings := mbRingsAre(all, want3); !ok {
			t.Errorf("after the flap the rings are not %v: %s", want3, rings)
		}
		changedAfter, setAfter, failAfter, emptyAfter, gone := counts(changed), counts(setMsg), counts(failMsg), counts(emptyMsg), counts(goneMsg)
		for i, n := range all {
			if changedAfter[i] != changedBefore[i] || setAfter[i] != setBefore[i] {
				t.Errorf("%s logged %d %q and %d %q lines during a flap shorter than grace", n.name,
					changedAfter[i]-changedBefore[i], changed, setAfter[i]-setBefore[i], setMsg)
			}
			if gone[i] > 0 {
				t.Errorf("%s logged %q after 2s of empty answers (grace 5s)", n.name, goneMsg)
			}
			// The flap was seen: else this test proves nothing.
			if failAfter[i] == failBefore[i] || emptyAfter[i] == emptyBefore[i] {
				t.Errorf("%s did not see the flap: %d new %q lines, %d new %q lines", n.name,
					failAfter[i]-failBefore[i], failMsg, emptyAfter[i]-emptyBefore[i], emptyMsg)
			}
			t.Logf("%s: %d lookups failed, %d found no member, during the flap; no membership change", n.name,
				failAfter[i]-failBefore[i], emptyAfter[i]-emptyBefore[i])
		}
	})

	ok = t.Run("3_join_under_load", func(t *testing.T) {
		share4 := map[string]bool{}
		var shareBytes int64
		for _, p := range paths {
			if ring4.Owner(p) == "n4" {
				share4[p] = true
				shareBytes += int64(len(site.file(p)))
			}
		}
		t.Logf("n4's share of the ring %v: %d of %d files, %d bytes", want4, len(share4), len(site), shareBytes)
		movedBefore := map[string]int{}
		joinBefore := map[string]clusterGroupStatus{}
		for _, n := range nodes {
			movedBefore[n.name] = len(mbSharesMoved(n, 0))
			joinBefore[n.name] = mbGroup(t, n)
		}

		l := ftStartLoad(nodeTargets(nodes...), site, paths, 100000, 90*time.Second)
		seen := mbSampleMembers(dir, 20*time.Millisecond)
		var l4 *ftLoad
		defer func() {
			if l4 != nil {
				l4.stop()
			}
			l.stop()
			seen.stop()
		}()
		start := time.Now()
		time.Sleep(1500 * time.Millisecond)
		launchAt := time.Now()
		s := specs[3]
		n4 = g.launch(s.self.name, s.self.san, s.base(), s.root, s.caddyfile(d.addr))
		n4.waitUp(n4.caddyfile, time.Now().Add(30*time.Second))
		upIn := time.Since(launchAt)
		// DNS lists n4 as soon as it answers, while it primes (as the
		// Kubernetes example's publishNotReadyAddresses does).
		addAt := time.Now()
		d.setTargets(want4...)

		all := append(append(slices.Clone(nodes), n4), dir)
		conv, took := pollEvery(15*time.Second, 20*time.Millisecond, func() bool { ok, _ := mbRingsAre(all, want4); return ok })
		if !conv {
			_, rings := mbRingsAre(all, want4)
			t.Errorf("the rings are not %v 15s after n4 was added to DNS: %s", want4, rings)
		} else {
			t.Logf("every ring (n1-n4 and the director) lists %v %s after n4 was added to DNS (refresh 500ms)", want4, took.Round(time.Millisecond))
		}
		// Clients come to n4 itself once it is ready (a readiness
		// probe's order): before, a node seconds old may not have its
		// peers' tables yet and serves what it does not hold from
		// storage, which is timing, not the move this test measures.
		if ok, _ := pollEvery(30*time.Second, 20*time.Millisecond, func() bool {
			var st clusterStatus
			return n4.adminGet("/shardcache/status", &st) == nil && st.Ready
		}); !ok {
			t.Fatalf("n4 was not ready 30s after it answered HTTP")
		}
		readyIn := time.Since(launchAt)
		l4 = ftStartLoad([]ftTarget{{"n4", n4.base, 1}}, site, paths, 30000, 60*time.Second)
		ftWaitReady(t, 30*time.Second, append(slices.Clone(nodes), n4), dir)
		readyAt := time.Now()
		t.Logf("n4 answered HTTP %s and was seen ready %s after its start; every member up and ready, seen so by the director, %s after n4 was added to DNS",
			upIn.Round(time.Millisecond), readyIn.Round(time.Millisecond), readyAt.Sub(addAt).Round(time.Millisecond))
		// The others' stores moved to the new ring.
		for _, n := range nodes {
			if ok, _ := pollEvery(15*time.Second, 50*time.Millisecond, func() bool { return len(mbSharesMoved(n, movedBefore[n.name])) > 0 }); !ok {
				t.Errorf("%s logged no \"share moved to the new ring\" within 15s of n4's addition to DNS", n.name)
			}
		}
		time.Sleep(2 * time.Second)
		load4 := l4
		l4 = nil
		rs4 := load4.stop()
		rs := l.stop()
		end := time.Now()

		checkLoad(t, "load on n1-n3 and the director during the join", l, rs)
		checkLoad(t, "load on n4 once it is ready", load4, rs4)
		ownerHits(t, "join: before n4 is in DNS", l, rs, start, addAt, ring3)
		ownerHits(t, "join: n4 in DNS until every member is ready with it", l, rs, addAt, readyAt, ring3, ring4)
		t.Logf("the director's view of the members from n4's addition to DNS until all were ready (+%s): %s",
			readyAt.Sub(addAt).Round(time.Millisecond), seen.notReady(addAt, readyAt))
		ownerHits(t, "join: after", l, rs, readyAt, end, ring4)

		// What the others logged of their move.
		// A node joining takes files from the others and gives them none:
		// they load nothing. (read_from_storage is the change of the
		// store's storage-read counter while its share moved, which also
		// counts requests served from storage meanwhile: logged only.)
		var fromPeers int64
		for _, n := range nodes {
			for _, m := range mbSharesMoved(n, movedBefore[n.name]) {
				t.Logf("%s: share moved to the new ring: %d items held, %d from peers' memory, %d read from storage", n.name, m.items, m.fromPeers, m.fromStorage)
				fromPeers += m.fromPeers
			}
		}
		if fromPeers != 0 {
			t.Errorf("the old members took %d files from peers' memory at n4's join; a joining node gives them none", fromPeers)
		}

		// n4's reads of its copy of the site, from its start to the end
		// of the load.
		opens, overflow := watches[3].between(launchAt, end)
		if overflow {
			t.Errorf("inotify queue overflow on n4's root: the opens counted are incomplete")
		}
		o4 := mbSummarize(opens, site, func(p string) bool { return share4[p] })
		st4 := n4.status(t)
		g4 := st4.group()
		t.Logf("n4 opened on its storage: %d files of its share (%d distinct, %d bytes, e.g. %q) and %d others (%d bytes: requests it served from storage); its status: primed %d items (%d bytes), storage_no_table %d, tiers %s",
			o4.in, o4.inDistinct, o4.inBytes, o4.examples, o4.out, o4.outBytes, g4.PrimedItems, g4.PrimedBytes, g4.StorageNoTable, mbJSON(g4.Tiers))
		var servedDelta int64
		for _, n := range nodes {
			b, a := joinBefore[n.name], mbGroup(t, n)
			sd := a.ServedBytes - b.ServedBytes
			servedDelta += sd
			opens, _ := watches[slices.IndexFunc(members, func(m clusterMember) bool { return m.name == n.name })].between(launchAt, end)
			o := mbSummarize(opens, site, func(p string) bool { return share4[p] })
			t.Logf("%s during the join: served %d bytes to peers (handoff and the load's fetches); opened %d files of n4's share (%d bytes) and %d others (%d bytes) on its storage; storage_no_table +%d, peer_errors +%d",
				n.name, sd, o.in, o.inBytes, o.out, o.outBytes, a.StorageNoTable-b.StorageNoTable, a.PeerErrors-b.PeerErrors)
		}
		t.Logf("bytes of n4's share %d; read by n4 from storage for it %d (%.2f%%); served by n1-n3 to peers meanwhile %d (handoff plus the load's peer fetches)",
			shareBytes, o4.inBytes, 100*float64(o4.inBytes)/float64(shareBytes), servedDelta)
		if float64(o4.inBytes) > 0.05*float64(shareBytes) {
			// What n4 logged of its first ring: started alone, then the
			// DNS members as a ring change?
			var first []string
			for _, e := range n4.findLogs(func(e logEntry) bool {
				m := e.str("msg")
				return m == "node started" || m == "cluster membership changed" || m == "share moved to the new ring" || m == "priming" || m == "primed"
			}) {
				first = append(first, e.String())
			}
			t.Errorf("n4 read %d bytes of its share from storage (%d files) while joining: %.1f%% of the share's %d bytes; want ≤ 5%% (the rest from its peers' memory). n4's log:\n  %s",
				o4.inBytes, o4.in, 100*float64(o4.inBytes)/float64(shareBytes), shareBytes, strings.Join(first, "\n  "))
		}

		// Its priming took the share from the others' memory (the store
		// counts what Handoff gave it, and what storage refused of it).
		if pl := n4.findLogs(func(e logEntry) bool { return e.str("msg") == "primed" }); len(pl) != 1 {
			t.Errorf("n4 logged %d \"primed\" lines; want 1", len(pl))
		} else {
			items, _ := pl[0].num("items")
			peers, ok := pl[0].num("from_peers_memory")
			refused, _ := pl[0].num("from_peers_refused")
			t.Logf("n4's priming: %v of %v items from its peers' memory, %v answers refused", peers, items, refused)
			if !ok || peers < 0.95*items || refused != 0 {
				t.Errorf("n4 primed %v items, %v of them from its peers' memory (%v answers refused); want ≥ 95%% and none refused: %s", items, peers, refused, pl[0])
			}
		}

		// n4 holds its share.
		frac := float64(g4.PrimedItems) / float64(len(site))
		t.Logf("n4 primed %d of %d items (%.1f%%; a quarter is 25%%)", g4.PrimedItems, len(site), 100*frac)
		if frac < 0.15 || frac > 0.35 {
			t.Errorf("n4 primed %d of %d items (%.1f%%); want a quarter ± 40%% (15%%-35%%)", g4.PrimedItems, len(site), 100*frac)
		}
		mbCheckHolders(t, append(slices.Clone(nodes), n4), paths, ring4)
	})
	if !ok && n4 == nil {
		t.Fatal("n4 never started; the leave is not tried")
	}

	t.Run("4_leave_under_load", func(t *testing.T) {
		share4 := map[string]bool{}
		var shareBytes int64
		for _, p := range paths {
			if ring4.Owner(p) == "n4" {
				share4[p] = true
				shareBytes += int64(len(site.file(p)))
			}
		}
		movedBefore := map[string]int{}
		statusBefore := map[string]clusterGroupStatus{}
		for _, n := range nodes {
			movedBefore[n.name] = len(mbSharesMoved(n, 0))
			statusBefore[n.name] = mbGroup(t, n)
		}
		served4 := mbGroup(t, n4).ServedBytes

		l := ftStartLoad(nodeTargets(nodes...), site, paths, 100000, 90*time.Second)
		l4 := ftStartLoad([]ftTarget{{"n4", n4.base, 1}}, site, paths, 30000, 60*time.Second)
		seen := mbSampleMembers(dir, 20*time.Millisecond)
		defer func() {
			l4.stop()
			l.stop()
			seen.stop()
		}()
		start := time.Now()
		time.Sleep(1500 * time.Millisecond)
		removeAt := time.Now()
		d.setTargets(want3...)
		rest := append(slices.Clone(nodes), dir)
		conv, took := pollEvery(15*time.Second, 20*time.Millisecond, func() bool { ok, _ := mbRingsAre(rest, want3); return ok })
		if !conv {
			_, rings := mbRingsAre(rest, want3)
			t.Errorf("the rings of n1-n3 and the director are not %v 15s after n4 was removed from DNS: %s", want3, rings)
		} else {
			t.Logf("the rings of n1-n3 and the director list %v %s after n4 was removed from DNS", want3, took.Round(time.Millisecond))
		}
		for _, n := range nodes {
			if ok, _ := pollEvery(15*time.Second, 50*time.Millisecond, func() bool { return len(mbSharesMoved(n, movedBefore[n.name])) > 0 }); !ok {
				t.Errorf("%s logged no \"share moved to the new ring\" within 15s of n4's removal from DNS", n.name)
			}
		}
		ftWaitReady(t, 30*time.Second, nodes, dir)
		settledAt := time.Now()
		if r, err := mbRing(n4); err == nil {
			t.Logf("n4, removed from DNS, still running: its ring %v", r)
		}
		served4 = mbGroup(t, n4).ServedBytes - served4
		// n4 stays up a while, then stops.
		time.Sleep(2 * time.Second)
		rs4 := l4.stop()
		closeIdleClients()
		stopAt := time.Now()
		n4.stop()
		t.Logf("n4 stopped (SIGTERM) in %s, %s after its removal from DNS", time.Since(stopAt).Round(time.Millisecond), stopAt.Sub(removeAt).Round(time.Millisecond))
		time.Sleep(2 * time.Second)
		rs := l.stop()
		end := time.Now()

		checkLoad(t, "load on n1-n3 and the director during the leave", l, rs)
		checkLoad(t, "load on n4 until it stopped", l4, rs4)
		ownerHits(t, "leave: before n4 is removed from DNS", l, rs, start, removeAt, ring4)
		ownerHits(t, "leave: n4 removed until the others are ready without it", l, rs, removeAt, settledAt, ring3, ring4)
		t.Logf("the director's view of the members from n4's removal from DNS until n1-n3 were ready without it (+%s): %s",
			settledAt.Sub(removeAt).Round(time.Millisecond), seen.notReady(removeAt, settledAt))
		ownerHits(t, "leave: after (n4 stopped meanwhile)", l, rs, settledAt, end, ring3)

		var fromPeers, fromStorage int64
		for _, n := range nodes {
			for _, m := range mbSharesMoved(n, movedBefore[n.name]) {
				t.Logf("%s: share moved to the new ring: %d items held, %d from peers' memory, %d read from storage", n.name, m.items, m.fromPeers, m.fromStorage)
				fromPeers += m.fromPeers
				fromStorage += m.fromStorage
			}
		}
		// The others' reads of their copies of the site: the files of
		// n4's former share their stores did not take from n4's memory,
		// and the requests they served from storage meanwhile (a peer's
		// table of content not trusted while the rings differ, or a
		// fetch that failed).
		var readBytes int64
		var readFiles int
		for i, n := range nodes {
			opens, overflow := watches[i].between(removeAt, end)
			if overflow {
				t.Errorf("inotify queue overflow on %s's root: the opens counted are incomplete", n.name)
			}
			o := mbSummarize(opens, site, func(p string) bool { return share4[p] })
			readBytes += o.inBytes
			readFiles += o.in
			b, a := statusBefore[n.name], mbGroup(t, n)
			t.Logf("%s during the leave: opened %d files of n4's former share (%d bytes, e.g. %q) and %d others (%d bytes) on its storage; storage_no_table +%d, peer_errors +%d, storage tier +%d requests",
				n.name, o.in, o.inBytes, o.examples, o.out, o.outBytes, a.StorageNoTable-b.StorageNoTable, a.PeerErrors-b.PeerErrors,
				a.tier("storage").Requests-b.tier("storage").Requests)
		}
		t.Logf("n4's former share: %d files, %d bytes; its new holders took %d files from n4's memory (n4 served peers %d bytes meanwhile), and %d were not (read_from_storage in their logs: %d); all reads of the share's files on n1-n3's storage, requests included: %d opens, %d bytes (%.2f%% of the share)",
			len(share4), shareBytes, fromPeers, served4, int64(len(share4))-fromPeers, fromStorage, readFiles, readBytes, 100*float64(readBytes)/float64(shareBytes))
		// The move itself: HandoffItems counts exactly the files taken
		// from a peer's memory; the rest of the share was read.
		if float64(fromPeers) < 0.95*float64(len(share4)) {
			t.Errorf("n1-n3 took %d files of n4's former %d from its memory: %d (%.1f%%) from storage; want ≤ 5%% from storage",
				fromPeers, len(share4), int64(len(share4))-fromPeers, 100*(1-float64(fromPeers)/float64(len(share4))))
		}
		if fromPeers+fromStorage != int64(len(share4)) {
			t.Logf("NOTE: the \"share moved\" lines count %d + %d = %d files loaded for a share of %d: read_from_storage is the change of the store's storage-read counter while the share moved, which also counts the requests served from storage meanwhile",
				fromPeers, fromStorage, fromPeers+fromStorage, len(share4))
		}
		if ok, rings := mbRingsAre(rest, want3); !ok {
			t.Errorf("after n4 stopped the rings are not %v: %s", want3, rings)
		}
		mbCheckHolders(t, nodes, paths, ring3)
		dynServeAll(nodes, bases(nodes), site).report(t, "every file from n1-n3 after n4 left")
		dynServeAll([]*clusterNode{dir}, []string{dir.base}, site).report(t, "every file through the director after n4 left")
	})

	var sum []string
	for _, r := range ratios {
		sum = append(sum, fmt.Sprintf("%s: %d/%d", r.name, r.hits, r.total))
	}
	t.Logf("director, requests answered by their path's owner per phase: %s", strings.Join(sum, "; "))
	t.Logf("TestMembershipDNS took %s", time.Since(began).Round(time.Millisecond))
}

// mbCheckHolders checks with GET /shardcache/where on every node that
// each path is held in memory by its owner under ring (local, found,
// resident) and by no other node.
func mbCheckHolders(t *testing.T, nodes []*clusterNode, paths []string, ring *peering.Ring) {
	t.Helper()
	held := map[string]int{}
	var bad []string
	for _, n := range nodes {
		for _, p := range paths {
			w, err := n.where(p)
			if err != nil {
				t.Errorf("%s: %v", n.name, err)
				return
			}
			owner := ring.Owner(p)
			switch {
			case w.Owner != owner:
				bad = append(bad, fmt.Sprintf("%s says %s's owner is %s (want %s)", n.name, p, w.Owner, owner))
			case n.name == owner && !(w.Local && w.Found && w.Resident):
				bad = append(bad, fmt.Sprintf("%s, owner of %s: local %v found %v resident %v", n.name, p, w.Local, w.Found, w.Resident))
			case n.name != owner && w.Local:
				bad = append(bad, fmt.Sprintf("%s holds %s (owner %s)", n.name, p, owner))
			case n.name == owner:
				held[n.name]++
			}
		}
	}
	var parts []string
	for _, n := range nodes {
		g := mbGroup(t, n)
		parts = append(parts, fmt.Sprintf("%s %d (%.1f%%; status primed_items %d)", n.name, held[n.name], 100*float64(held[n.name])/float64(len(paths)), g.PrimedItems))
	}
	t.Logf("files held in memory per node, by /shardcache/where: %s", strings.Join(parts, ", "))
	if len(bad) > 0 {
		t.Errorf("%d (node, path) pairs are not as the ring %v says: %s", len(bad), ring.Nodes(), strings.Join(bad[:min(8, len(bad))], "; "))
	}
}

// TestMembershipJoinHandoff: how a node joining a running cluster found in
// DNS primes its share, without load. Three nodes find each other with
// `peers srv`; n4 starts and is added to the SRV answer. Its share must
// come from its peers' memory: the files of its share it opens on its own
// copy of the site (inotify) must be at most 5% of the share's bytes.
// n4's Caddyfile has `peers srv` only (as every node's in
// TestMembershipDNS), or `peers srv` and `peer` lines naming n1-n3: the
// second differs from the first only by the members n4 knows when it
// starts.
func TestMembershipJoinHandoff(t *testing.T) {
	needCaddy(t)
	for _, variant := range []string{"peers_srv_only", "peers_srv_and_peer_lines"} {
		t.Run(variant, func(t *testing.T) {
			began := time.Now()
			site := genClusterSite(360, 32)
			paths := site.paths()
			members := ftMembers(mbNet, 4)
			roots := writeClusterRoots(t, members, site)
			ring4 := peering.NewRing(0, nil, "n1", "n2", "n3", "n4")
			d := mbStartDNS(t)
			for _, m := range members {
				d.setA(m)
			}
			d.setTargets("n1", "n2", "n3")
			specs := make([]mbNodeSpec, len(members))
			for i, m := range members {
				specs[i] = mbNodeSpec{self: m, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), port: freePort(t), root: roots[i]}
			}
			if variant == "peers_srv_and_peer_lines" {
				specs[3].static = members[:3]
			}
			w4 := mbWatchOpens(t, roots[3])
			g := newNodeGroup(t, newClusterSecret(t))
			var nodes []*clusterNode
			for _, s := range specs[:3] {
				nodes = append(nodes, g.launch(s.self.name, s.self.san, s.base(), s.root, s.caddyfile(d.addr)))
			}
			deadline := time.Now().Add(30 * time.Second)
			for _, n := range nodes {
				n.waitUp(n.caddyfile, deadline)
			}
			ftWaitReady(t, 30*time.Second, nodes)

			share := map[string]bool{}
			var shareBytes int64
			for _, p := range paths {
				if ring4.Owner(p) == "n4" {
					share[p] = true
					shareBytes += int64(len(site.file(p)))
				}
			}
			servedBefore := int64(0)
			for _, n := range nodes {
				servedBefore += mbGroup(t, n).ServedBytes
			}
			launchAt := time.Now()
			s := specs[3]
			n4 := g.launch(s.self.name, s.self.san, s.base(), s.root, s.caddyfile(d.addr))
			n4.waitUp(n4.caddyfile, time.Now().Add(30*time.Second))
			d.setTargets("n1", "n2", "n3", "n4")
			all := append(slices.Clone(nodes), n4)
			if ok, _ := pollEvery(15*time.Second, 20*time.Millisecond, func() bool { ok, _ := mbRingsAre(all, []string{"n1", "n2", "n3", "n4"}); return ok }); !ok {
				_, rings := mbRingsAre(all, []string{"n1", "n2", "n3", "n4"})
				t.Fatalf("the rings do not list n1-n4 15s after n4 was added to DNS: %s", rings)
			}
			ftWaitReady(t, 30*time.Second, all)
			end := time.Now()
			opens, overflow := w4.between(launchAt, end)
			if overflow {
				t.Errorf("inotify queue overflow on n4's root")
			}
			o := mbSummarize(opens, site, func(p string) bool { return share[p] })
			served := int64(0)
			for _, n := range nodes {
				served += mbGroup(t, n).ServedBytes
			}
			var ringAtStart string
			for _, e := range n4.findLogs(func(e logEntry) bool { return e.str("msg") == "node started" }) {
				ringAtStart = fmt.Sprint(e["ring"])
			}
			g4 := mbGroup(t, n4)
			t.Logf("%s: n4's share %d files, %d bytes; n4 primed %d items; it opened %d files of its share on storage (%d bytes, %.1f%%) and %d others; n1-n3 served peers %d bytes; n4's ring when its node started: %s; %s in all",
				variant, len(share), shareBytes, g4.PrimedItems, o.in, o.inBytes, 100*float64(o.inBytes)/float64(shareBytes), o.out,
				served-servedBefore, ringAtStart, time.Since(began).Round(time.Millisecond))
			if float64(o.inBytes) > 0.05*float64(shareBytes) {
				t.Errorf("%s: n4 read %.1f%% of its share's bytes from storage (%d of %d files); want ≤ 5%%, the rest from its peers' memory. n4's node started with the ring %s",
					variant, 100*float64(o.inBytes)/float64(shareBytes), o.inDistinct, len(share), ringAtStart)
			}
		})
	}
}

// mbWaitFound waits up to 5s until every node's /shardcache/where finds
// every path (held here or in a trusted peer's table of content), and
// reports those it does not.
func mbWaitFound(t *testing.T, nodes []*clusterNode, paths []string) {
	t.Helper()
	missing := func() []string {
		var out []string
		for _, n := range nodes {
			for _, p := range paths {
				if w, err := n.where(p); err != nil || !w.Found {
					out = append(out, fmt.Sprintf("%s %s (owner %s, err %v)", n.name, p, w.Owner, err))
				}
			}
		}
		return out
	}
	var last []string
	ok, _ := pollEvery(5*time.Second, 100*time.Millisecond, func() bool { last = missing(); return len(last) == 0 })
	if !ok {
		t.Errorf("%d (node, path) pairs not found by /shardcache/where 5s after the cluster is ready, e.g. %s", len(last), strings.Join(last[:min(5, len(last))], "; "))
	}
}
