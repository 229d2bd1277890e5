package shard

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// third owns the paths whose FNV hash modulo 3 is 0: a third of them.
func third(p string) bool { return !rule(0)(p) }

// statRecorder records the paths listDir stats, for the test's lifetime.
type statRecorder struct {
	mu    sync.Mutex
	paths []string
}

func recordStats(t *testing.T) *statRecorder {
	r := new(statRecorder)
	onEntryStat = func(p string) {
		r.mu.Lock()
		r.paths = append(r.paths, p)
		r.mu.Unlock()
	}
	t.Cleanup(func() { onEntryStat = nil })
	return r
}

func (r *statRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.paths
	r.paths = nil
	return p
}

// watched returns the directories the store's watcher watches, as store
// paths.
func watched(s *Store) map[string]bool {
	m := make(map[string]bool)
	if s.watch.w == nil {
		return m
	}
	for _, p := range s.watch.w.list() {
		m[p] = true
	}
	return m
}

// TestHoldsOnlyItsShare: a node holding a third of the files records,
// stats and watches only those; a rescan stats exactly them; the others are
// still answered, from storage; their changes are not its to publish; its
// own are seen at once.
func TestHoldsOnlyItsShare(t *testing.T) {
	files := ownsTree()
	theirsOnly := "/others/x-0.txt" // in a directory with no file of this node
	for i := 1; third(theirsOnly); i++ {
		theirsOnly = fmt.Sprintf("/others/x-%d.txt", i)
	}
	files[theirsOnly[1:]] = "x"
	var log changeLog
	stats := recordStats(t)
	s := newStore(t, Config{Owns: third, OnChange: log.record, Rescan: time.Hour}, files)
	startReady(t, s)
	primeStats := stats.take()

	var mine []string
	for f := range files {
		if p := "/" + f; third(p) {
			mine = append(mine, p)
		}
	}
	slices.Sort(mine)
	s.mu.RLock()
	var recorded []string
	for p := range s.files.all() {
		recorded = append(recorded, p)
	}
	s.mu.RUnlock()
	slices.Sort(recorded)
	if !slices.Equal(recorded, mine) {
		t.Errorf("the store records %d files; want the %d it holds", len(recorded), len(mine))
	}
	checkOwned(t, s, files, third)

	// Priming stat'ed what it holds and the new directories; a rescan only
	// what it holds.
	for _, p := range primeStats {
		if !third(p) && s.dirs[p] == nil {
			t.Errorf("priming stat'ed %s: another node's file", p)
		}
	}
	s.rescan()
	got := stats.take()
	slices.Sort(got)
	if !slices.Equal(got, mine) {
		t.Errorf("a rescan stat'ed %d entries; want the %d files this node holds (%v...)", len(got), len(mine), got[:min(5, len(got))])
	}

	// Watches: every directory (a file created in any may be this node's).
	w := watched(s)
	for _, d := range []string{"/", "/others", "/d0", "/d6"} {
		if !w[d] {
			t.Errorf("%s is not watched", d)
		}
	}

	// Another node's file: answered from storage; a missing path of its
	// share too; a missing path of this node's share without storage.
	od := s.Stats().OnDemand
	mustLookup(t, s, theirsOnly, "x")
	if s.Stats().OnDemand != od+1 {
		t.Error("another node's file was not answered from storage")
	}
	missing := "/d0/missing-0.txt"
	for i := 1; !third(missing); i++ {
		missing = fmt.Sprintf("/d0/missing-%d.txt", i)
	}
	od = s.Stats().OnDemand
	mustNotFound(t, s, missing)
	if s.Stats().OnDemand != od {
		t.Errorf("a missing path of this node's share was looked up on storage")
	}

	// Changes: its own at once (the watcher), another node's not reported.
	var theirs, own string
	for _, p := range recorded {
		own = p
		break
	}
	for f := range files {
		if p := "/" + f; !third(p) && strings.HasPrefix(p, "/d") {
			theirs = p
			break
		}
	}
	write(t, s, theirs[1:], "changed by its owner")
	write(t, s, own[1:], "changed here")
	reflect(t, s, &log, own, "changed here")
	created := "/d1/created-0.txt"
	for i := 1; !third(created); i++ {
		created = fmt.Sprintf("/d1/created-%d.txt", i)
	}
	write(t, s, created[1:], "new")
	reflect(t, s, &log, created, "new")
	if _, ok := log.last(theirs); ok {
		t.Errorf("OnChange called for %s, another node's file", theirs)
	}
	mustLookup(t, s, theirs, "changed by its owner")

	// A file of this node's appears in a directory where it held nothing:
	// the watcher sees it.
	mineThere := "/others/y-0.txt"
	for i := 1; !third(mineThere); i++ {
		mineThere = fmt.Sprintf("/others/y-%d.txt", i)
	}
	write(t, s, mineThere[1:], "mine now")
	reflect(t, s, &log, mineThere, "mine now")
	if err := os.Remove(filepath.Join(s.Root(), "others", path.Base(mineThere))); err != nil {
		t.Fatal(err)
	}
	reflect(t, s, &log, mineThere, "-")
}

// TestShareSiblings: a precompressed sibling follows the file it
// compresses to its owner, also when that file appears or goes.
func TestShareSiblings(t *testing.T) {
	owns := func(p string) bool { return p != "/theirs.css" }
	var log changeLog
	s := newStore(t, Config{Owns: owns, OnChange: log.record, Precompressed: []string{"gzip"}, Rescan: time.Hour},
		map[string]string{
			"theirs.css":    "css",
			"theirs.css.gz": "gz", // owns() says yes by its own path; its base is another node's
			"mine.css":      "mine",
			"mine.css.gz":   "mine gz",
		})
	startReady(t, s)
	s.mu.RLock()
	gz := s.files.get("/theirs.css.gz") != nil
	s.mu.RUnlock()
	if gz {
		t.Error("the sibling of another node's file is recorded")
	}
	if it := s.Published("/mine.css"); it == nil || len(it.Variants()) != 1 {
		t.Errorf("/mine.css = %v; want it published with its variant", it)
	}
	mustNotFound(t, s, "/theirs.css.gz")
	if it := mustLookup(t, s, "/theirs.css", "css"); len(it.Variants()) != 1 {
		t.Errorf("/theirs.css from storage has %d variants; want 1", len(it.Variants()))
	}

	// Its base goes: the sibling is an item of its own, and this node's.
	if err := os.Remove(filepath.Join(s.Root(), "theirs.css")); err != nil {
		t.Fatal(err)
	}
	reflect(t, s, &log, "/theirs.css.gz", "gz")
	// It comes back: the sibling is its owner's variant again.
	write(t, s, "theirs.css", "css again")
	reflect(t, s, &log, "/theirs.css.gz", "-")
	s.rescan()
	if s.Published("/theirs.css.gz") != nil {
		t.Error("/theirs.css.gz published again after a rescan")
	}
}

// enospc is the error inotify_add_watch gives past the watch limit.
var enospc = fmt.Errorf("adding watch: %w", syscall.ENOSPC)

// TestWatchLimit: running out of watches is logged once, with the sysctl
// to raise; changes are then found by rescans, which do not run back to
// back; once watches are available again, that is logged and every
// directory is watched.
func TestWatchLimit(t *testing.T) {
	var mu sync.Mutex
	full := true
	var adds int
	watchFault = func(name string) error {
		mu.Lock()
		defer mu.Unlock()
		adds++
		if full && strings.Contains(name, "sub") {
			return enospc
		}
		return nil
	}
	t.Cleanup(func() { watchFault = nil })
	core, logs := observer.New(zap.InfoLevel)
	var log changeLog
	const every = 50 * time.Millisecond
	s := newStore(t, Config{Logger: zap.New(core), OnChange: log.record, Rescan: every},
		map[string]string{"top.txt": "top", "sub1/a.txt": "a", "sub2/b.txt": "b"})
	startReady(t, s)
	if !s.watch.degraded.Load() || s.watch.failed.Load() != 2 {
		t.Fatalf("degraded %v with %d directories unwatched; want 2", s.watch.degraded.Load(), s.watch.failed.Load())
	}
	// A change where the watcher cannot see: a rescan finds it.
	write(t, s, "sub1/a.txt", "changed")
	reflect(t, s, &log, "/sub1/a.txt", "changed")
	r0 := s.Stats().Rescans
	time.Sleep(20 * every)
	if n := s.Stats().Rescans - r0; n > 25 {
		t.Errorf("%d rescans in %v at a %v interval: back to back", n, 20*every, every)
	}
	warns := logs.FilterMessageSnippet("out of inotify watches").All()
	if len(warns) != 1 {
		t.Errorf("the watch limit was logged %d times; want once", len(warns))
	} else if !strings.Contains(warns[0].Message, "fs.inotify.max_user_watches") {
		t.Errorf("the warning does not name the sysctl: %q", warns[0].Message)
	}

	// Watches available again: the next rescan takes them, and says so.
	mu.Lock()
	full = false
	mu.Unlock()
	waitFor(t, 2*time.Second, "watches taken", func() bool {
		return len(logs.FilterMessageSnippet("every directory is watched again").All()) == 1
	})
	if s.watch.degraded.Load() || s.watch.failed.Load() != 0 {
		t.Errorf("degraded %v, %d unwatched after watches came back", s.watch.degraded.Load(), s.watch.failed.Load())
	}
	if w := watched(s); !w["/sub1"] || !w["/sub2"] {
		t.Errorf("watched %v; want /sub1 and /sub2 among them", w)
	}
	// Watched directories are not added again at each rescan.
	mu.Lock()
	a0 := adds
	mu.Unlock()
	r0 = s.Stats().Rescans
	waitFor(t, 2*time.Second, "two rescans", func() bool { return s.Stats().Rescans >= r0+2 })
	mu.Lock()
	if adds != a0 {
		t.Errorf("%d watches added by rescans of a tree that did not change", adds-a0)
	}
	mu.Unlock()
}

// TestRescanIntervalFollowsWalk: the time between rescans is at least twenty
// walks (walks then take under 5% of a core).
func TestRescanIntervalFollowsWalk(t *testing.T) {
	s := newStore(t, Config{Rescan: time.Second}, nil)
	s.watch.lastWalk.Store(int64(3 * time.Second))
	if iv := s.rescanInterval(); iv != 60*time.Second {
		t.Errorf("after a 3 s walk with a 1 s interval: %v; want 60s", iv)
	}
	s.watch.lastWalk.Store(int64(time.Millisecond))
	if iv := s.rescanInterval(); iv != time.Second {
		t.Errorf("after a 1 ms walk: %v; want the configured 1s", iv)
	}
	newWatcher = func(string) (dirWatcher, error) { return nil, errors.New("no watcher in this test") }
	t.Cleanup(func() { newWatcher = newDirWatcher })
	s2 := newStore(t, Config{}, nil)
	s2.watch.lastWalk.Store(int64(2 * time.Second))
	if iv := s2.rescanInterval(); iv != 40*time.Second {
		t.Errorf("no watcher, a 2 s walk: %v; want 40s, not %v", iv, rescanUnwatched)
	}
}

// TestWatchRecreatedDir: a directory removed and made again under the same
// path between two looks is watched again (the kernel dropped the old
// one's watch), though it is not added again at each rescan.
func TestWatchRecreatedDir(t *testing.T) {
	var log changeLog
	s := newStore(t, Config{OnChange: log.record, Rescan: time.Hour}, map[string]string{"x/a.txt": "a"})
	startReady(t, s)
	dir := filepath.Join(s.Root(), "x")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	write(t, s, "x/b.txt", "b") // within the same debounce window, most likely
	reflect(t, s, &log, "/x/b.txt", "b")
	s.rescan()
	write(t, s, "x/c.txt", "c")
	reflect(t, s, &log, "/x/c.txt", "c") // only the watcher can see it
}

// TestSetOwnsLookupWhileWalking: while SetOwns lists the tree to find what
// the node newly holds, a lookup of such a file (not recorded yet) reads
// storage: never a 404 for a file that exists.
func TestSetOwnsLookupWhileWalking(t *testing.T) {
	files := ownsTree()
	a, b := rule(0), rule(1)
	_, _, onlyB := ruleSets(files, a, b)
	s := newStore(t, Config{Owns: a, Rescan: time.Hour}, files)
	startReady(t, s)
	var once sync.Once
	looked := ""
	var lookErr error
	onEntryStat = func(p string) {
		once.Do(func() {
			for q := range onlyB {
				if path.Dir(q) == path.Dir(p) {
					continue // its directory is being listed: maybe recorded already
				}
				looked = q
				_, _, lookErr = s.Lookup(q)
				return
			}
		})
	}
	t.Cleanup(func() { onEntryStat = nil })
	s.SetOwns(b)
	if looked == "" {
		t.Fatal("no lookup made while SetOwns walked the tree")
	}
	if lookErr != nil {
		t.Errorf("Lookup(%s) while SetOwns walked: %v; want the file, from storage", looked, lookErr)
	}
	checkOwned(t, s, files, b)
}
