package cluster

import (
	"testing"

	"github.com/shardcache/caddy-shardcache/peering"
)

// membersOf returns the membership of n with the nodes in with (n's own
// entry is skipped).
func membersOf(n *tnode, with []*tnode) *Membership {
	var peers []peering.Peer
	for _, o := range with {
		if o != n {
			peers = append(peers, peering.Peer{Name: o.name, Addr: o.addr})
		}
	}
	return NewMembership(n.name, false, peers, 1)
}

// A node joins a running cluster: every node keeps its store; only the
// items whose owner changed move, from the previous holders' memory (not
// from storage); no request meanwhile is a 404 or a wrong body. Then it
// leaves again, the same way back.
func TestJoinAndLeaveMoveOnlyTheChangedShare(t *testing.T) {
	root, paths := site(t, 200)
	nodes := newNodes(t, "n1", "n2", "n3", "n4")
	old, n4 := nodes[:3], nodes[3]
	for _, n := range old {
		n.m = membersOf(n, old)
		n.c.members.Store(n.m)
		n.start(t, "www", copySite(t, root, paths))
	}
	for _, n := range old {
		waitFor(t, "trust", func() bool { return n.trustsAll(old, "www") })
	}
	before := map[string]map[string]bool{}
	for _, n := range old {
		before[n.name] = map[string]bool{}
		for _, p := range paths {
			if n.m.Owns(p) {
				before[n.name][p] = true
			}
		}
	}
	reads0 := map[string]int64{}
	for _, n := range old {
		reads0[n.name] = n.store.Stats().StorageReads
	}

	// n4 joins: it starts knowing all four; the others learn of it.
	n4.m = membersOf(n4, nodes)
	n4.c.members.Store(n4.m)
	n4.start(t, "www", copySite(t, root, paths))
	for _, n := range old {
		n.m = membersOf(n, nodes)
		n.c.SetMembers(n.m)
	}
	// Never a 404 or a wrong body while the share moves.
	checkAll(t, nodes, paths)
	for _, n := range nodes {
		waitFor(t, "trust in the ring of four", func() bool { return n.trustsAll(nodes, "www") })
	}
	checkAll(t, nodes, paths)

	moved := 0
	var joinReads int64
	for _, n := range old {
		for _, p := range paths {
			if before[n.name][p] != n.m.Owns(p) {
				moved++
				if !before[n.name][p] {
					t.Errorf("%s newly holds %s: only n4 should gain paths when it joins", n.name, p)
				}
			}
		}
		d := n.store.Stats().StorageReads - reads0[n.name]
		joinReads += d
		t.Logf("%s: %d files read from storage during the join", n.name, d)
	}
	share := 0
	for _, p := range paths {
		if n4.m.Owns(p) {
			share++
		}
	}
	if moved != share {
		t.Errorf("%d items left the old nodes, n4 holds %d", moved, share)
	}
	// Requests during the join come from memory: the node that gave an
	// item up, or the one that held it, serves it until n4 is ready.
	if joinReads*20 > int64(share) {
		t.Errorf("the old nodes read %d files from storage during the join; want ≤ 5%% of the %d moved", joinReads, share)
	}
	st := n4.store.Stats()
	t.Logf("n4 joined: holds %d of %d items; %d from the previous holders' memory, %d files read from storage",
		share, len(paths), st.HandoffItems, st.StorageReads)
	if st.HandoffItems < int64(share)*95/100 {
		t.Errorf("n4 took %d of its %d items from memory; want ≥ 95%%", st.HandoffItems, share)
	}

	// n4 leaves: the others take its share back, from its memory while it
	// is still up.
	for _, n := range old {
		n.m = membersOf(n, old)
		n.c.SetMembers(n.m)
	}
	for _, n := range old {
		waitFor(t, n.name+" settled in the ring of three", func() bool { return n.c.settled() && n.trustsAll(old, "www") })
	}
	var handed int64
	for _, n := range old {
		st := n.store.Stats()
		t.Logf("%s after n4 left: handoff %d items (%d refused), storage reads %d", n.name, st.HandoffItems, st.HandoffFailed, st.StorageReads-reads0[n.name])
		handed += st.HandoffItems
	}
	n4.c.Close()
	checkAll(t, old, paths)
	t.Logf("n4 left: the others took %d items from memory", handed)
	if handed < int64(share)*95/100 {
		t.Errorf("the others took %d of n4's %d items from memory; want ≥ 95%%", handed, share)
	}
}
