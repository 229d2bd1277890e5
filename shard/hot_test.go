package shard

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func hotItem(path, version string, size int) *Item {
	return withETag(withBody(&Item{Path: path, Size: int64(size)}, make([]byte, size)), `"`+version+`"`)
}

// ask simulates a request on a non-owner: look in the hot cache, and on a
// miss fetch from the owner and offer the copy.
func ask(h *Hot, it *Item) (hit bool) {
	if _, ok := h.Get(it.Path, it.Version()); ok {
		return true
	}
	h.Admit(it)
	return false
}

func TestHotAdmitsFrequentKeys(t *testing.T) {
	h := NewHot(1 << 20)
	it := hotItem("/hot.css", "v1", 1000)
	var hits int
	for range 10 {
		if ask(h, it) {
			hits++
		}
	}
	// The first request is only seen by the doorkeeper, the second admits.
	if hits != 8 {
		t.Fatalf("hits = %d of 10, want 8 (local after the second request)", hits)
	}
	if s := h.Stats(); s.Items != 1 || s.Admits != 1 {
		t.Fatalf("stats = %+v, want 1 item, 1 admission", s)
	}
}

func TestHotOneOffNeverEvictsHot(t *testing.T) {
	// Room for 4 items of 1000 bytes (plus overhead).
	h := NewHot(4 * (1000 + entryOverhead + 16))
	var hot []*Item
	for i := range 4 {
		it := hotItem(fmt.Sprintf("/hot%d", i), "v1", 1000)
		hot = append(hot, it)
		for range 5 {
			ask(h, it)
		}
	}
	if s := h.Stats(); s.Items != 4 {
		t.Fatalf("items = %d, want 4", s.Items)
	}
	// A scan of keys each requested once must not displace any of them.
	for i := range 2000 {
		ask(h, hotItem(fmt.Sprintf("/scan%d", i), "v1", 1000))
	}
	for _, it := range hot {
		if _, ok := h.Get(it.Path, it.Version()); !ok {
			t.Errorf("%s was evicted by a scan of one-off keys", it.Path)
		}
	}
	if s := h.Stats(); s.Evicts != 0 {
		t.Errorf("evictions = %d, want 0", s.Evicts)
	}
}

func TestHotHotterKeyDisplacesColder(t *testing.T) {
	h := NewHot(2 * (1000 + entryOverhead + 16))
	a, b, c := hotItem("/a", "v1", 1000), hotItem("/b", "v1", 1000), hotItem("/c", "v1", 1000)
	for range 3 {
		ask(h, a)
		ask(h, b)
	}
	for range 10 {
		ask(h, c)
	}
	if _, ok := h.Get("/c", "v1"); !ok {
		t.Fatal("a key requested 10 times was not admitted over keys requested 3 times")
	}
	if s := h.Stats(); s.Bytes > s.Budget {
		t.Fatalf("bytes %d over budget %d", s.Bytes, s.Budget)
	}
}

func TestHotVersionsAndDrop(t *testing.T) {
	h := NewHot(1 << 20)
	v1 := hotItem("/x", "v1", 10)
	ask(h, v1)
	ask(h, v1)
	if _, ok := h.Get("/x", "v1"); !ok {
		t.Fatal("v1 not held")
	}
	// A new version: the old copy is unreachable and dropped.
	if _, ok := h.Get("/x", "v2"); ok {
		t.Fatal("v2 found, only v1 was admitted")
	}
	if s := h.Stats(); s.Items != 0 || s.Bytes != 0 {
		t.Fatalf("stale v1 still held: %+v", s)
	}
	v2 := hotItem("/x", "v2", 10)
	h.Admit(v2)
	if _, ok := h.Get("/x", "v2"); !ok {
		t.Fatal("v2 not admitted")
	}
	h.Drop("/x")
	if _, ok := h.Get("/x", "v2"); ok {
		t.Fatal("dropped copy still served")
	}
	for _, p := range []string{"/d/1", "/d/2", "/e"} {
		it := hotItem(p, "v", 1)
		ask(h, it)
		ask(h, it)
	}
	if n := h.DropPrefix("/d/"); n != 2 {
		t.Fatalf("DropPrefix dropped %d, want 2", n)
	}
	if _, ok := h.Get("/e", "v"); !ok {
		t.Fatal("DropPrefix dropped /e")
	}
}

func TestHotZeroBudgetAndOversize(t *testing.T) {
	h := NewHot(0)
	it := hotItem("/a", "v", 1)
	for range 5 {
		if ask(h, it) {
			t.Fatal("a zero budget admitted something")
		}
	}
	h = NewHot(1000)
	big := hotItem("/big", "v", 2000)
	for range 5 {
		ask(h, big)
	}
	if s := h.Stats(); s.Items != 0 {
		t.Fatal("an item larger than the budget was admitted")
	}
}

func TestHotConcurrent(t *testing.T) {
	h := NewHot(64 * 1024)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				it := hotItem(fmt.Sprintf("/k%d", (i*(g+1))%50), "v", 512)
				if got, ok := h.Get(it.Path, it.Version()); ok && got.Path != it.Path {
					t.Errorf("got %s for %s", got.Path, it.Path)
				}
				h.Admit(it)
			}
		}()
	}
	wg.Wait()
	if s := h.Stats(); s.Bytes > s.Budget || s.Bytes < 0 {
		t.Fatalf("bytes %d, budget %d", s.Bytes, s.Budget)
	}
}

func TestSketchAging(t *testing.T) {
	s := newSketch(0)
	for range 14 {
		s.add("/k")
	}
	if e := s.estimate("/k"); e != 14 {
		t.Fatalf("estimate = %d, want 14", e)
	}
	if e := s.estimate("/never"); e != 0 {
		t.Fatalf("estimate of an unseen key = %d, want 0", e)
	}
	// Enough other traffic to trigger a reset: /k's count halves and
	// its doorkeeper bit goes, so it must be seen again to count.
	for i := range s.resetAt - 14 {
		s.add(fmt.Sprintf("/other%d", i))
	}
	if e := s.estimate("/k"); e != 0 {
		t.Fatalf("after a reset estimate = %d, want 0 until seen again", e)
	}
	s.add("/k")
	if e := s.estimate("/k"); e < 2 || e > 8 {
		t.Fatalf("after a reset and one more request, estimate = %d, want the halved count", e)
	}
}

// withETag sets it's ETag (SetETag) and returns it.
func withETag(it *Item, etag string) *Item {
	it.SetETag(etag)
	return it
}

// withModTime sets it's ModTime (SetModTime) and returns it.
func withModTime(it *Item, t time.Time) *Item {
	it.SetModTime(t)
	return it
}

// withBody sets it's Body (SetBody) and returns it; b must be it.Size bytes.
func withBody(it *Item, b []byte) *Item {
	if err := it.SetBody(b); err != nil {
		panic(err)
	}
	return it
}
