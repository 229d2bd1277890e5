package shard

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// changeLog records OnChange calls.
type changeLog struct {
	mu  sync.Mutex
	got map[string][]*Item
}

func (c *changeLog) record(p string, it *Item) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.got == nil {
		c.got = make(map[string][]*Item)
	}
	c.got[p] = append(c.got[p], it)
}

// last returns the last item reported for p and whether there was a report.
func (c *changeLog) last(p string) (*Item, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.got[p]
	if len(l) == 0 {
		return nil, false
	}
	return l[len(l)-1], true
}

// reflect waits (at most 2 s, the promise) until p has the bytes want, or is
// gone (want == "-"), in Lookup and in OnChange.
func reflect(t *testing.T, s *Store, log *changeLog, p, want string) {
	t.Helper()
	start := time.Now()
	waitFor(t, 2*time.Second, p+" updated", func() bool {
		it, _, err := s.Lookup(p)
		if want == "-" {
			return errors.Is(err, ErrNotFound)
		}
		return err == nil && it.ETag() == etagOf(want)
	})
	waitFor(t, 2*time.Second-time.Since(start), p+" reported to OnChange", func() bool {
		it, ok := log.last(p)
		if want == "-" {
			return ok && it == nil
		}
		return ok && it != nil && it.ETag() == etagOf(want)
	})
	if want != "-" {
		mustLookup(t, s, p, want)
	}
}

func write(t *testing.T, s *Store, p, body string) {
	t.Helper()
	writeTree(t, s.Root(), map[string]string{p: body})
}

func testChanges(t *testing.T, cfg Config) {
	var log changeLog
	cfg.OnChange = log.record
	cfg.Precompressed = []string{"gzip"}
	s := newStore(t, cfg, map[string]string{
		"keep.txt":   "unchanged",
		"change.txt": "old",
		"gone.txt":   "bye",
		"d/x.css":    "css",
	})
	startReady(t, s)
	old, _, _ := s.Lookup("/change.txt")

	write(t, s, "change.txt", "new and longer")
	reflect(t, s, &log, "/change.txt", "new and longer")
	if string(old.Body()) != "old" || old.ETag() != etagOf("old") {
		t.Errorf("an old Item changed under its holder: %q %s", old.Body(), old.ETag())
	}

	write(t, s, "created.txt", "fresh")
	reflect(t, s, &log, "/created.txt", "fresh")

	write(t, s, "newdir/sub/file.txt", "in a new directory")
	reflect(t, s, &log, "/newdir/sub/file.txt", "in a new directory")
	mustDir(t, s, "/newdir/sub")
	write(t, s, "newdir/sub/later.txt", "watched")
	reflect(t, s, &log, "/newdir/sub/later.txt", "watched")

	if err := os.Remove(filepath.Join(s.Root(), "gone.txt")); err != nil {
		t.Fatal(err)
	}
	reflect(t, s, &log, "/gone.txt", "-")

	// A precompressed sibling appears: the item gets a variant.
	write(t, s, "d/x.css.gz", "gz")
	waitFor(t, 2*time.Second, "variant attached", func() bool {
		it, _, _ := s.Lookup("/d/x.css")
		return it != nil && len(it.Variants()) == 1 && it.Variants()[0].ETag == etagOf("gz")
	})
	mustNotFound(t, s, "/d/x.css.gz")

	// Rename a directory: old paths go, new ones come.
	if err := os.Rename(filepath.Join(s.Root(), "newdir"), filepath.Join(s.Root(), "moved")); err != nil {
		t.Fatal(err)
	}
	reflect(t, s, &log, "/newdir/sub/file.txt", "-")
	reflect(t, s, &log, "/moved/sub/file.txt", "in a new directory")
	write(t, s, "moved/sub/after.txt", "after move")
	reflect(t, s, &log, "/moved/sub/after.txt", "after move")

	if _, ok := log.last("/keep.txt"); ok {
		t.Error("OnChange called for an unchanged file")
	}
	if !s.Ready() {
		t.Error("Ready went back to false")
	}
}

func TestWatchChanges(t *testing.T) {
	testChanges(t, Config{Rescan: time.Hour}) // only the watcher can see them
}

func TestRescanWithoutWatcher(t *testing.T) {
	newWatcher = func(string) (dirWatcher, error) { return nil, errors.New("no watcher in this test") }
	t.Cleanup(func() { newWatcher = newDirWatcher })
	testChanges(t, Config{Rescan: 100 * time.Millisecond})
}

func TestRescanDefaults(t *testing.T) {
	s := newStore(t, Config{}, nil)
	if iv := s.rescanInterval(); iv != rescanUnwatched {
		t.Errorf("rescan without a watcher: %v; want %v", iv, rescanUnwatched)
	}
	startReady(t, s)
	if iv := s.rescanInterval(); iv != rescanWatched {
		t.Errorf("rescan with a watcher: %v; want %v", iv, rescanWatched)
	}
	s.watch.degraded.Store(true)
	if iv := s.rescanInterval(); iv != rescanUnwatched {
		t.Errorf("rescan with directories unwatched: %v; want %v", iv, rescanUnwatched)
	}
	s2 := newStore(t, Config{Rescan: time.Minute}, nil)
	if iv := s2.rescanInterval(); iv != time.Minute {
		t.Errorf("configured rescan: %v; want 1m", iv)
	}
}

func TestBudgetAcrossUpdates(t *testing.T) {
	var log changeLog
	const budget = 1000
	s := newStore(t, Config{Memory: budget, OnChange: log.record}, map[string]string{
		"a": strings.Repeat("a", 400),
		"b": strings.Repeat("b", 400),
	})
	startReady(t, s)
	if st := s.Stats(); st.ResidentBytes != 800 {
		t.Fatalf("ResidentBytes = %d; want 800", st.ResidentBytes)
	}
	// a grows to more than what is left: it must leave memory.
	big := strings.Repeat("A", 700)
	write(t, s, "a", big)
	reflect(t, s, &log, "/a", big)
	it, _, _ := s.Lookup("/a")
	if it.Resident() {
		t.Errorf("/a resident at 700 bytes with 400 held by /b and a %d budget", budget)
	}
	if st := s.Stats(); st.ResidentBytes > budget {
		t.Errorf("ResidentBytes = %d > budget %d", st.ResidentBytes, budget)
	}
	// A new small file fits.
	write(t, s, "c", "ccc")
	reflect(t, s, &log, "/c", "ccc")
	if it, _, _ := s.Lookup("/c"); !it.Resident() {
		t.Error("/c not resident though it fits")
	}
	// b shrinks: still resident, less held.
	write(t, s, "b", "bb")
	reflect(t, s, &log, "/b", "bb")
	if st := s.Stats(); st.ResidentBytes != 5 {
		t.Errorf("ResidentBytes = %d; want 5 (b and c)", st.ResidentBytes)
	}
}

func TestOwns(t *testing.T) {
	var log changeLog
	owns := func(p string) bool { return !strings.HasPrefix(p, "/theirs") }
	s := newStore(t, Config{Owns: owns, OnChange: log.record}, map[string]string{
		"mine.txt":   "mine",
		"theirs.txt": "theirs",
	})
	startReady(t, s)
	if st := s.Stats(); st.Items != 1 || st.PrimedItems != 1 {
		t.Errorf("Stats = %+v; want only the owned item primed", st)
	}
	// Not ours: still answered, from storage.
	it := mustLookup(t, s, "/theirs.txt", "theirs")
	if st := s.Stats(); st.OnDemand == 0 {
		t.Error("a file we do not own was not read from storage")
	}
	_ = it
	mustNotFound(t, s, "/theirs-missing.txt")
	write(t, s, "theirs.txt", "changed")
	write(t, s, "mine.txt", "changed too")
	reflect(t, s, &log, "/mine.txt", "changed too")
	if _, ok := log.last("/theirs.txt"); ok {
		t.Error("OnChange called for a file we do not own")
	}
	mustLookup(t, s, "/theirs.txt", "changed")
}
