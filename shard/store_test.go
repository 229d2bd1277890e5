package shard

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// writeTree creates files (slash paths relative to dir) with their contents.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for p, body := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// newStore makes a Store for cfg (Root: a temp tree of files, unless set)
// that is closed when the test ends.
func newStore(t testing.TB, cfg Config, files map[string]string) *Store {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = t.TempDir()
	}
	writeTree(t, cfg.Root, files)
	if cfg.Logger == nil {
		if tt, ok := t.(*testing.T); ok {
			cfg.Logger = zaptest.NewLogger(tt, zaptest.Level(zap.WarnLevel))
		}
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// startReady starts s and waits until it is primed.
func startReady(t testing.TB, s *Store) {
	t.Helper()
	s.Start()
	waitFor(t, 5*time.Second, "store ready", s.Ready)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// body returns the bytes of it, from memory or through Open.
func body(t testing.TB, s *Store, it *Item, enc string) []byte {
	t.Helper()
	f, err := s.Open(it, enc)
	if err != nil {
		t.Fatalf("Open(%s, %q): %v", it.Path, enc, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mustLookup looks p up and expects an item with want as its bytes.
func mustLookup(t testing.TB, s *Store, p, want string) *Item {
	t.Helper()
	it, isDir, err := s.Lookup(p)
	if err != nil || isDir || it == nil {
		t.Fatalf("Lookup(%s) = %v, %v, %v; want an item", p, it, isDir, err)
	}
	if got := body(t, s, it, ""); string(got) != want {
		t.Fatalf("Lookup(%s) bytes = %q; want %q", p, got, want)
	}
	if it.Size != int64(len(want)) {
		t.Fatalf("Lookup(%s).Size = %d; want %d", p, it.Size, len(want))
	}
	if it.ETag() != etagOf(want) {
		t.Fatalf("Lookup(%s).ETag = %s; want %s", p, it.ETag(), etagOf(want))
	}
	return it
}

func mustNotFound(t testing.TB, s *Store, p string) {
	t.Helper()
	it, isDir, err := s.Lookup(p)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup(%s) = %v, %v, %v; want ErrNotFound", p, it, isDir, err)
	}
}

func mustDir(t testing.TB, s *Store, p string) {
	t.Helper()
	ready, before := s.Ready(), s.Stats().OnDemand
	it, isDir, err := s.Lookup(p)
	if err != nil || !isDir || it != nil {
		t.Fatalf("Lookup(%s) = %v, %v, %v; want a directory", p, it, isDir, err)
	}
	// A directory the store knows is answered from its records.
	if d := s.Stats().OnDemand - before; ready && d != 0 && p != "/" {
		s.mu.RLock()
		_, known := s.dirs[p]
		s.mu.RUnlock()
		if known {
			t.Errorf("Lookup(%s), a directory the store records, went to storage (%d on-demand lookups)", p, d)
		}
	}
}

// etagOf is the ETag the store must give these bytes.
func etagOf(b string) string {
	sum := sha256.Sum256([]byte(b))
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}

var sampleTree = map[string]string{
	"index.html":        "<!doctype html><title>hi</title>",
	"css/site.css":      "body{color:red}",
	"js/app.js":         "console.log(1)",
	"img/dot.png":       "\x89PNG\r\n\x1a\n....",
	"noext":             "<html><body>sniffed</body></html>",
	"blob":              "\x00\x01\x02\x03binary",
	"empty.txt":         "",
	".well-known/x.txt": "dotfile dir",
	".hidden":           "dotfile",
	"a/b/c/deep.txt":    "deep",
}

// bothOpeners runs f with the default way of opening files (openat2 on
// Linux) and with os.Root only.
func bothOpeners(t *testing.T, f func(t *testing.T, setup func(*Store))) {
	t.Run("default", func(t *testing.T) { f(t, func(*Store) {}) })
	t.Run("os.Root", func(t *testing.T) { f(t, useOSRoot) })
}

func TestPrime(t *testing.T) { bothOpeners(t, testPrime) }

func testPrime(t *testing.T, setup func(*Store)) {
	s := newStore(t, Config{}, sampleTree)
	setup(s)
	startReady(t, s)

	for p, want := range sampleTree {
		it := mustLookup(t, s, "/"+p, want)
		if !it.Resident() {
			t.Errorf("%s not resident with no budget", p)
		}
		if it.Version() != strings.Trim(it.ETag(), `"`) || len(it.Version()) != 32 {
			t.Errorf("%s: Version %q does not match ETag %s", p, it.Version(), it.ETag())
		}
		if it.Path != "/"+p {
			t.Errorf("Path = %q; want /%s", it.Path, p)
		}
	}
	types := map[string]string{
		"/index.html":   "text/html; charset=utf-8",
		"/css/site.css": "text/css; charset=utf-8",
		"/img/dot.png":  "image/png",
		"/noext":        "text/html; charset=utf-8",
		"/blob":         "application/octet-stream",
	}
	for p, want := range types {
		it, _, _ := s.Lookup(p)
		if it.ContentType() != want {
			t.Errorf("ContentType(%s) = %q; want %q", p, it.ContentType(), want)
		}
	}
	for _, d := range []string{"/", "/css", "/a", "/a/b", "/a/b/c", "/.well-known"} {
		mustDir(t, s, d)
	}
	for _, p := range []string{"/nope", "/css/nope.css", "/index.html/x", "/a/b/c/deep.txt/"} {
		mustNotFound(t, s, p)
	}

	st := s.Stats()
	if st.Items != int64(len(sampleTree)) || st.PrimedItems != int64(len(sampleTree)) {
		t.Errorf("Stats: %+v; want %d items", st, len(sampleTree))
	}
	var total int64
	for _, b := range sampleTree {
		total += int64(len(b))
	}
	if st.PrimedBytes != total || st.ResidentBytes != total {
		t.Errorf("Stats: %+v; want %d bytes primed and resident", st, total)
	}
	if st.OnDemand != 0 {
		t.Errorf("Stats.OnDemand = %d after priming; want 0", st.OnDemand)
	}
	p := s.Progress()
	if !p.Ready || p.Percent != 100 || p.Items != int64(len(sampleTree)) || p.TotalBytes != total {
		t.Errorf("Progress = %+v", p)
	}
	n := 0
	s.Each(func(*Item) bool { n++; return true })
	if n != len(sampleTree) {
		t.Errorf("Each saw %d items; want %d", n, len(sampleTree))
	}
}

func TestETagStable(t *testing.T) {
	a := newStore(t, Config{}, map[string]string{"x": "same bytes", "y": "other"})
	b := newStore(t, Config{}, map[string]string{"x": "same bytes", "y": "different"})
	startReady(t, a)
	startReady(t, b)
	ax, _, _ := a.Lookup("/x")
	bx, _, _ := b.Lookup("/x")
	ay, _, _ := a.Lookup("/y")
	by, _, _ := b.Lookup("/y")
	if ax.ETag() != bx.ETag() {
		t.Errorf("same bytes, different ETags: %s %s", ax.ETag(), bx.ETag())
	}
	if ay.ETag() == by.ETag() {
		t.Errorf("different bytes, same ETag %s", ay.ETag())
	}
	// And a transient item (not primed) agrees with a primed one.
	c := newStore(t, Config{}, map[string]string{"x": "same bytes"})
	cx, _, err := c.Lookup("/x")
	if err != nil || cx.ETag() != ax.ETag() {
		t.Errorf("transient ETag %v, %v; want %s", cx, err, ax.ETag())
	}
}

var variantTree = map[string]string{
	"x.css":         "plain css",
	"x.css.br":      "brotli bytes",
	"x.css.gz":      "gzip bytes",
	"y.js":          "plain js",
	"y.js.zst":      "zstd bytes, not configured",
	"orphan.txt.gz": "no base file",
}

func checkVariants(t *testing.T, s *Store) {
	t.Helper()
	it := mustLookup(t, s, "/x.css", "plain css")
	if len(it.Variants()) != 2 || it.Variants()[0].Encoding != "br" || it.Variants()[1].Encoding != "gzip" {
		t.Fatalf("variants of /x.css = %+v; want br, gzip", it.Variants())
	}
	for _, v := range it.Variants() {
		want := map[string]string{"br": "brotli bytes", "gzip": "gzip bytes"}[v.Encoding]
		if got := body(t, s, it, v.Encoding); string(got) != want {
			t.Errorf("%s variant = %q; want %q", v.Encoding, got, want)
		}
		if v.ETag != etagOf(want) || v.Size != int64(len(want)) {
			t.Errorf("%s variant: ETag %s size %d", v.Encoding, v.ETag, v.Size)
		}
	}
	if _, err := s.Open(it, "zstd"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open(zstd) = %v; want ErrNotFound", err)
	}
	mustNotFound(t, s, "/x.css.gz")
	mustNotFound(t, s, "/x.css.br")
	mustLookup(t, s, "/y.js.zst", "zstd bytes, not configured")
	if y := mustLookup(t, s, "/y.js", "plain js"); len(y.Variants()) != 0 {
		t.Errorf("/y.js variants = %+v; want none (zstd not configured)", y.Variants())
	}
	mustLookup(t, s, "/orphan.txt.gz", "no base file")
}

func TestVariants(t *testing.T) {
	cfg := Config{Precompressed: []string{"br", "gzip"}}
	s := newStore(t, cfg, variantTree)
	t.Run("from storage", func(t *testing.T) { checkVariants(t, s) })
	startReady(t, s)
	t.Run("primed", func(t *testing.T) { checkVariants(t, s) })
	n := 0
	s.Each(func(it *Item) bool {
		n++
		if strings.HasSuffix(it.Path, ".css.gz") || strings.HasSuffix(it.Path, ".css.br") {
			t.Errorf("Each yields variant %s", it.Path)
		}
		return true
	})
	if n != 4 {
		t.Errorf("Each saw %d items; want 4", n)
	}
}

func TestBudget(t *testing.T) {
	files := map[string]string{}
	sizes := map[string]int{}
	for i := range 10 {
		files[fmt.Sprintf("small/%d", i)] = strings.Repeat("s", 1000+i)
	}
	for i := range 5 {
		files[fmt.Sprintf("mid/%d", i)] = strings.Repeat("m", 10_000+i)
	}
	for i := range 3 {
		files[fmt.Sprintf("big/%d", i)] = strings.Repeat("b", 100_000+i)
	}
	var total int64
	for p, b := range files {
		sizes[p] = len(b)
		total += int64(len(b))
	}
	const budget = 40_000
	s := newStore(t, Config{Memory: budget, Workers: 3}, files)
	startReady(t, s)

	var maxResident, minOther int64 = 0, 1 << 62
	for p, want := range files {
		it := mustLookup(t, s, "/"+p, want)
		if it.Resident() {
			maxResident = max(maxResident, it.Size)
		} else {
			minOther = min(minOther, it.Size)
		}
		if strings.HasPrefix(p, "small/") && !it.Resident() {
			t.Errorf("%s (small) not resident", p)
		}
		if strings.HasPrefix(p, "big/") && it.Resident() {
			t.Errorf("%s (big) resident", p)
		}
	}
	if maxResident > minOther {
		t.Errorf("a %d-byte item is resident but a %d-byte one is not: want smallest first", maxResident, minOther)
	}
	st := s.Stats()
	if st.ResidentBytes > budget || st.ResidentBytes == 0 {
		t.Errorf("ResidentBytes = %d; want in (0, %d]", st.ResidentBytes, budget)
	}
	if st.PrimedBytes != total || st.Items != int64(len(files)) {
		t.Errorf("Stats = %+v; want all %d bytes hashed", st, total)
	}
}

func TestLookupBeforeStartAndDuringPriming(t *testing.T) {
	s := newStore(t, Config{Workers: 1}, sampleTree)
	check := func(t *testing.T) {
		for p, want := range sampleTree {
			mustLookup(t, s, "/"+p, want)
		}
		mustDir(t, s, "/a/b")
		mustDir(t, s, "/")
		mustNotFound(t, s, "/nope")
		mustNotFound(t, s, "/a/nope/x")
	}
	t.Run("before Start", check)
	if s.Ready() {
		t.Fatal("ready before Start")
	}

	// Hold priming after its first file.
	gate := make(chan struct{})
	var once sync.Once
	reached := make(chan struct{})
	beforePrimeRead = func(string) {
		once.Do(func() { close(reached) })
		<-gate
	}
	t.Cleanup(func() { beforePrimeRead = nil })
	s.Start()
	<-reached
	t.Run("during priming", check)
	if s.Ready() {
		t.Fatal("ready while priming is held")
	}
	if st := s.Stats(); st.OnDemand == 0 {
		t.Errorf("Stats.OnDemand = 0; want lookups answered from storage")
	}
	close(gate)
	waitFor(t, 5*time.Second, "ready", s.Ready)
	t.Run("primed", check)
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	writeTree(t, dir, map[string]string{"f": "x"})
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "root is required"},
		{Config{Root: filepath.Join(dir, "missing")}, "missing"},
		{Config{Root: file}, "not a directory"},
		{Config{Root: dir, Memory: -1}, "memory -1"},
		{Config{Root: dir, Workers: -2}, "workers -2"},
		{Config{Root: dir, Rescan: -time.Second}, "rescan"},
		{Config{Root: dir, Precompressed: []string{"deflate"}}, `"deflate"`},
		{Config{Root: dir, Precompressed: []string{"br", "br"}}, "twice"},
	}
	for _, c := range cases {
		_, err := New(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v; want an error containing %q", c.cfg, err, c.want)
		}
	}
}

func TestOpenChanged(t *testing.T) {
	s := newStore(t, Config{Memory: 10}, map[string]string{"big.bin": strings.Repeat("x", 100)})
	startReady(t, s)
	it := mustLookup(t, s, "/big.bin", strings.Repeat("x", 100))
	if it.Resident() {
		t.Fatal("resident over budget")
	}
	p := filepath.Join(s.Root(), "big.bin")
	if err := os.WriteFile(p, []byte(strings.Repeat("y", 101)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(it, ""); !errors.Is(err, ErrChanged) {
		t.Fatalf("Open of a changed file = %v; want ErrChanged", err)
	}
	os.Remove(p)
	if _, err := s.Open(it, ""); !errors.Is(err, ErrChanged) {
		t.Fatalf("Open of a removed file = %v; want ErrChanged", err)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	for range 3 {
		s := newStore(t, Config{Precompressed: []string{"gzip"}}, sampleTree)
		startReady(t, s)
		mustLookup(t, s, "/index.html", sampleTree["index.html"])
		writeTree(t, s.Root(), map[string]string{"new.txt": "new"})
		s.Start() // idempotent
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if !s.Ready() {
			t.Error("Ready went back to false after Close")
		}
		if _, _, err := s.Lookup("/index.html"); !errors.Is(err, ErrClosed) {
			t.Errorf("Lookup after Close = %v; want ErrClosed", err)
		}
		if st := s.Stats(); st.ResidentBytes != 0 || st.Items != 0 {
			t.Errorf("Stats after Close = %+v; want memory dropped", st)
		}
		s.Start() // no effect after Close
	}
	waitFor(t, 2*time.Second, fmt.Sprintf("goroutines back to %d", base), func() bool {
		return runtime.NumGoroutine() <= base
	})
}

func TestReadFileChanging(t *testing.T) {
	s := newStore(t, Config{}, map[string]string{"f": "0123456789"})
	for _, hold := range []bool{true, false} {
		_, err := s.readFile(s.ctx, "/f", func(int64) bool {
			// The file grows after the size was taken, before it is read.
			f, err := os.OpenFile(filepath.Join(s.Root(), "f"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("more")
			f.Close()
			return hold
		})
		if !errors.Is(err, errChanging) {
			t.Errorf("hold=%v: readFile of a growing file = %v; want errChanging", hold, err)
		}
	}
}

func TestOpenFromStorage(t *testing.T) {
	s := newStore(t, Config{Memory: 1}, map[string]string{"a": "abc"})
	startReady(t, s)
	it, _, _ := s.Lookup("/a")
	f, err := s.Open(it, "")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := f.(*os.File); !ok {
		t.Errorf("Open of a non-resident body returned %T; want *os.File (sendfile)", f)
	}
}

func TestCloseWhilePriming(t *testing.T) {
	base := runtime.NumGoroutine()
	files := make(map[string]string)
	for i := range 200 {
		files[fmt.Sprintf("d%d/f%d", i%7, i)] = strings.Repeat("x", i)
	}
	gate := make(chan struct{})
	reached := make(chan struct{}, 1)
	beforePrimeRead = func(string) {
		select {
		case reached <- struct{}{}:
		default:
		}
		<-gate
	}
	t.Cleanup(func() { beforePrimeRead = nil })
	s := newStore(t, Config{Workers: 2}, files)
	s.Start()
	<-reached
	time.AfterFunc(20*time.Millisecond, func() { close(gate) })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.Ready() {
		t.Error("ready after Close in the middle of priming")
	}
	if _, _, err := s.Lookup("/d1/f1"); !errors.Is(err, ErrClosed) {
		t.Errorf("Lookup after Close = %v; want ErrClosed", err)
	}
	waitFor(t, 2*time.Second, fmt.Sprintf("goroutines back to %d", base), func() bool {
		return runtime.NumGoroutine() <= base
	})
}

func TestBudgetWarning(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	s := newStore(t, Config{Memory: 100, Logger: zap.New(core)}, map[string]string{
		"a": strings.Repeat("a", 60), "b": strings.Repeat("b", 30), "c": strings.Repeat("c", 50),
	})
	startReady(t, s)
	warns := logs.FilterLevelExact(zap.WarnLevel).All()
	if len(warns) != 1 {
		t.Fatalf("%d warnings; want 1: %v", len(warns), warns)
	}
	got := warns[0].ContextMap()
	want := map[string]int64{"budget": 100, "total_bytes": 140, "held_bytes": 80, "held_items": 2, "not_held_items": 1}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("warning field %s = %v; want %d", k, got[k], v)
		}
	}
	if n := len(logs.FilterMessage("primed").All()); n != 1 {
		t.Errorf("%d 'primed' logs; want 1", n)
	}
}

func TestOpenResident(t *testing.T) {
	s := newStore(t, Config{}, map[string]string{"a": "abc"})
	startReady(t, s)
	it, _, _ := s.Lookup("/a")
	f, err := s.Open(it, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(1, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	if !bytes.Equal(b, []byte("bc")) {
		t.Errorf("read %q after seek", b)
	}
}
