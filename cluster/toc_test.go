package cluster

import (
	"errors"
	"fmt"
	weakrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// The table against a map, through inserts, updates, deletes, growth,
// shrinking and snapshots that sweep what they do not list.
func TestTOCTableAgainstAMap(t *testing.T) {
	rng := weakrand.New(weakrand.NewPCG(1, 2))
	var tab tocTable
	type kf struct {
		key uint64
		fp  uint32
	}
	model := map[kf]int64{}
	keys := make([]kf, 0, 5000)
	for range 5000 {
		// Few distinct keys, so that equal keys with other fingerprints
		// and long probe runs are common.
		keys = append(keys, kf{1 + rng.Uint64N(3000)*0x9e3779b97f4a7c15, rng.Uint32N(4)})
	}
	put := func(k kf, v int64) {
		if i := tab.find(k.key, k.fp); i >= 0 {
			tab.slots[i].size = v
			tab.slots[i].flags = tab.slots[i].flags&^slotGen | tab.gen
		} else {
			tab.insert(tocSlot{key: k.key, fp: k.fp, size: v, flags: tab.gen})
		}
		model[k] = v
	}
	check := func(when string) {
		t.Helper()
		if tab.n != len(model) {
			t.Fatalf("%s: %d entries, model %d", when, tab.n, len(model))
		}
		for _, k := range keys {
			i := tab.find(k.key, k.fp)
			v, ok := model[k]
			if (i >= 0) != ok || ok && tab.slots[i].size != v {
				t.Fatalf("%s: find %v = %d, model %v %v", when, k, i, v, ok)
			}
		}
		if tab.n > 0 && 8*tab.n > growAt*len(tab.slots) {
			t.Fatalf("%s: load %d/%d over 7/8", when, tab.n, len(tab.slots))
		}
	}
	// A snapshot that never ends (its connection died), then one that
	// does: only what the last one listed stays.
	put(keys[0], 1)
	tab.begin(10)
	put(keys[1], 2)
	tab.begin(10)
	put(keys[2], 3)
	tab.end()
	model = map[kf]int64{keys[2]: 3}
	check("after an aborted snapshot")
	for round := range 20 {
		for range 2000 {
			k := keys[rng.IntN(len(keys))]
			if rng.IntN(3) == 0 {
				if i := tab.find(k.key, k.fp); i >= 0 {
					tab.removeAt(i)
				}
				delete(model, k)
			} else {
				put(k, rng.Int64())
			}
		}
		check(fmt.Sprint("round ", round))
		// A snapshot listing a random half of the keys.
		tab.begin(len(model) / 2)
		listed := map[kf]int64{}
		for _, k := range keys {
			if rng.IntN(2) == 0 {
				v := rng.Int64()
				put(k, v)
				listed[k] = v
			}
		}
		tab.end()
		model = listed
		check(fmt.Sprint("snapshot ", round))
	}
}

// A non-owned file costs at most 64 bytes of table, and the table is
// pointer-free: one slot is 48 bytes.
func TestTOCBytesPerEntry(t *testing.T) {
	m := NewMembership("n1", false, []peering.Peer{{Name: "n2", Addr: "x"}}, 1)
	c := New(Config{Name: "n1"}, m)
	g := c.Group("www")
	for n := 0; n < 40_000; {
		var ms []peering.Meta
		for ; len(ms) < 1000; n++ {
			if meta := genMeta(n); m.Owner(meta.Path) == "n2" {
				ms = append(ms, meta)
			}
		}
		g.Learn("n2", peering.Delta{Group: "www", Upserts: ms})
		if per := float64(g.TOCBytes()) / float64(g.TOCLen()); per > 64 {
			t.Fatalf("%d entries: %.1f bytes each", g.TOCLen(), per)
		}
	}
	t.Logf("%d entries: %.1f bytes each", g.TOCLen(), float64(g.TOCBytes())/float64(g.TOCLen()))
}

// genMeta makes the metadata of the i-th file of a generated site: the
// measurements' and simulation's files (nothing on disk).
func genMeta(i int) peering.Meta {
	p := fmt.Sprintf("/dir%05d/file%07d.html", i/100, i)
	v := fmt.Sprintf("%016x%016x", uint64(i)*0x9e3779b97f4a7c15, uint64(i))
	return peering.Meta{Path: p, Version: v, ETag: `"` + v + `"`, Size: int64(i % 4096),
		ContentType: genTypes[i%len(genTypes)], ModTime: time.Unix(1700000000, int64(i))}
}

var genTypes = []string{"text/html; charset=utf-8", "image/png", "text/css; charset=utf-8", "text/javascript; charset=utf-8"}

// Paths whose key and fingerprint collide (forced here) are detected when
// the snapshot lists both: each is then answered by asking its owner with
// the full path, and a third path on the same slot that does not exist is
// a 404, not another file's headers. Paths whose keys collide with other
// fingerprints are told apart without asking. Variants' details come from
// the owner too, once.
func TestTOCCollisionsAndVariantsAskTheOwner(t *testing.T) {
	nodes := newNodes(t, "n1", "n2")
	n1 := nodes[0]
	m := n1.m
	var theirs []string
	for i := 0; len(theirs) < 5; i++ {
		if p := fmt.Sprintf("/c%d.txt", i); m.Owner(p) == "n2" {
			theirs = append(theirs, p)
		}
	}
	same, ghost, near := theirs[:2], theirs[2], theirs[3:5]
	g := n1.c.Group("www")
	real := newPathHash()
	g.hash = func(p string) (uint64, uint32) {
		switch p {
		case same[0], same[1], ghost:
			return 42, 7
		case near[0]:
			return 43, 1
		case near[1]:
			return 43, 2
		}
		return real(p)
	}
	root := t.TempDir()
	for _, p := range append(append([]string{}, same...), near...) {
		if err := os.WriteFile(filepath.Join(root, p), []byte(strings.Repeat(p, 10)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gz := filepath.Join(root, near[0]+".gz")
	if err := os.WriteFile(gz, []byte("not really gzip"), 0o644); err != nil {
		t.Fatal(err)
	}
	paths := append(append([]string{}, same...), near...)
	startTrusting(t, nodes, "www", root, append(paths, near[0]+".gz"))
	before := g.metaFetches.Load()
	for _, p := range paths {
		res, err := g.Resolve(n1.store, p)
		if err != nil || res.Remote == nil {
			t.Fatalf("resolve %s: %+v %v", p, res, err)
		}
		want := nodes[1].store.Published(p)
		if want == nil || res.Item.Version() != want.Version() || res.Item.Size != want.Size || res.Item.Path != p {
			t.Errorf("%s resolved to %+v; want version %s", p, res.Item, want.Version())
		}
	}
	if got := g.metaFetches.Load() - before; got != 3 {
		t.Errorf("%d metadata requests; want 3 (the two collided paths, the one with a variant)", got)
	}
	if _, err := g.Resolve(n1.store, ghost); !errors.Is(err, shard.ErrNotFound) {
		t.Errorf("a path sharing the collided slot: %v; want not found", err)
	}
	checkAll(t, nodes, paths) // the bytes too
	// near[0] has a gzip variant: the slot says so, the owner says what
	// it is; the cache answers the next lookups.
	before = g.metaFetches.Load()
	g.items.clear()
	for range 3 {
		res, err := g.Resolve(n1.store, near[0])
		if err != nil || len(res.Item.Variants()) != 1 || res.Item.Variants()[0].Encoding != "gzip" ||
			res.Item.Variants()[0].ETag != nodes[1].store.Published(near[0]).Variants()[0].ETag {
			t.Fatalf("variant of %s: %+v %v", near[0], res.Item, err)
		}
	}
	if got := g.metaFetches.Load() - before; got != 1 {
		t.Errorf("%d metadata requests for the variants; want 1", got)
	}
}

// A node that loses its connection to a peer for a while and comes back
// gets only the peer's changes since (its table stays), and serves them:
// new versions, and a 404 for the file deleted meanwhile.
func TestReconnectResumesTheTable(t *testing.T) {
	root, paths := site(t, 200)
	nodes := newNodes(t, "n1", "n2")
	n1, n2 := nodes[0], nodes[1]
	startTrusting(t, nodes, "www", root, paths)
	full := n2.c.Node().TOCBytesSent()
	var theirs []string
	for _, p := range paths {
		if n1.m.Owner(p) == "n2" && len(theirs) < 4 {
			theirs = append(theirs, p)
		}
	}
	n1.c.Node().SetPeers(nil)
	waitFor(t, "n2 down for n1", func() bool { up, _ := n1.c.peerUp("n2"); return !up })
	changed, gone := theirs[:3], theirs[3]
	for _, p := range changed {
		if err := os.WriteFile(filepath.Join(n2.root, p), []byte("changed "+p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(n2.root, gone)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n2 publishing its changes", func() bool {
		for _, p := range changed {
			if it := n2.store.Published(p); it == nil || it.Size != int64(len("changed "+p)) {
				return false
			}
		}
		_, seq := n2.c.Node().LogPos("www")
		return n2.store.Published(gone) == nil && seq >= 4
	})
	before := n2.c.Node().TOCBytesSent()
	n1.c.Node().SetPeers(n1.m.Peers())
	waitFor(t, "trust again", func() bool { return n1.trustsAll(nodes, "www") })
	resumed := n2.c.Node().TOCBytesSent() - before
	if st := n2.c.Status(); st.TOCBytesSent != before+resumed {
		t.Errorf("status toc_bytes_sent %d; want the node's %d", st.TOCBytesSent, before+resumed)
	}
	t.Logf("first sync %d bytes; reconnect %d bytes", full, resumed)
	if resumed*4 > full {
		t.Errorf("reconnect sent %d bytes of table of content (first sync %d): not a resume", resumed, full)
	}
	for _, p := range changed {
		got, _, err := n1.get(p)
		if err != nil || string(got) != "changed "+p {
			t.Errorf("%s after the reconnect: %q %v", p, got, err)
		}
	}
	if _, _, err := n1.get(gone); !errors.Is(err, shard.ErrNotFound) {
		t.Errorf("%s, deleted while away: %v; want not found", gone, err)
	}
}
