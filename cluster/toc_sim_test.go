package cluster

import (
	"fmt"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
)

// TestSimulateFiftyMembers simulates a cluster past this machine: 50
// members' rings and one member's compact tables of content for a site of
// SHARDCACHE_SIM_PATHS files (100,000 by default; the 10,000,000
// with the command in toc_scale_test.go), generated, nothing on disk. It
// reports the memory per file another member holds, the snapshot a member
// sends, the size of changes, and what moves when a 51st member joins.
func TestSimulateFiftyMembers(t *testing.T) {
	paths := envInt(t, "SHARDCACHE_SIM_PATHS", 100_000)
	if testing.Short() && paths > 100_000 {
		t.Skip("large simulation skipped with -short")
	}
	const members = 50
	var peers []peering.Peer
	for i := 2; i <= members+1; i++ {
		peers = append(peers, peering.Peer{Name: fmt.Sprintf("n%02d", i), Addr: "sim"})
	}
	ring := NewMembership("n01", false, peers[:members-1], 1) // n01..n50
	joined := NewMembership("n01", false, peers, 1)           // and n51

	c := New(Config{Name: "n01"}, ring)
	g := c.Group("www")
	// n02's snapshot, as it would stream it to each peer.
	var snapBytes int64
	snapItems := 0
	w := peering.NewTOCWriter(func(b []byte) error { snapBytes += int64(len(b)); return nil })
	if _, err := w.Group("www", paths/members, true); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	heap0 := heapAfterGC()
	share := map[string]int{}
	moved := 0
	batches := map[string][]peering.Meta{}
	for i := range paths {
		meta := genMeta(i)
		owner := ring.Owner(meta.Path)
		share[owner]++
		if joined.Owner(meta.Path) != owner {
			moved++
		}
		if owner == "n02" {
			snapItems++
			if err := w.Item(&meta); err != nil {
				t.Fatal(err)
			}
		}
		if owner == "n01" {
			continue
		}
		b := append(batches[owner], meta)
		if len(b) == 2000 {
			g.Learn(owner, peering.Delta{Group: "www", Upserts: b})
			b = b[:0]
		}
		batches[owner] = b
	}
	for owner, b := range batches {
		g.Learn(owner, peering.Delta{Group: "www", Upserts: b})
	}
	batches = nil
	if err := w.Finish(); err != nil {
		t.Fatal(err)
	}
	heap1 := heapAfterGC()
	nonOwned := paths - share["n01"]
	if g.TOCLen() != nonOwned {
		t.Fatalf("%d entries; want %d", g.TOCLen(), nonOwned)
	}
	perFile := float64(heap1-heap0) / float64(nonOwned)
	counts := make([]int, 0, members)
	for _, n := range share {
		counts = append(counts, n)
	}
	slices.Sort(counts)
	perItem := float64(snapBytes) / float64(snapItems)

	// Changes, as a member publishes them (a real node's encoder).
	creds, err := peering.CredentialsFromSecret(testSecret, "n02")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pn, err := peering.Listen(peering.Config{Name: "n02", PacketConn: pc, TLS: creds, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer pn.Close()
	delta := func(d peering.Delta) int64 {
		before := pn.DeltaBytes()
		pn.Publish(d)
		return pn.DeltaBytes() - before
	}
	one := delta(peering.Delta{Group: "www", Upserts: []peering.Meta{genMeta(1)}})
	del := delta(peering.Delta{Group: "www", Deletes: []string{genMeta(1).Path}})
	var hundred int64
	for i := range 100 {
		hundred += delta(peering.Delta{Group: "www", Upserts: []peering.Meta{genMeta(1000 + i)}})
	}

	t.Logf("simulated %d members, %d paths in %v", members, paths, time.Since(start).Round(time.Millisecond))
	t.Logf("share per member: min %d, median %d, max %d (fair %d)", counts[0], counts[len(counts)/2], counts[len(counts)-1], paths/members)
	t.Logf("n01's tables of its peers' %d files: %.1f MB of heap, %.1f B per non-owned file (table %.1f B/entry; was 439.5 B with maps of items)",
		nonOwned, float64(heap1-heap0)/1e6, perFile, float64(g.TOCBytes())/float64(g.TOCLen()))
	t.Logf("one member's snapshot: %d items, %.1f MB (%.1f B/item); a cluster start sends %d × 49 of them: %.2f GB in all",
		snapItems, float64(snapBytes)/1e6, perItem, members, float64(snapBytes)*members*(members-1)/1e9)
	t.Logf("changes sent to each peer: one file changed %d B, one deleted %d B, 100 files changed %d B; a peer back after 10 s of 100 changes resumes with ~%d B (was: the whole snapshot, %.1f MB)",
		one, del, hundred, hundred+60, float64(snapBytes)/1e6)
	movedBytes := float64(moved) * perItem
	t.Logf("a 51st member joins: %d paths (%.2f%%, fair 1/51 = %.2f%%) change owner, all to it; it sends them to each of 50 members when primed: %.1f MB each, %.2f GB in all; nobody else sends anything (before: every member re-sent its whole table as one delta after the ring change, %.2f GB in all)",
		moved, 100*float64(moved)/float64(paths), 100.0/51, movedBytes/1e6, movedBytes*members/1e9,
		float64(paths)*perItem*members/1e9)
	t.Logf("after the join each member's tables grow by the new member's %d entries (%.1f MB at %.0f B): the previous holders' entries of the moved paths stay (they serve them during the handoff) until those holders' next snapshot",
		moved, float64(moved)*60/1e6, 60.0)
	if perFile > 64 {
		t.Errorf("%.1f B per non-owned file; want at most 64", perFile)
	}
	if moved*51 > paths*3/2 {
		t.Errorf("%d of %d paths moved when one member joined 50; want about 1/51", moved, paths)
	}
	runtime.KeepAlive(g)
}
