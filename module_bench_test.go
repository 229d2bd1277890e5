package shardcache

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// discard is a ResponseWriter that keeps nothing, so a benchmark measures
// the handler's own work.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

func newBenchHandler(tb testing.TB, size int) *Handler {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.css"), make([]byte, size), 0o644); err != nil {
		tb.Fatal(err)
	}
	st, err := shard.New(shard.Config{Root: dir})
	if err != nil {
		tb.Fatal(err)
	}
	st.Start()
	tb.Cleanup(func() { st.Close() })
	deadline := time.Now().Add(5 * time.Second)
	for !st.Ready() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	return &Handler{Root: dir, IndexNames: []string{"index.html"}, store: st, stats: new(cluster.Stats), life: new(lifetime)}
}

// BenchmarkLocalHit is the hot path: a plain GET of a file held in memory.
// The handler's own allocations are what -benchmem reports (the writer
// and request are reused).
func BenchmarkLocalHit(b *testing.B) {
	h := newBenchHandler(b, 1024)
	r := httptest.NewRequest(http.MethodGet, "/a.css", nil)
	w := &discard{h: make(http.Header, 8)}
	var next caddyhttp.Handler = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		if err := h.ServeHTTP(w, r, next); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLocalHitHeaders(t *testing.T) {
	h := newBenchHandler(t, 1024)
	r := httptest.NewRequest(http.MethodGet, "/a.css", nil)
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, nil); err != nil {
		t.Fatal(err)
	}
	res := w.Result()
	if res.StatusCode != 200 || w.Body.Len() != 1024 {
		t.Fatalf("status %d, %d bytes", res.StatusCode, w.Body.Len())
	}
	for _, k := range []string{"Etag", "Content-Type", "Content-Length", "Last-Modified", "Accept-Ranges", "Vary"} {
		if res.Header.Get(k) == "" {
			t.Errorf("missing %s", k)
		}
	}
}

// newHotHandler returns a cluster-mode handler of node n1 in a two-node
// ring, whose hot cache holds a copy of /remote.css, a file n2 owns.
func newHotHandler(tb testing.TB, size int, modTime ...time.Time) (*Handler, string) {
	tb.Helper()
	h := newBenchHandler(tb, 16)
	m := cluster.NewMembership("n1", false, []peering.Peer{{Name: "n2", Addr: "127.0.0.1:1"}}, 1)
	c := cluster.New(cluster.Config{Name: "n1"}, m)
	c.Commit(cluster.Commit{Members: m, Groups: []cluster.GroupConfig{{Name: "site", Store: h.store, Hot: 64 << 20}}})
	g := c.Group("site")
	// A path the ring gives to n2.
	p := ""
	for i := 0; p == ""; i++ {
		if q := fmt.Sprintf("/remote%d.css", i); m.Owner(q) == "n2" {
			p = q
		}
	}
	it := withETag(withType(&shard.Item{Path: p, Size: int64(size)}, "text/css"), `"v1"`)
	it.SetModTime(time.Now())
	if len(modTime) > 0 {
		it.SetModTime(modTime[0])
	}
	g.Learn("n2", peering.Delta{Group: "site", Upserts: []peering.Meta{{Path: it.Path, Size: it.Size,
		ContentType: it.ContentType(), ETag: it.ETag(), Version: it.Version(), ModTime: it.ModTime()}}})
	hot := g.Hot()
	hot.Get(p, "v1") // two requests seen: admissible
	hot.Get(p, "v1")
	hc := withETag(&shard.Item{Path: p, Size: int64(size)}, `"v1"`)
	if err := hc.SetBody(make([]byte, size)); err != nil {
		tb.Fatal(err)
	}
	if !hot.Admit(hc) {
		tb.Fatal("not admitted")
	}
	h.grp, h.stats = g, g.Stats()
	return h, p
}

// BenchmarkHotHit: a plain GET of another node's file held in the hot
// cache. It should cost about what a local hit costs.
func BenchmarkHotHit(b *testing.B) {
	h, p := newHotHandler(b, 1024)
	r := httptest.NewRequest(http.MethodGet, p, nil)
	w := &discard{h: make(http.Header, 8)}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		if err := h.ServeHTTP(w, r, nil); err != nil {
			b.Fatal(err)
		}
	}
	if s := h.grp.Stats().Snapshot().Tiers["hot"].Requests; s == 0 {
		b.Fatal("no hot hits counted")
	}
}

func TestHotHit(t *testing.T) {
	h, p := newHotHandler(t, 1024)
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, p, nil), nil); err != nil {
		t.Fatal(err)
	}
	if w.Code != 200 || w.Body.Len() != 1024 || w.Header().Get("Etag") != `"v1"` {
		t.Fatalf("status %d, %d bytes, etag %q", w.Code, w.Body.Len(), w.Header().Get("Etag"))
	}
	if tiers := h.grp.Stats().Snapshot().Tiers; tiers["hot"].Requests != 1 || tiers["peer"].Requests != 0 {
		t.Fatalf("hot %d, peer %d: want the hot tier", tiers["hot"].Requests, tiers["peer"].Requests)
	}
}

// A local hit allocates nothing in the handler's own code (the header value
// slices are cut from shared arrays: one allocation per valsPerSlab hits,
// which AllocsPerRun's integer average reports as 0).
func TestLocalHitAllocs(t *testing.T) {
	h := newBenchHandler(t, 1024)
	r := httptest.NewRequest(http.MethodGet, "/a.css", nil)
	w := &discard{h: make(http.Header, 8)}
	var next caddyhttp.Handler = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	allocs := testing.AllocsPerRun(10*valsPerSlab, func() {
		clear(w.h)
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a local hit allocates %v times; want 0", allocs)
	}
}

// Each response's header values are its own: a later handler editing them
// in place (as Caddy's header directive's replace does) changes neither the
// item's memo nor another response.
func TestHeaderValuesNotShared(t *testing.T) {
	h := newBenchHandler(t, 1024)
	r := httptest.NewRequest(http.MethodGet, "/a.css", nil)
	var hdrs []http.Header
	for range 3 * valsPerSlab {
		w := &discard{h: make(http.Header)}
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Fatal(err)
		}
		hdrs = append(hdrs, w.h)
	}
	want := hdrs[0].Clone()
	for k, vs := range hdrs[1] {
		for i := range vs {
			vs[i] = "edited"
		}
		hdrs[1][k] = append(vs, "appended") // must not spill into a neighbour
	}
	for i, hd := range hdrs {
		if i == 1 {
			continue
		}
		for k, v := range want {
			if got := hd[k]; len(got) != len(v) || got[0] != v[0] {
				t.Fatalf("response %d: %s = %q after another response's values were edited; want %q", i, k, got, v)
			}
		}
	}
	w := &discard{h: make(http.Header)}
	if err := h.ServeHTTP(w, r, nil); err != nil {
		t.Fatal(err)
	}
	if got := w.h.Get("Etag"); got != want.Get("Etag") {
		t.Fatalf("a new response's ETag is %q; want %q", got, want.Get("Etag"))
	}
}

// A config cleaned up while one of its requests is still being served (a
// reload: Caddy does not wait for the old servers) keeps its store open
// until that request has finished; then the store is closed.
func TestStoreOutlivesCleanupUntilRequestsEnd(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.css"), []byte("body{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	key := "test|" + dir
	val, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		st, err := shard.New(shard.Config{Root: dir})
		return storeRef{st, new(cluster.Stats)}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	st := val.(storeRef).Store
	l := &lifetime{key: key, logger: zap.NewNop()}

	l.enter() // a request under way
	l.cleanup()
	if _, _, err := st.Lookup("/a.css"); err != nil {
		t.Fatalf("Lookup during the request, after cleanup: %v; want the item", err)
	}
	l.leave()
	if _, _, err := st.Lookup("/a.css"); !errors.Is(err, shard.ErrClosed) {
		t.Fatalf("Lookup after the last request: %v; want ErrClosed", err)
	}

	// With no request under way, cleanup releases at once.
	val, _, _ = stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		st, err := shard.New(shard.Config{Root: dir})
		return storeRef{st, new(cluster.Stats)}, err
	})
	(&lifetime{key: key, logger: zap.NewNop()}).cleanup()
	if _, _, err := val.(storeRef).Lookup("/a.css"); !errors.Is(err, shard.ErrClosed) {
		t.Fatalf("Lookup after cleanup with no request: %v; want ErrClosed", err)
	}
}
