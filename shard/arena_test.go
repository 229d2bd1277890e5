package shard

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	weakrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestArenaAllocator checks the allocator against a model: live extents
// never overlap, the counters add up, free neighbours merge, and freeing
// everything leaves an empty arena.
func TestArenaAllocator(t *testing.T) {
	const size = 4 << 20
	a := newArenaAllocator(make([]byte, size), arenaSys{})
	rng := weakrand.New(weakrand.NewPCG(1, 2))
	type ext struct{ off, n int64 }
	var live []ext
	var used int64
	check := func() {
		t.Helper()
		if a.used != used {
			t.Fatalf("used = %d, want %d", a.used, used)
		}
		// Live and free extents below top tile [0, top) exactly.
		cover := make([]int8, a.top/arenaGrain)
		mark := func(off, n int64, what string) {
			for g := off / arenaGrain; g < (off+n)/arenaGrain; g++ {
				if g >= int64(len(cover)) || cover[g] != 0 {
					t.Fatalf("%s extent %d+%d overlaps or lies above top %d", what, off, n, a.top)
				}
				cover[g] = 1
			}
		}
		for _, e := range live {
			mark(e.off, e.n, "live")
		}
		for off, n := range a.frees {
			mark(off, n, "free")
			if _, ok := a.frees[off+n]; ok {
				t.Fatalf("free extents %d+%d and the next one were not merged", off, n)
			}
			if off+n == a.top {
				t.Fatalf("free extent %d+%d borders top", off, n)
			}
		}
		for g, c := range cover {
			if c == 0 {
				t.Fatalf("grain %d below top is neither live nor free", g)
			}
		}
	}
	for i := range 20000 {
		if len(live) > 0 && (rng.IntN(2) == 0 || i > 15000) {
			k := rng.IntN(len(live))
			e := live[k]
			live[k] = live[len(live)-1]
			live = live[:len(live)-1]
			a.free(e.off, e.n)
			used -= e.n
		} else if i <= 15000 {
			n := (int64(rng.IntN(64<<10)) + arenaGrain) / arenaGrain * arenaGrain
			off := a.alloc(n)
			if off < 0 {
				continue // full
			}
			if off%arenaGrain != 0 {
				t.Fatalf("offset %d not aligned", off)
			}
			live = append(live, ext{off, n})
			used += n
		}
		if i%500 == 0 {
			check()
		}
	}
	for _, e := range live {
		a.free(e.off, e.n)
	}
	live, used = nil, 0
	check()
	if a.top != 0 || len(a.frees) != 0 {
		t.Fatalf("after freeing everything: top %d, %d free extents", a.top, len(a.frees))
	}
}

// TestArenaFirstFit checks that a freed hole is reused for a body that
// fits it, before the arena grows.
func TestArenaFirstFit(t *testing.T) {
	a := newArenaAllocator(make([]byte, 1<<20), arenaSys{})
	x := a.alloc(4096)
	y := a.alloc(8192)
	z := a.alloc(4096)
	a.free(y, 8192)
	if got := a.alloc(1024); got != y {
		t.Fatalf("1 KiB went to %d, want the hole at %d", got, y)
	}
	if got := a.alloc(7168); got != y+1024 {
		t.Fatalf("7 KiB went to %d, want the rest of the hole at %d", got, y+1024)
	}
	if top := a.top; top != z+4096 {
		t.Fatalf("top = %d, want %d: the arena grew", top, z+4096)
	}
	_ = x
}

// lowGrace makes retired memory reusable as soon as no reader holds it.
func lowGrace(t *testing.T) {
	if !arenasOn {
		t.Skip("no arenas on this platform: bodies are in the Go heap")
	}
	old := reuseGrace.Swap(0)
	t.Cleanup(func() { reuseGrace.Store(old) })
}

// collect runs the collector until cond holds (cleanups run on their own
// goroutine after a cycle) or 5 s pass.
func collect(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
}

// isFree reports whether e is in its arena's free space.
func isFree(e extent) bool {
	arenas.mu.Lock()
	defer arenas.mu.Unlock()
	if _, ok := arenas.released[e]; ok {
		return false
	}
	at := int64(e.at)
	if at >= e.a.top {
		return true
	}
	for off, l := range e.a.frees {
		if off <= at && at < off+l {
			return true
		}
	}
	return false
}

// TestArenaRelease: a chunked body nobody saw, given up with release,
// stays allocated while its anchor is reachable, and is freed as soon as
// the collector finds the anchor unreachable: without waiting for a
// Reading or the grace period, and never counted as retired. A body an
// Item owns is freed at once, and its finalizer cleared.
func TestArenaRelease(t *testing.T) {
	if !arenasOn {
		t.Skip("no arenas on this platform")
	}
	rd := BeginRead() // would hold back anything retired
	defer rd.End()

	it := &Item{Size: 100 << 10}
	it.allocBody(true)
	e, ok := it.bodyExtent()
	if !ok || it.flags&ownsBody == 0 {
		t.Fatal("heap memory, not an arena's")
	}
	it.releaseBody()
	if !isFree(e) {
		t.Fatal("an owned body released is not free at once")
	}
	if it.Body() != nil || it.flags&ownsBody != 0 || it.inArena() {
		t.Fatalf("after release: body %v, flags %b", it.Body() != nil, it.flags)
	}
	retired := Arenas().Retired
	it = nil
	runtime.GC()
	runtime.GC()
	if got := Arenas().Retired; got > retired {
		arenas.mu.Lock()
		for _, r := range arenas.pending {
			if r.ext == e {
				t.Error("an owned body released was retired again by the Item's finalizer")
			}
		}
		arenas.mu.Unlock()
	}

	const size = ChunkSize + 1000
	_, m := allocChunks(size, true)
	if m == nil {
		t.Fatal("heap memory, not an arena's")
	}
	exts := m.chunks
	m.release()
	runtime.GC()
	for _, e := range exts {
		if isFree(e) {
			t.Fatalf("%d bytes: freed while their anchor is reachable", size)
		}
	}
	retired = Arenas().Retired
	runtime.KeepAlive(m)
	m = nil
	collect(t, "the released memory to be freed", func() bool {
		for _, e := range exts {
			if !isFree(e) {
				return false
			}
		}
		return true
	})
	if got := Arenas().Retired; got > retired {
		// Other tests' items may be retired meanwhile, but not these.
		arenas.mu.Lock()
		for _, r := range arenas.pending {
			for _, e := range exts {
				if r.ext == e {
					t.Errorf("%d bytes: a released extent was retired (it waits for readers)", size)
				}
			}
		}
		arenas.mu.Unlock()
	}
}

// TestArenaCopiesKeepTheOwner: a body an Item owns stays in use while a
// copy of the Item (a published item with variants) or a Variant made of
// it is reachable, though the Item itself is not; it is retired once none
// is.
func TestArenaCopiesKeepTheOwner(t *testing.T) {
	lowGrace(t)
	for _, via := range []string{"copy", "variant"} {
		const n = 10 << 10
		it := &Item{Path: "/a.css", Size: n}
		it.allocBody(true)
		e, ok := it.bodyExtent()
		if !ok {
			t.Fatal("heap memory, not an arena's")
		}
		var holder *Item
		if via == "copy" {
			holder = it.copyFields()
		} else {
			holder = withVariants(&Item{Path: "/a.css"}, []encoding{{name: "br"}}, []*Item{it})
		}
		if holder.inArena() != (via == "copy") {
			t.Errorf("%s: inArena %v", via, holder.inArena())
		}
		it = nil
		for range 5 {
			runtime.GC()
			time.Sleep(time.Millisecond)
		}
		arenas.mu.Lock()
		for _, r := range arenas.pending {
			if r.ext == e {
				t.Errorf("%s: the body was retired while the %s holds it", via, via)
			}
		}
		arenas.mu.Unlock()
		if isFree(e) {
			t.Fatalf("%s: the body was freed while the %s holds it", via, via)
		}
		runtime.KeepAlive(holder)
		holder = nil
		collect(t, via+": the body to be freed once nothing holds it", func() bool { return isFree(e) })
	}
}

// TestArenaReuseWaitsForReaders: memory of an item nobody references is
// not reused while a Reading that began before it was let go runs, and is
// once it ends.
func TestArenaReuseWaitsForReaders(t *testing.T) {
	lowGrace(t)
	const n = 100 << 10
	it := &Item{Size: n}
	b := it.allocBody(true)
	if !it.inArena() {
		t.Fatal("allocBody gave heap memory")
	}
	for i := range b {
		b[i] = 0xA5
	}
	rd := BeginRead()
	before := Arenas().Reclaimed
	body := it.Body()
	it = nil
	collect(t, "the item's memory to be retired", func() bool { return Arenas().Retired >= n })

	// Allocate and scribble until well past the retired extent: none of it
	// may land on body.
	var keep []*Item
	for range 64 {
		k := &Item{Size: n}
		c := k.allocBody(true)
		for i := range c {
			c[i] = 0x5A
		}
		keep = append(keep, k)
	}
	for i, x := range body {
		if x != 0xA5 {
			t.Fatalf("byte %d of a body held by a Reading was overwritten: %#x", i, x)
		}
	}
	if got := Arenas().Reclaimed; got != before {
		t.Fatalf("reclaimed %d bytes while a Reading held them", got-before)
	}
	rd.End()
	c := &Item{Size: n}
	c.allocBody(true) // reclaims on the way
	if Arenas().Reclaimed == before {
		t.Fatal("the retired memory was not reclaimed after the Reading ended")
	}
	runtime.KeepAlive(keep)
	runtime.KeepAlive(c)
}

// TestArenaStress changes files while readers use their bodies after
// dropping the items, with the collector running all the time and no
// grace period: the bytes a reader holds must always hash to the version
// it got them with. Run it with -race.
func TestArenaStress(t *testing.T) {
	lowGrace(t)
	dir := t.TempDir()
	const nfiles = 12
	sizes := func(rng *weakrand.Rand, i int) int {
		if i == 0 {
			return ChunkSize + 1 + rng.IntN(64<<10) // two chunks
		}
		switch i % 3 {
		case 0:
			return 100 + rng.IntN(2000)
		case 1:
			return 60<<10 + rng.IntN(10<<10)
		}
		return 200<<10 + rng.IntN(100<<10)
	}
	content := func(rng *weakrand.Rand, n int) []byte {
		var seed [32]byte
		for i := range 4 {
			binary.LittleEndian.PutUint64(seed[8*i:], rng.Uint64())
		}
		b := make([]byte, n)
		_, _ = weakrand.NewChaCha8(seed).Read(b)
		return b
	}
	files := map[string]string{}
	rng := weakrand.New(weakrand.NewPCG(3, 4))
	for i := range nfiles {
		files[fmt.Sprintf("f%d", i)] = string(content(rng, sizes(rng, i)))
	}
	s := newStore(t, Config{Root: dir, Rescan: 50 * time.Millisecond}, files)
	startReady(t, s)
	hot := NewHot(16 << 20)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, bad atomic.Int64
	verify := func(what string, b []byte, version string) {
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:16]); got != version {
			bad.Add(1)
			t.Errorf("%s: bytes of version %s hash to %s", what, version, got)
		}
	}
	// Writers: rewrite files, and admit fresh copies to the hot cache.
	wg.Add(2)
	go func() {
		defer wg.Done()
		rng := weakrand.New(weakrand.NewPCG(5, 6))
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			i := rng.IntN(nfiles)
			p := filepath.Join(dir, fmt.Sprintf("f%d", i))
			tmp := p + ".tmp"
			if err := os.WriteFile(tmp, content(rng, sizes(rng, i)), 0o644); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(tmp, p); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		rng := weakrand.New(weakrand.NewPCG(7, 8))
		for {
			select {
			case <-stop:
				return
			default:
			}
			k := fmt.Sprintf("/h%d", rng.IntN(8))
			b := content(rng, 1000+rng.IntN(80<<10))
			sum := sha256.Sum256(b)
			v := hex.EncodeToString(sum[:16])
			hot.Get(k, v)
			hot.Get(k, v)
			hot.Admit(withETag(withBody(&Item{Path: k, Size: int64(len(b))}, b), `"`+v+`"`))
		}
	}()
	// The collector, all the time.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			runtime.GC()
			time.Sleep(3 * time.Millisecond)
		}
	}()
	// Readers: take the bytes, drop the item, let the collector run, then
	// check them.
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := weakrand.New(weakrand.NewPCG(uint64(r), 9))
			for {
				select {
				case <-stop:
					return
				default:
				}
				rd := BeginRead()
				var chunks [][]byte
				var version, what string
				if rng.IntN(3) == 0 {
					what = fmt.Sprintf("/h%d", rng.IntN(8))
					hot.mu.Lock()
					el, ok := hot.items[what]
					if ok {
						it := el.Value.(*hotEntry).it
						chunks, version = [][]byte{it.Body()}, it.Version()
					}
					hot.mu.Unlock()
				} else {
					what = fmt.Sprintf("/f%d", rng.IntN(nfiles))
					if it, _, err := s.Lookup(what); err == nil && it.Resident() {
						version = it.Version()
						chunks = append(chunks, it.Body())
						if it.Chunks() != nil {
							chunks = it.Chunks()
						}
					}
				}
				if version != "" {
					if rng.IntN(8) == 0 {
						runtime.GC() // the item may be collected now
					} else {
						time.Sleep(time.Duration(rng.IntN(2)) * time.Millisecond)
					}
					var all []byte
					for _, c := range chunks {
						all = append(all, c...)
					}
					verify(what, all, version)
					reads.Add(1)
				}
				rd.End()
				if bad.Load() > 3 {
					return
				}
			}
		}()
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	st := Arenas()
	t.Logf("%d reads checked; arenas: %+v", reads.Load(), st)
	if reads.Load() < 20 {
		t.Errorf("only %d reads checked", reads.Load())
	}
	if st.Reclaimed == 0 {
		t.Error("no memory was reclaimed: the test did not exercise reuse")
	}
}

// TestStoreLetsGoOfBodies: a body the store's record holds has no
// finalizer meanwhile (Item.keep), so the record must let go of it when it
// replaces the Item (the file changed), forgets it (the file went) or the
// store closes: each of those bodies is freed once nothing else holds it.
// A path that forgot to would leak the body's memory for good.
func TestStoreLetsGoOfBodies(t *testing.T) {
	lowGrace(t)
	dir := t.TempDir()
	s := newStore(t, Config{Root: dir, Rescan: 50 * time.Millisecond}, map[string]string{
		"a": strings.Repeat("a", 3000), "b": strings.Repeat("b", 5000), "c": strings.Repeat("c", 7000),
	})
	startReady(t, s)
	kept := func(p string) (extent, *Item) {
		t.Helper()
		s.mu.RLock()
		defer s.mu.RUnlock()
		rec := s.files.get(p)
		if rec == nil || rec.data() == nil {
			t.Fatalf("%s: not loaded", p)
		}
		it := rec.data()
		e, ok := it.bodyExtent()
		if !ok || it.flags&ownsBody == 0 || !it.kept {
			t.Fatalf("%s: owns an arena body %v, kept %v", p, ok && it.flags&ownsBody != 0, it.kept)
		}
		return e, it
	}
	ea, olda := kept("/a")
	eb, _ := kept("/b")
	ec, _ := kept("/c")
	oldTag := olda.Tag
	olda = nil
	for range 3 {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	for p, e := range map[string]extent{"/a": ea, "/b": eb, "/c": ec} {
		if isFree(e) {
			t.Fatalf("%s: freed while its record holds it", p)
		}
	}

	// Replaced: the old body goes once nothing holds it.
	if err := os.WriteFile(filepath.Join(dir, "a"), []byte(strings.Repeat("A", 3000)), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the new /a", func() bool {
		it, _, err := s.Lookup("/a")
		return err == nil && it.Tag != oldTag && it.Resident()
	})
	collect(t, "the replaced body of /a to be freed", func() bool { return isFree(ea) })
	ea2, _ := kept("/a")

	// Removed.
	if err := os.Remove(filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "/b gone", func() bool {
		_, _, err := s.Lookup("/b")
		return errors.Is(err, ErrNotFound)
	})
	collect(t, "the body of the removed /b to be freed", func() bool { return isFree(eb) })
	if isFree(ec) || isFree(ea2) {
		t.Fatal("a body still held was freed")
	}

	// Closed.
	s.Close()
	collect(t, "the bodies of a closed store to be freed", func() bool { return isFree(ea2) && isFree(ec) })
}
