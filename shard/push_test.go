package shard

import (
	"bytes"
	"testing"
)

func pushItem(path, version string, n int) *Item {
	return withETag(withBody(&Item{Path: path, Size: int64(n)}, bytes.Repeat([]byte{'x'}, n)), `"`+version+`"`)
}

// TestHotPush: a pushed copy is held without any request, served at its
// version only, replaced by a newer version, bounded by the budget (LRU
// evictions, nothing over half the budget).
func TestHotPush(t *testing.T) {
	h := NewHot(64 << 10)
	if !h.Push(pushItem("/a", "v1", 10<<10)) {
		t.Fatal("push of /a refused")
	}
	if _, ok := h.Get("/a", "v1"); !ok {
		t.Fatal("/a@v1 not served after its push")
	}
	if _, ok := h.Get("/a", "v2"); ok {
		t.Fatal("/a served at v2")
	}
	if !h.Push(pushItem("/a", "v2", 10<<10)) || !h.Contains("/a", "v2") || h.Contains("/a", "v1") {
		t.Fatal("/a@v2 did not replace v1")
	}
	if h.Push(pushItem("/big", "v1", 40<<10)) {
		t.Fatal("a push over half the budget was kept")
	}
	for i, p := range []string{"/b", "/c", "/d", "/e", "/f", "/g"} {
		if !h.Push(pushItem(p, "v1", 10<<10)) {
			t.Fatalf("push %d refused", i)
		}
	}
	st := h.Stats()
	if st.Bytes > st.Budget {
		t.Fatalf("%d bytes held over a budget of %d", st.Bytes, st.Budget)
	}
	if h.Contains("/a", "v2") {
		t.Error("/a, the least recently used, survived pushes past the budget")
	}
	if !h.Contains("/g", "v1") {
		t.Error("the last push is not held")
	}
	if h.Pushes() != 8 {
		t.Errorf("Pushes() = %d; want 8", h.Pushes())
	}
	// A pushed copy counts as requested twice: a candidate seen twice does
	// not displace it.
	h2 := NewHot(24 << 10)
	h2.Push(pushItem("/p", "v1", 10<<10))
	h2.Get("/q", "v1")
	h2.Get("/q", "v1")
	h2.Push(pushItem("/r", "v1", 10<<10))
	if h2.Admit(pushItem("/q", "v1", 10<<10)) && !h2.Contains("/p", "v1") && !h2.Contains("/r", "v1") {
		t.Error("a candidate requested twice evicted both pushed copies")
	}
}
