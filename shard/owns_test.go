package shard

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// ownsTree is ~200 files of different sizes (100 B to 7.5 KB) in 7
// directories; the test's contents by path.
func ownsTree() map[string]string {
	files := make(map[string]string)
	for i := range 200 {
		files[fmt.Sprintf("d%d/f%03d.txt", i%7, i)] = strings.Repeat(string(rune('a'+i%26)), 100+i*37)
	}
	return files
}

// rule owns the paths whose FNV hash modulo 3 is not k: two thirds of
// them. rule(0) and rule(1) share a third and differ on two.
func rule(k uint32) func(string) bool {
	return func(p string) bool {
		h := fnv.New32a()
		h.Write([]byte(p))
		return h.Sum32()%3 != k
	}
}

// ruleSets splits the paths of files into what a and b own: both, a only,
// b only.
func ruleSets(files map[string]string, a, b func(string) bool) (both, onlyA, onlyB map[string]bool) {
	both, onlyA, onlyB = map[string]bool{}, map[string]bool{}, map[string]bool{}
	for f := range files {
		p := "/" + f
		switch {
		case a(p) && b(p):
			both[p] = true
		case a(p):
			onlyA[p] = true
		case b(p):
			onlyB[p] = true
		}
	}
	return both, onlyA, onlyB
}

// published returns what s publishes, by path.
func published(s *Store) map[string]*Item {
	m := make(map[string]*Item)
	s.Each(func(it *Item) bool {
		m[it.Path] = it
		return true
	})
	return m
}

// checkOwned checks that s publishes exactly the paths of files own says,
// with their contents (from memory or storage), and that the bytes it
// counts as held are the bytes its items hold.
func checkOwned(t *testing.T, s *Store, files map[string]string, own func(string) bool) map[string]*Item {
	t.Helper()
	pub := published(s)
	want := 0
	for f, content := range files {
		p := "/" + f
		if !own(p) {
			if pub[p] != nil {
				t.Errorf("%s published; not owned", p)
			}
			continue
		}
		want++
		it := pub[p]
		if it == nil {
			t.Errorf("%s not published; owned", p)
			continue
		}
		if got := body(t, s, it, ""); string(got) != content {
			t.Errorf("%s: %d bytes, want %d", p, len(got), len(content))
		}
	}
	if len(pub) != want {
		t.Errorf("%d items published; want %d", len(pub), want)
	}
	var sum int64
	for _, it := range pub {
		sum += held(it)
	}
	st := s.Stats()
	if st.ResidentBytes != sum {
		t.Errorf("ResidentBytes = %d; the published items hold %d", st.ResidentBytes, sum)
	}
	if st.Items != int64(len(pub)) {
		t.Errorf("Stats.Items = %d; %d published", st.Items, len(pub))
	}
	return pub
}

// recorder keeps what OnDrop and OnChange were called with.
type recorder struct {
	mu      sync.Mutex
	drops   map[string]*Item
	changes map[string]*Item // nil: removed
	calls   int
}

func newRecorder() *recorder {
	return &recorder{drops: map[string]*Item{}, changes: map[string]*Item{}}
}

func (r *recorder) onDrop(it *Item) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drops[it.Path] = it
	r.calls++
}

func (r *recorder) onChange(p string, it *Item) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes[p] = it
	r.calls++
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drops, r.changes, r.calls = map[string]*Item{}, map[string]*Item{}, 0
}

// holder returns a primed store that owns everything in files' tree at
// root, and a Handoff that answers from it, counting its answers.
func holder(t *testing.T, root string, calls *atomic.Int64) func(context.Context, string, int64, time.Time) (*Item, bool) {
	prev := newStore(t, Config{Root: root}, nil)
	startReady(t, prev)
	return func(_ context.Context, p string, size int64, mtime time.Time) (*Item, bool) {
		calls.Add(1)
		fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(p[1:])))
		if err != nil || fi.Size() != size || !fi.ModTime().Equal(mtime) {
			t.Errorf("Handoff(%s, %d, %v): storage has %v", p, size, mtime, fi)
		}
		it, _, err := prev.Lookup(p)
		return it, err == nil && it != nil
	}
}

func TestSetOwnsMovesOnlyWhatChanged(t *testing.T) {
	files := ownsTree()
	a, b := rule(0), rule(1)
	both, onlyA, onlyB := ruleSets(files, a, b)
	rec := newRecorder()
	s := newStore(t, Config{Owns: a, OnDrop: rec.onDrop, OnChange: rec.onChange}, files)
	startReady(t, s)
	before := checkOwned(t, s, files, a)
	st0 := s.Stats()
	if st0.PrimedItems != int64(len(both)+len(onlyA)) {
		t.Fatalf("primed %d; want %d", st0.PrimedItems, len(both)+len(onlyA))
	}

	s.SetOwns(b)

	after := checkOwned(t, s, files, b)
	st := s.Stats()
	t.Logf("%d files: %d kept, %d dropped, %d loaded", len(files), len(both), len(onlyA), len(onlyB))

	// Kept: the very same items, not read again.
	for p := range both {
		if after[p] != before[p] {
			t.Errorf("%s: a new item; owned under both rules", p)
		}
	}
	if d := st.StorageReads - st0.StorageReads; d != int64(len(onlyB)) {
		t.Errorf("%d files read from storage; want %d (the newly owned)", d, len(onlyB))
	}
	var gainedBytes int64
	for p := range onlyB {
		gainedBytes += int64(len(files[p[1:]]))
	}
	if d := st.StorageBytes - st0.StorageBytes; d != gainedBytes {
		t.Errorf("%d bytes read from storage; want %d", d, gainedBytes)
	}
	if st.Reloads != st0.Reloads || st.PrimedItems != st0.PrimedItems {
		t.Errorf("Reloads %d -> %d, PrimedItems %d -> %d; want unchanged", st0.Reloads, st.Reloads, st0.PrimedItems, st.PrimedItems)
	}

	// Dropped: each reported once, with its bytes, before it went.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.drops) != len(onlyA) {
		t.Errorf("OnDrop called for %d items; want %d", len(rec.drops), len(onlyA))
	}
	for p := range onlyA {
		it := rec.drops[p]
		if it != before[p] {
			t.Errorf("OnDrop(%s): %p; want the published item %p", p, it, before[p])
			continue
		}
		if !bytes.Equal(it.Body(), []byte(files[p[1:]])) {
			t.Errorf("OnDrop(%s): %d bytes held; want %d", p, len(it.Body()), len(files[p[1:]]))
		}
	}

	// OnChange: exactly the removes and the adds.
	if len(rec.changes) != len(onlyA)+len(onlyB) || rec.calls != 2*len(onlyA)+len(onlyB) {
		t.Errorf("OnChange: %d paths (%d calls with OnDrop's); want %d removes and %d adds",
			len(rec.changes), rec.calls, len(onlyA), len(onlyB))
	}
	for p := range onlyA {
		if it, ok := rec.changes[p]; !ok || it != nil {
			t.Errorf("OnChange(%s) = %v, %v; want a removal", p, it, ok)
		}
	}
	for p := range onlyB {
		if it := rec.changes[p]; it == nil || it != after[p] {
			t.Errorf("OnChange(%s) = %p; want the published item %p", p, it, after[p])
		}
	}
	if d := st.Changes - st0.Changes; d != int64(len(onlyA)+len(onlyB)) {
		t.Errorf("Stats.Changes grew by %d; want %d", d, len(onlyA)+len(onlyB))
	}

	// A newly owned path is answered from memory.
	for p := range onlyB {
		it, _, err := s.Lookup(p)
		if err != nil || !it.Resident() || it != after[p] {
			t.Errorf("Lookup(%s) = %v, %v; want the resident item", p, it, err)
		}
		break
	}
	od := s.Stats().OnDemand
	for p := range onlyA {
		if it, _, err := s.Lookup(p); err != nil || string(body(t, s, it, "")) != files[p[1:]] {
			t.Errorf("Lookup(%s) of a dropped path: %v", p, err)
		}
		break
	}
	if s.Stats().OnDemand != od+1 {
		t.Errorf("a dropped path was not answered from storage")
	}

	// And back: the same moves the other way.
	rec.mu.Unlock()
	rec.reset()
	st1 := s.Stats()
	s.SetOwns(a)
	checkOwned(t, s, files, a)
	rec.mu.Lock()
	if len(rec.drops) != len(onlyB) {
		t.Errorf("back: OnDrop called for %d items; want %d", len(rec.drops), len(onlyB))
	}
	if d := s.Stats().StorageReads - st1.StorageReads; d != int64(len(onlyA)) {
		t.Errorf("back: %d files read from storage; want %d", d, len(onlyA))
	}
}

func TestSetOwnsHandoff(t *testing.T) {
	files := ownsTree()
	a, b := rule(0), rule(1)
	_, _, onlyB := ruleSets(files, a, b)
	var gainedBytes int64
	for p := range onlyB {
		gainedBytes += int64(len(files[p[1:]]))
	}

	t.Run("accepted", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, files)
		var calls atomic.Int64
		core, logs := observer.New(zap.InfoLevel)
		s := newStore(t, Config{Root: root, Owns: a, Handoff: holder(t, root, &calls), Logger: zap.New(core)}, nil)
		startReady(t, s)
		// Priming asks Handoff too (a node joining a running cluster).
		st0 := s.Stats()
		if primed := calls.Load(); primed != st0.PrimedItems || st0.HandoffItems != primed {
			t.Errorf("priming asked Handoff %d times and took %d items from it; want %d each", primed, st0.HandoffItems, st0.PrimedItems)
		}
		// and says so when it is done.
		if l := logs.FilterMessage("primed").All(); len(l) != 1 {
			t.Errorf("%d \"primed\" lines; want 1", len(l))
		} else if f := l[0].ContextMap(); f["from_peers_memory"] != st0.HandoffItems || f["from_peers_refused"] != int64(0) || f["items"] != st0.PrimedItems {
			t.Errorf("\"primed\" logged %v; want items %d, from_peers_memory %d, from_peers_refused 0", f, st0.PrimedItems, st0.HandoffItems)
		}
		calls0 := calls.Load()
		s.SetOwns(b)
		pub := checkOwned(t, s, files, b)
		st := s.Stats()
		if d := st.StorageReads - st0.StorageReads; d != 0 {
			t.Errorf("%d files read from storage; want 0", d)
		}
		if d, db := st.HandoffItems-st0.HandoffItems, st.HandoffBytes-st0.HandoffBytes; d != int64(len(onlyB)) || db != gainedBytes || st.HandoffFailed != 0 {
			t.Errorf("HandoffItems +%d, HandoffBytes +%d, HandoffFailed %d; want %d, %d, 0",
				d, db, st.HandoffFailed, len(onlyB), gainedBytes)
		}
		if d := calls.Load() - calls0; d != int64(len(onlyB)) {
			t.Errorf("Handoff asked %d times; want %d", d, len(onlyB))
		}
		for p := range onlyB {
			if it := pub[p]; !it.Resident() || it.Tag == (Tag{}) || it.ContentType() != "text/plain; charset=utf-8" {
				t.Errorf("%s: resident %v, ETag %q, type %q", p, it.Resident(), it.ETag(), it.ContentType())
			} else if it.inArena() != arenasOn {
				t.Errorf("%s: bytes in an arena %v; want %v (outside the Go heap where arenas are on)", p, it.inArena(), arenasOn)
			}
		}
		t.Logf("%d files taken from the previous holder (%d bytes), 0 read", st.HandoffItems, st.HandoffBytes)
	})

	bad := map[string]func(it *Item) *Item{
		"altered bytes": func(it *Item) *Item {
			body := bytes.Clone(it.Body())
			body[len(body)/2]++
			return withModTime(withBody(&Item{Path: it.Path, Size: it.Size, Tag: it.Tag}, body), it.ModTime())
		},
		"wrong version": func(it *Item) *Item {
			return withModTime(withBody(&Item{Path: it.Path, Size: it.Size, Tag: Tag{}}, it.Body()), it.ModTime())
		},
		"wrong mtime": func(it *Item) *Item {
			return withModTime(withBody(&Item{Path: it.Path, Size: it.Size, Tag: it.Tag}, it.Body()), it.ModTime().Add(time.Second))
		},
		"wrong size": func(it *Item) *Item {
			return withModTime(withBody(&Item{Path: it.Path, Size: it.Size - 1, Tag: it.Tag}, it.Body()[1:]), it.ModTime())
		},
		// A body shorter than Size cannot be set (TestItemBody).
	}
	for name, spoil := range bad {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, files)
			var calls atomic.Int64
			good := holder(t, root, &calls)
			handoff := func(ctx context.Context, p string, size int64, mtime time.Time) (*Item, bool) {
				it, ok := good(ctx, p, size, mtime)
				if !ok {
					return nil, false
				}
				return spoil(it), true
			}
			s := newStore(t, Config{Root: root, Owns: a, Handoff: handoff}, nil)
			startReady(t, s)
			st0 := s.Stats()
			s.SetOwns(b)
			checkOwned(t, s, files, b) // the bytes are storage's
			st := s.Stats()
			if st.HandoffItems != 0 || st.HandoffFailed-st0.HandoffFailed != int64(len(onlyB)) {
				t.Errorf("HandoffItems %d, HandoffFailed +%d; want 0, %d", st.HandoffItems, st.HandoffFailed-st0.HandoffFailed, len(onlyB))
			}
			if d := st.StorageReads - st0.StorageReads; d != int64(len(onlyB)) {
				t.Errorf("%d files read from storage; want %d", d, len(onlyB))
			}
		})
	}
}

// TestSetOwnsHandoffLayout checks the bytes of a handed-off item are taken
// in the store's layout: a Body up to ChunkSize, Chunks above.
func TestSetOwnsHandoffLayout(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (ChunkSize+ChunkSize/2)/16)
	for _, c := range []struct {
		name string
		it   *Item
		ok   bool
		n    int // chunks; 0: a Body
	}{
		{"small body", withBody(&Item{Size: 3}, []byte("abc")), true, 0},
		{"small as a chunk", withChunks(&Item{Size: 3}, Chunks{[]byte("abc")}), true, 0},
		{"empty", &Item{Size: 0}, true, 0},
		{"big body", withBody(&Item{Size: int64(len(big))}, big), true, 2},
		{"big chunks", withChunks(&Item{Size: int64(len(big))}, Chunks{big[:ChunkSize], big[ChunkSize:]}), true, 2},
		{"bad chunks", withChunks(&Item{Size: int64(len(big))}, Chunks{big[:10], big[10:]}), false, 0},
		{"both", withChunks(withBody(&Item{Size: 3}, []byte("abc")), Chunks{[]byte("abc")}), false, 0},
		{"none", &Item{Size: 3}, false, 0},
	} {
		body, chunks, ok := handoffBytes(c.it)
		if ok != c.ok || len(chunks) != c.n || (ok && c.n == 0 && int64(len(body)) != c.it.Size) {
			t.Errorf("%s: %d-byte body, %d chunks, %v", c.name, len(body), len(chunks), ok)
		}
		if ok && c.n > 0 && (body != nil || chunks.Len() != c.it.Size || !bytes.Equal(chunks.Slice(0, chunks.Len()), big)) {
			t.Errorf("%s: chunks do not hold the body", c.name)
		}
	}
}

func TestSetOwnsWhilePriming(t *testing.T) {
	for _, memory := range []int64{0, 200 << 10} {
		t.Run(fmt.Sprintf("memory %d", memory), func(t *testing.T) {
			files := ownsTree()
			a, b := rule(0), rule(1)
			gate := make(chan struct{})
			var once sync.Once
			reached := make(chan struct{})
			var primeReads atomic.Int64
			beforePrimeRead = func(string) {
				primeReads.Add(1)
				once.Do(func() { close(reached) })
				<-gate
			}
			applied := make(chan struct{}, 1)
			afterApplyOwns = func() { applied <- struct{}{} }
			t.Cleanup(func() { beforePrimeRead, afterApplyOwns = nil, nil })

			rec := newRecorder()
			s := newStore(t, Config{Owns: a, Workers: 2, Memory: memory, OnDrop: rec.onDrop, OnChange: rec.onChange}, files)
			s.Start()
			<-reached // planned, the first reads held
			returned := make(chan struct{})
			go func() {
				s.SetOwns(b)
				close(returned)
			}()
			<-applied
			select {
			case <-returned:
				t.Fatal("SetOwns returned before priming was done")
			default:
			}
			close(gate)
			select {
			case <-returned:
			case <-time.After(5 * time.Second):
				t.Fatal("SetOwns did not return")
			}
			if !s.Ready() {
				t.Fatal("SetOwns returned before the store was ready")
			}
			st := s.Stats() // before checkOwned's Opens
			pub := checkOwned(t, s, files, b)
			if memory > 0 && st.ResidentBytes > memory {
				t.Errorf("ResidentBytes %d over the budget %d", st.ResidentBytes, memory)
			}
			resident := 0
			for _, it := range pub {
				if it.Resident() {
					resident++
				}
			}
			both, onlyA, onlyB := ruleSets(files, a, b)
			t.Logf("priming read %d files (%d owned under the first rule), SetOwns read %d; %d of %d items resident (%d bytes)",
				primeReads.Load(), len(both)+len(onlyA), st.StorageReads, resident, len(pub), st.ResidentBytes)
			if primeReads.Load() > int64(len(both))+2+1 {
				// both, plus the reads held or handed to a worker when
				// SetOwns came (2 workers, 1 in the dispatcher's hand).
				t.Errorf("priming read %d files; want the %d kept and at most 3 more", primeReads.Load(), len(both))
			}
			if st.StorageReads > int64(len(onlyB)) {
				t.Errorf("%d files read after SetOwns; want at most the %d newly owned", st.StorageReads, len(onlyB))
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.changes) != 0 {
				t.Errorf("OnChange called for %d paths before Ready", len(rec.changes))
			}
			if len(rec.drops) > 1 { // at most the one read let through before the gate
				t.Errorf("OnDrop called for %d items while priming was held", len(rec.drops))
			}
		})
	}
}

func TestSetOwnsBeforeStart(t *testing.T) {
	files := ownsTree()
	a, b := rule(0), rule(1)
	both, _, onlyB := ruleSets(files, a, b)
	rec := newRecorder()
	s := newStore(t, Config{Owns: a, OnDrop: rec.onDrop}, files)
	s.SetOwns(b)
	startReady(t, s)
	st := s.Stats()
	checkOwned(t, s, files, b)
	if st.PrimedItems != int64(len(both)+len(onlyB)) || st.StorageReads != 0 {
		t.Errorf("primed %d, read %d more; want %d primed, 0 more", st.PrimedItems, st.StorageReads, len(both)+len(onlyB))
	}
	if len(rec.drops) != 0 {
		t.Errorf("OnDrop called %d times", len(rec.drops))
	}
}

func TestSetOwnsBudget(t *testing.T) {
	files := ownsTree()
	var total int64
	for _, c := range files {
		total += int64(len(c))
	}
	memory := total / 3 // about half of a node's share
	a, b := rule(0), rule(1)
	_, _, onlyB := ruleSets(files, a, b)
	for _, withHandoff := range []bool{false, true} {
		t.Run(fmt.Sprintf("handoff %v", withHandoff), func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, files)
			cfg := Config{Root: root, Owns: a, Memory: memory}
			var calls atomic.Int64
			if withHandoff {
				cfg.Handoff = holder(t, root, &calls)
			}
			s := newStore(t, cfg, nil)
			startReady(t, s)
			checkOwned(t, s, files, a)
			var peak atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					peak.Store(max(peak.Load(), s.Stats().ResidentBytes))
					select {
					case <-stop:
						return
					default:
					}
				}
			})
			st0 := s.Stats()
			s.SetOwns(b)
			close(stop)
			wg.Wait()
			st := s.Stats() // before checkOwned's Opens
			pub := checkOwned(t, s, files, b)
			if st.ResidentBytes > memory || peak.Load() > memory {
				t.Errorf("ResidentBytes %d (peak %d) over the budget %d", st.ResidentBytes, peak.Load(), memory)
			}
			var notHeld []string
			for p, it := range pub {
				if !it.Resident() {
					notHeld = append(notHeld, p)
				}
			}
			sort.Strings(notHeld)
			reads := st.StorageReads - st0.StorageReads
			handed := st.HandoffItems - st0.HandoffItems
			t.Logf("budget %d: %d resident bytes, %d of %d items not held; %d newly owned: %d handed off, %d read",
				memory, st.ResidentBytes, len(notHeld), len(pub), len(onlyB), handed, reads)
			if len(notHeld) == 0 {
				t.Errorf("every item resident; the test wants a budget that does not hold them all")
			}
			if handed+reads != int64(len(onlyB)) {
				t.Errorf("%d handed off + %d read; want %d newly owned", handed, reads, len(onlyB))
			}
			if withHandoff && handed == 0 {
				t.Errorf("nothing handed off")
			}
			if st.HandoffFailed != 0 {
				t.Errorf("HandoffFailed %d", st.HandoffFailed)
			}
		})
	}
}

// TestSetOwnsConcurrent: racing calls end with one of the rules applied
// exactly, and a later call wins.
func TestSetOwnsConcurrent(t *testing.T) {
	files := ownsTree()
	rules := []func(string) bool{rule(0), rule(1), rule(2)}
	s := newStore(t, Config{Owns: rules[0], Workers: 3}, files)
	startReady(t, s)
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() { s.SetOwns(rules[i%2]) })
	}
	wg.Wait()
	pub := published(s)
	var which []int
	for k := range 2 {
		if _, onlyK, onlyOther := ruleSets(files, rules[k], func(p string) bool { return pub[p] != nil }); len(onlyK)+len(onlyOther) == 0 {
			which = append(which, k)
		}
	}
	if len(which) != 1 {
		t.Errorf("after racing calls the store holds %d items, matching rules %v; want exactly one", len(pub), which)
	}
	s.SetOwns(rules[2])
	checkOwned(t, s, files, rules[2])
}

// TestSetOwnsAfterClose: it returns at once.
func TestSetOwnsAfterClose(t *testing.T) {
	s := newStore(t, Config{}, map[string]string{"a": "x"})
	startReady(t, s)
	s.Close()
	done := make(chan struct{})
	go func() {
		s.SetOwns(rule(0))
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("SetOwns after Close did not return")
	}
}

// withChunks is it with chunks c.
func withChunks(it *Item, c Chunks) *Item {
	it.SetChunks(c)
	return it
}
