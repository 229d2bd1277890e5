package shardcache

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

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
	return &Handler{Root: dir, IndexNames: []string{"index.html"}, store: st, stats: new(tierStats)}
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
