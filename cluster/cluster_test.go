package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// These tests run two or three cluster nodes in one process, on loopback
// QUIC with mutual TLS, each with a store of its own over its own copy of
// a site.

const testSecret = "cluster-test-secret-0123456789"

// tnode is one node of a test cluster.
type tnode struct {
	name  string
	addr  string
	c     *Cluster
	m     *Membership
	root  string
	group string
	store *shard.Store
	logs  *observer.ObservedLogs
}

// site writes n small files (and returns their paths) under a new root.
func site(t *testing.T, n int) (root string, paths []string) {
	t.Helper()
	root = t.TempDir()
	for i := range n {
		p := fmt.Sprintf("/f%03d.txt", i)
		if err := os.WriteFile(filepath.Join(root, p), []byte(strings.Repeat(p, 10)), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return root, paths
}

// copySite copies the files of root into a new directory, with their
// modification times (as a synced copy, rsync -a, has them).
func copySite(t *testing.T, root string, paths []string) string {
	t.Helper()
	dst := t.TempDir()
	for _, p := range paths {
		src := filepath.Join(root, p)
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(filepath.Join(dst, p), fi.ModTime(), fi.ModTime()); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// newNodes makes (without starting) nodes named names, each with its own
// UDP socket on 127.0.0.1, all listing each other.
func newNodes(t *testing.T, names ...string) []*tnode {
	t.Helper()
	var nodes []*tnode
	conns := map[string]net.PacketConn{}
	for _, name := range names {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conns[name] = pc
		nodes = append(nodes, &tnode{name: name, addr: pc.LocalAddr().String()})
	}
	for _, n := range nodes {
		var peers []peering.Peer
		for _, o := range nodes {
			if o != n {
				peers = append(peers, peering.Peer{Name: o.name, Addr: o.addr})
			}
		}
		n.m = NewMembership(n.name, false, peers, 1)
		core, logs := observer.New(zapcore.InfoLevel)
		n.logs = logs
		pc := conns[n.name]
		n.c = New(Config{Name: n.name, Addr: n.addr, Logger: zap.New(core),
			Peering: func(c *peering.Config) {
				c.PacketConn = pc
				c.IdleTimeout = 500 * time.Millisecond
			}}, n.m)
		t.Cleanup(func() { n.c.Close() })
	}
	return nodes
}

// newStore makes n's store of root for group under membership m.
func (n *tnode) newStore(t *testing.T, group, root string, m *Membership) *shard.Store {
	t.Helper()
	c := n.c
	st, err := shard.New(shard.Config{Root: root, Owns: m.Owns, Rescan: time.Hour, Precompressed: []string{"gzip"},
		OnChange: func(p string, it *shard.Item) { c.Publish(group, p, it) },
		OnDrop:   func(it *shard.Item) { c.Dropped(group, it) },
		Handoff: func(ctx context.Context, p string, size int64, mtime time.Time) (*shard.Item, bool) {
			return c.Handoff(ctx, group, p, size, mtime)
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// start starts n with one group over root.
func (n *tnode) start(t *testing.T, group, root string) {
	t.Helper()
	creds, err := peering.CredentialsFromSecret(testSecret, n.name)
	if err != nil {
		t.Fatal(err)
	}
	n.root, n.group = root, group
	n.store = n.newStore(t, group, root, n.m)
	if err := n.c.Start(creds, ""); err != nil {
		t.Fatal(err)
	}
	n.c.Commit(Commit{Members: n.m, Groups: []GroupConfig{{Name: group, Store: n.store, Hot: 1 << 20}}})
	n.store.Start()
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// trustsAll reports whether n trusts every other node's table for group.
func (n *tnode) trustsAll(nodes []*tnode, group string) bool {
	for _, o := range nodes {
		if o != n && !n.c.trusted(o.name, group, n.c.members.Load()) {
			return false
		}
	}
	return true
}

// get resolves p on n and reads its whole body, as a handler would.
func (n *tnode) get(p string) ([]byte, Tier, error) {
	g := n.c.Group(n.group)
	res, err := g.Resolve(n.store, p)
	if err != nil {
		return nil, 0, err
	}
	if res.IsDir {
		return nil, 0, fmt.Errorf("%s: a directory", p)
	}
	if res.Remote == nil {
		data, _, _, _ := HeldBytes(res.Item, "")
		if data == nil && res.Item.Size > 0 {
			b, err := FromStore(n.store, &g.stats, p, "")
			if err != nil {
				return nil, 0, err
			}
			defer b.Close()
			return readBody(b)
		}
		if res.Storage {
			return data, TierStorage, nil
		}
		return data, TierLocal, nil
	}
	b, err := g.Open(n.store, res.Remote, "", "")
	if err != nil {
		return nil, 0, err
	}
	defer b.Close()
	return readBody(b)
}

func readBody(b Body) ([]byte, Tier, error) {
	switch {
	case b.Data != nil:
		return b.Data, b.Tier, nil
	case b.File != nil:
		buf := make([]byte, b.Item.Size)
		_, err := b.File.Read(buf)
		return buf, b.Tier, err
	case b.Remote != nil:
		var sb strings.Builder
		_, err := b.Remote.WriteTo(&sb)
		return []byte(sb.String()), b.Tier, err
	}
	return nil, b.Tier, nil
}

// checkAll checks that every node serves every path with the right bytes.
func checkAll(t *testing.T, nodes []*tnode, paths []string) map[Tier]int {
	t.Helper()
	tiers := map[Tier]int{}
	for _, n := range nodes {
		for _, p := range paths {
			got, tier, err := n.get(p)
			if err != nil {
				t.Errorf("%s: GET %s: %v", n.name, p, err)
				continue
			}
			if want := strings.Repeat(p, 10); string(got) != want {
				t.Errorf("%s: GET %s: %q; want %q", n.name, p, got, want)
			}
			tiers[tier]++
		}
	}
	return tiers
}

func TestStaticClusterServesFromPeersAnd404sOnlyWhenTrusted(t *testing.T) {
	root, paths := site(t, 30)
	nodes := newNodes(t, "n1", "n2", "n3")
	for _, n := range nodes {
		n.start(t, "www", copySite(t, root, paths))
	}
	for _, n := range nodes {
		waitFor(t, n.name+" trusting its peers", func() bool { return n.trustsAll(nodes, "www") })
	}
	tiers := checkAll(t, nodes, paths)
	if tiers[TierPeer] == 0 || tiers[TierLocal] == 0 || tiers[TierStorage] != 0 {
		t.Errorf("tiers %v: want local and peer, no storage", tiers)
	}
	// A path nobody has: 404 on every node, answered from the table.
	for _, n := range nodes {
		for i := range 20 {
			p := fmt.Sprintf("/missing%d", i)
			if _, _, err := n.get(p); !errors.Is(err, shard.ErrNotFound) {
				t.Errorf("%s: GET %s: %v; want not found", n.name, p, err)
			}
		}
	}
}

// Rule 1 and 2: nodes whose groups are named differently (roots at
// different paths, no `group` line) serve every file from their own
// storage, and warn naming both nodes and both groups.
func TestDifferingGroupsServeFromStorageAndWarn(t *testing.T) {
	root, paths := site(t, 30)
	nodes := newNodes(t, "n1", "n2", "n3")
	for i, n := range nodes {
		r := copySite(t, root, paths)
		n.start(t, r, r) // the group defaults to the root: differs on each node
		_ = i
	}
	for _, n := range nodes {
		waitFor(t, n.name+" seeing its peers' groups", func() bool {
			return len(n.logs.FilterMessageSnippet("groups differ between nodes").All()) >= 2
		})
	}
	tiers := checkAll(t, nodes, paths)
	if tiers[TierStorage] == 0 || tiers[TierPeer] != 0 {
		t.Errorf("tiers %v: want storage for other nodes' paths, no peer fetch", tiers)
	}
	n1 := nodes[0]
	e := n1.logs.FilterMessageSnippet("groups differ between nodes").All()[0]
	fields := e.ContextMap()
	if fields["node"] != "n1" || (fields["peer"] != "n2" && fields["peer"] != "n3") {
		t.Errorf("warning names node %v and peer %v", fields["node"], fields["peer"])
	}
	if s := fmt.Sprint(fields["node_groups"], fields["peer_groups"]); !strings.Contains(s, n1.group) {
		t.Errorf("warning's groups %s do not name %s", s, n1.group)
	}
	st := n1.c.Status()
	for _, m := range st.Members {
		if len(m.MissingGroups) != 1 || m.MissingGroups[0] != n1.group {
			t.Errorf("status of %s: missing groups %v; want [%s]", m.Name, m.MissingGroups, n1.group)
		}
	}
	if n := n1.c.Group(n1.group).stats.noTable.Load(); n == 0 {
		t.Error("lookups answered from storage were not counted")
	}
}

// Rule 1: before a holder is connected (or while it is down), its paths
// come from this node's storage; once it is trusted, an unknown path is a
// 404.
func TestUntrustedHolderMeansStorage(t *testing.T) {
	root, paths := site(t, 20)
	nodes := newNodes(t, "n1", "n2")
	n1, n2 := nodes[0], nodes[1]
	n1.start(t, "www", copySite(t, root, paths))
	waitFor(t, "n1 primed", n1.c.Ready)
	tiers := checkAll(t, nodes[:1], paths)
	if tiers[TierStorage] == 0 {
		t.Errorf("tiers %v: want n2's paths from storage while n2 is away", tiers)
	}
	n2.start(t, "www", copySite(t, root, paths))
	waitFor(t, "trust", func() bool { return n1.trustsAll(nodes, "www") && n2.trustsAll(nodes, "www") })
	tiers = checkAll(t, nodes, paths)
	if tiers[TierPeer] == 0 {
		t.Errorf("tiers %v: want peer fetches once n2 is up", tiers)
	}
	// n2 goes away: its paths come from n1's storage again, never 404.
	n2.c.Close()
	waitFor(t, "n2 down", func() bool { up, _ := n1.c.peerUp("n2"); return !up })
	if tiers := checkAll(t, nodes[:1], paths); tiers[TierStorage] == 0 {
		t.Errorf("tiers %v: want storage with n2 down", tiers)
	}
}

// Rule 3: a group added by a commit (a reload adding a site) is published
// to the peers once primed; its files are then fetched from their holders.
func TestGroupAddedByCommitIsPublished(t *testing.T) {
	root, paths := site(t, 20)
	root2, paths2 := site(t, 20)
	nodes := newNodes(t, "n1", "n2")
	startTrusting(t, nodes, "www", root, paths)
	// Reload: both nodes add group "two".
	for _, n := range nodes {
		st2 := n.newStore(t, "two", copySite(t, root2, paths2), n.m)
		n.c.Commit(Commit{Members: n.m, Groups: []GroupConfig{
			{Name: "www", Store: n.store, Hot: 1 << 20}, {Name: "two", Store: st2, Hot: 1 << 20}}})
		st2.Start()
		defer func(n *tnode, st *shard.Store) { n.store, n.group = st, "two" }(n, st2)
		n.group = "two"
		n.store = st2
	}
	// Never a 404 while the new group primes and publishes.
	checkAll(t, nodes, paths2)
	for _, n := range nodes {
		waitFor(t, "trust in group two", func() bool { return n.trustsAll(nodes, "two") })
	}
	tiers := checkAll(t, nodes, paths2)
	if tiers[TierPeer] == 0 || tiers[TierStorage] != 0 {
		t.Errorf("tiers %v: want the new group's files from peers", tiers)
	}
	if _, _, err := nodes[0].get(pathOf(t, nodes[0].m, "n2", "/nothing%d")); !errors.Is(err, shard.ErrNotFound) {
		t.Errorf("unknown path in the new group: %v; want not found", err)
	}
}

// pathOf returns a path matching pattern (with %d) that owner holds.
func pathOf(t *testing.T, m *Membership, owner, pattern string) string {
	for i := range 1000 {
		if p := fmt.Sprintf(pattern, i); m.Owner(p) == owner {
			return p
		}
	}
	t.Fatalf("no path of %s", owner)
	return ""
}

// Rule 3: a member removed from every node's peer list: the remaining
// nodes drop its entries, re-prime their new shares, and serve every file
// (never a 404).
func TestMemberRemovedByCommit(t *testing.T) {
	root, paths := site(t, 40)
	nodes := newNodes(t, "n1", "n2", "n3")
	startTrusting(t, nodes, "www", root, paths)
	left := nodes[:2]
	for _, n := range left {
		var peers []peering.Peer
		for _, o := range left {
			if o != n {
				peers = append(peers, peering.Peer{Name: o.name, Addr: o.addr})
			}
		}
		m := NewMembership(n.name, false, peers, 1)
		st := n.newStore(t, "www", n.root, m)
		n.c.Commit(Commit{Members: m, Groups: []GroupConfig{{Name: "www", Store: st, Hot: 1 << 20}}})
		st.Start()
		n.m, n.store = m, st
		if g := n.c.Group("www"); g.TOCLen() > 0 {
			for _, p := range paths {
				if e, ok := g.entry(p); ok && e.Owner == "n3" {
					t.Errorf("%s still lists %s from n3", n.name, p)
				}
			}
		}
		// Right after the commit, before anything is primed: every file.
		checkAll(t, []*tnode{n}, paths)
	}
	nodes[2].c.Close()
	for _, n := range left {
		waitFor(t, "trust in the new ring", func() bool { return n.trustsAll(left, "www") })
	}
	tiers := checkAll(t, left, paths)
	if tiers[TierPeer] == 0 || tiers[TierStorage] != 0 {
		t.Errorf("tiers %v: want local and peer in the new ring", tiers)
	}
}

// The peer side is hostile: entries for paths the sender does not hold
// are refused and counted, and the cap per peer holds.
func TestTableOfContentAcceptsOnlyTheSendersPaths(t *testing.T) {
	nodes := newNodes(t, "n1", "n2")
	n1 := nodes[0]
	g := n1.c.Group("www")
	mine := pathOf(t, n1.m, "n1", "/mine%d")
	theirs := pathOf(t, n1.m, "n2", "/theirs%d")
	g.Learn("n2", peering.Delta{Group: "www", Upserts: []peering.Meta{
		{Path: mine, ETag: `"forged"`, Version: "forged"},
		{Path: theirs, ETag: `"v1"`, Version: "v1"},
	}})
	if _, ok := g.entry(mine); ok {
		t.Error("n2 could claim a path n1 holds")
	}
	if _, ok := g.entry(theirs); !ok {
		t.Error("n2's own path was refused")
	}
	if got := g.stats.refusedEntries.Load(); got != 1 {
		t.Errorf("refused entries = %d; want 1", got)
	}
	if len(n1.logs.FilterMessageSnippet("refused table-of-content entries").All()) != 1 {
		t.Error("no warning logged")
	}
}

func TestTableOfContentCapPerPeer(t *testing.T) {
	nodes := newNodes(t, "n1", "n2")
	n1 := nodes[0]
	g := n1.c.Group("www")
	var ms []peering.Meta
	for i := 0; len(ms) < 3000; i++ {
		if p := fmt.Sprintf("/p%d", i); n1.m.Owner(p) == "n2" {
			v := strings.Repeat("v", 1000)
			ms = append(ms, peering.Meta{Path: p, ETag: `"` + v + `"`, Version: v})
		}
	}
	old := maxWeightPerPeer
	maxWeightPerPeer = 1 << 20 // about 1000 of these entries
	t.Cleanup(func() { maxWeightPerPeer = old })
	g.Learn("n2", peering.Delta{Group: "www", Upserts: ms})
	if n := g.TOCLen(); n == 0 || n > 1100 {
		t.Errorf("%d entries kept; want at most the cap (~1000)", n)
	}
	if w := g.owners["n2"].tab.bytes(); w > maxWeightPerPeer {
		t.Errorf("weight %d over the cap %d", w, maxWeightPerPeer)
	}
	// Deleting frees room.
	before := g.owners["n2"].tab.bytes()
	g.Learn("n2", peering.Delta{Group: "www", Deletes: []string{ms[0].Path}})
	if w := g.owners["n2"].tab.bytes(); w > maxWeightPerPeer || w >= before {
		t.Errorf("weight after delete %d (before %d)", w, before)
	}
}

// A GET for a path this node does not hold is refused without reading
// (or hashing) the file.
func TestGetRefusesPathsNotHeld(t *testing.T) {
	root, paths := site(t, 20)
	nodes := newNodes(t, "n1", "n2")
	n1 := nodes[0]
	n1.start(t, "www", root)
	waitFor(t, "primed", n1.c.Ready)
	before := n1.store.Stats().StorageReads
	for _, p := range paths {
		if n1.m.Owns(p) {
			continue
		}
		if _, _, err := n1.c.Get(t.Context(), peering.Request{Group: "www", Path: p}); !errors.Is(err, peering.ErrNotFound) {
			t.Errorf("Get %s (not held): %v; want not found", p, err)
		}
	}
	if after := n1.store.Stats().StorageReads; after != before {
		t.Errorf("storage reads %d -> %d: a path not held was read", before, after)
	}
}

// Purges from peers: the empty prefix is refused; a burst is coalesced.
func TestPurges(t *testing.T) {
	nodes := newNodes(t, "n1", "n2")
	n1 := nodes[0]
	n1.c.onEvent(peering.Event{Kind: peering.EventPurge, Peer: "n2", Purge: peering.Purge{Prefix: true}})
	if len(n1.c.purges) != 0 || len(n1.logs.FilterMessageSnippet("refused a purge of everything").All()) != 1 {
		t.Error("a purge of the empty prefix was queued, or not logged")
	}
	got := coalesce([]peering.Purge{
		{Path: "/a"}, {Path: "/a"}, {Path: "/img/", Prefix: true}, {Path: "/img/x.png"},
		{Path: "/img/y.png", Group: "g"}, {Path: "/b", Group: "g"}, {Path: "/b", Group: "h"},
	})
	want := []peering.Purge{{Path: "/a"}, {Path: "/img/", Prefix: true}, {Path: "/b", Group: "g"}, {Path: "/b", Group: "h"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("coalesce = %v; want %v", got, want)
	}
}

// A remote body of a large item read from two goroutines (as
// http.ServeContent does for a multi-range response, whose writer may
// still be reading after the response ended) and closed meanwhile: the
// race detector watches.
func TestRemoteBodyConcurrentReadAndClose(t *testing.T) {
	root := t.TempDir()
	big := make([]byte, 3*shard.ChunkSize+100)
	for i := range big {
		big[i] = byte(i * 7)
	}
	nodes := newNodes(t, "n1", "n2")
	p := pathOf(t, nodes[0].m, "n2", "/big%d.bin")
	if err := os.WriteFile(filepath.Join(root, p), big, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		n.start(t, "www", copySite(t, root, []string{p}))
	}
	n1 := nodes[0]
	waitFor(t, "trust", func() bool { return n1.trustsAll(nodes, "www") })
	g := n1.c.Group("www")
	res, err := g.Resolve(n1.store, p)
	if err != nil || res.Remote == nil {
		t.Fatalf("resolve: %v %v", res, err)
	}
	b, err := g.Open(n1.store, res.Remote, "", "bytes=0-9,"+fmt.Sprint(2*shard.ChunkSize)+"-")
	if err != nil || b.Remote == nil {
		t.Fatalf("open: %v", err)
	}
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			buf := make([]byte, 4096)
			b.Remote.Seek(int64(i)*2*shard.ChunkSize, 0)
			for range 50 {
				if _, err := b.Remote.Read(buf); err != nil {
					return
				}
			}
		})
	}
	b.Close()
	wg.Wait()
	if _, err := b.Remote.Read(make([]byte, 1)); !errors.Is(err, errBodyClosed) && err != nil {
		t.Errorf("read after close: %v", err)
	}
	if err := b.Remote.Err(); err != nil {
		t.Errorf("a closed body reports a cluster failure: %v", err)
	}
}

// settled reports whether every store of c has applied the last ring
// change and sent its table.
func (c *Cluster) settled() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, og := range c.own {
		if og.settling > 0 || !og.sent {
			return false
		}
	}
	return true
}

// A group is advertised ready only for the ring its store holds its share
// for. SetMembers swaps the membership first and has the stores take their
// new share after; a state published in between (the readiness ticker runs
// every 50 ms) called the table ready for the new ring, and peers answered
// 404 for the files the node had just gained (TestDynamicMemberRemovedByReload
// saw one).
func TestStateReadyOnlyForTheStoresRing(t *testing.T) {
	root, paths := site(t, 10)
	nodes := newNodes(t, "n1", "n2")
	startTrusting(t, nodes, "www", root, paths)
	c := nodes[0].c
	ready := func() bool {
		for _, g := range c.state().Groups {
			if g.Name == "www" {
				return g.Ready
			}
		}
		return false
	}
	if !ready() {
		t.Fatal("www is not advertised ready once primed")
	}
	old := c.members.Swap(NewMembership("n1", false, nil, 1)) // as SetMembers does first
	if ready() {
		t.Error("www advertised ready for a ring its store has not taken its share of")
	}
	c.members.Store(old)
	if !ready() {
		t.Error("www not advertised ready once the ring is its store's again")
	}
}

// startTrusting starts every node on its own copy of root's paths as group,
// and waits until each trusts all the others for it.
func startTrusting(t *testing.T, nodes []*tnode, group, root string, paths []string) {
	t.Helper()
	for _, n := range nodes {
		n.start(t, group, copySite(t, root, paths))
	}
	for _, n := range nodes {
		waitFor(t, "trust", func() bool { return n.trustsAll(nodes, group) })
	}
}
