package shard

import (
	"math/bits"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Item bodies live outside the Go heap where the platform allows it (Linux:
// memfd arenas mapped into the process, arena_linux.go; elsewhere the heap,
// arena_other.go). The collector neither scans nor paces on them, RSS
// tracks what is held, and a body can go to a socket with sendfile(2) from
// its arena.
//
// Lifetime. A body's bytes are referenced by plain []byte slices that the
// collector cannot see, so the store decides when its memory may be reused,
// in three steps:
//
//  1. Every arena body has an anchor that each Item and Variant holding the
//     bytes keeps reachable. A body in one piece (nearly every one) is
//     anchored by the Item it was allocated for (ownsBody): its finalizer
//     retires the memory, and copies of it (a published Item with
//     variants, a Variant) point to it. A chunked body has an anchor of
//     its own (*bodyMem). While any
//     of them is reachable (the index, the hot cache, an item kept for
//     handoff, a request holding it), the memory is in use. When the last
//     is collected, the finalizer retires the memory.
//  2. A retired extent is not reused while any reader that began before it
//     was retired is still running (BeginRead/End, which the HTTP handler
//     brackets every request with): a request may hold a body slice after
//     dropping its Item (a hot copy, a chunk).
//  3. Nor before reuseGrace has passed since it was retired: a peer's fetch
//     writes a slice to its QUIC stream after the item was looked up, under
//     a stream deadline shorter than that.
//
// Only then does the extent join its arena's free space (coalesced with
// its neighbours; whole pages inside large free extents go back to the
// kernel). A body that was never published (a failed or dropped read) is
// freed at once.

// arenaGrain is the allocation unit: extents start and end on multiples of
// it. 16 bytes, as the Go allocator aligns: a tree of small files wastes
// 8 bytes a body on average, where 64-byte grains wasted 32 (10 MB for a
// third of a million bodies).
const arenaGrain = 16

// arenaSize is the size of one arena (address space; its pages exist only
// as they are written). Bodies are at most ChunkSize, so an arena holds
// hundreds of the largest.
const arenaSize = 1 << 30

// nbins is the number of size classes of free extents (by bit length of
// their length in grains).
const nbins = 40

// reuseGrace is how long a retired extent waits, at least, before reuse:
// over twice the peers' default stream deadline (peering's
// DefaultStreamTimeout, 10s), which bounds how long a peer's fetch may
// write a slice it got without its Item. Tests lower it.
var reuseGrace atomic.Int64 // a time.Duration

func init() { reuseGrace.Store(int64(30 * time.Second)) }

// extent is a run of bytes of an arena: 16 bytes, offsets and lengths in
// 32 bits (an arena is 1 GiB, a body at most ChunkSize).
type extent struct {
	a    *arena
	at   uint32 // offset in a
	size uint32 // length in bytes; it takes grains() of the arena
}

// The offsets and lengths of extents fit in 32 bits.
const (
	_ = uint32(arenaSize - 1)
	_ = uint32(ChunkSize)
)

// keeper is what keeps an arena body in use, in an Item's extension or a
// Variant: the Item that owns the body (ownsBody), or the anchor of one
// that no Item owns (a chunked body). Zero: the body is in the Go heap, or
// the Item holding it owns it.
type keeper struct {
	owner *Item
	mem   *bodyMem
}

// keeper returns what keeps it's body in use, for a copy of it to hold.
func (it *Item) keeper() keeper {
	if it.flags&ownsBody != 0 {
		return keeper{owner: it}
	}
	if m := it.more(); m != nil {
		return m.keep
	}
	return keeper{}
}

// inArena reports whether it's Body or Chunks are arena memory (that it
// owns or keeps).
func (it *Item) inArena() bool { return it.keeper() != keeper{} }

// ownBody makes it the anchor of its Body, arena memory allocated for it
// by allocBody: its finalizer retires the memory (after the readers, and
// the grace period unless grace is false). A finalizer on the Item itself,
// where an anchor object of its own took 24 bytes per body besides the
// finalizer's record. None of a finalizer's pitfalls applies: an Item
// points to nothing that points back to it (its copies point to it, it
// never to them), and nothing else sets one on it.
func (it *Item) ownBody(grace bool) {
	it.flags |= ownsBody
	if grace {
		runtime.SetFinalizer(it, (*Item).retireBody)
	} else {
		runtime.SetFinalizer(it, (*Item).retireHotBody)
	}
}

// keep is for the store's record that now holds it (fileRec.setData):
// if it owns its Body, its finalizer is turned off until the record lets
// go of it (letGo). While a record holds an Item the Item is reachable, so
// the finalizer could not run anyway, and its record in the runtime (56
// bytes outside the heap per body, 18 MiB on a node priming a third of a
// million files) would be kept, and scanned at every collection, for
// nothing. A record that never let go of its Item would leak the body's
// memory (never retire it); it could not free memory still in use.
func (it *Item) keep() {
	if it == nil || it.flags&ownsBody == 0 || it.kept {
		return
	}
	runtime.SetFinalizer(it, nil)
	it.kept = true
}

// letGo is for the record that held it and no longer does: its finalizer
// is on again, and retires the Body once nothing else holds it (requests,
// copies, the index, a hot cache). Store items' bodies are allocated with
// the grace period (retireBody).
func (it *Item) letGo() {
	if it == nil || !it.kept {
		return
	}
	it.kept = false
	runtime.SetFinalizer(it, (*Item).retireBody)
}

// bodyExtent is the extent of it's owned Body.
func (it *Item) bodyExtent() (extent, bool) {
	a, off, ok := arenaOf(it.Body())
	if !ok {
		return extent{}, false
	}
	return extent{a: a, at: uint32(off), size: uint32(it.Size)}, true
}

// retireBody is the finalizer of an Item that owns its Body.
func (it *Item) retireBody() {
	if e, ok := it.bodyExtent(); ok {
		retireExtents([]extent{e}, true)
	}
}

// retireHotBody is retireBody for hot copies: peers never fetch from the
// hot cache, so only the readers need waiting for.
func (it *Item) retireHotBody() {
	if e, ok := it.bodyExtent(); ok {
		retireExtents([]extent{e}, false)
	}
}

// setChunksKept sets it's Chunks, kept in use by anchor m (nil: heap).
func (it *Item) setChunksKept(c Chunks, m *bodyMem) {
	x := it.ext()
	x.chunks, x.keep = c, keeper{mem: m}
	it.setExt(x)
}

// dropOwnBody frees the Body it owns, if it owns one, at once: for a body
// nobody else ever saw (a failed read, a copy not kept). it no longer has
// a Body then.
func (it *Item) dropOwnBody() {
	if it.flags&ownsBody == 0 {
		return
	}
	runtime.SetFinalizer(it, nil)
	if e, ok := it.bodyExtent(); ok {
		arenas.mu.Lock()
		e.a.freeExtent(e)
		arenas.mu.Unlock()
	}
	it.flags &^= ownsBody
	it.setBodyPtr(nil)
}

// releaseBody gives up the arena memory of a Body or Chunks nobody else
// ever saw: a Body it owns is freed at once (it has none after), the
// extents of an anchor as soon as the collector finds the anchor
// unreachable. Never for an Item others may hold.
func (it *Item) releaseBody() {
	if it.flags&ownsBody != 0 {
		it.dropOwnBody()
		return
	}
	if m := it.more(); m != nil {
		m.keep.mem.release()
	}
}

// bodyMem is the anchor of a chunked body's arena memory (one extent per
// chunk): Items and Variants holding the chunks point to it, and its
// finalizer retires the extents once none does.
type bodyMem struct {
	chunks []extent // the extents of the chunks, in order
}

// extents are m's extents.
func (m *bodyMem) extents() []extent { return m.chunks }

// release gives up m's extents, for a body nobody else ever saw: they are
// freed as soon as the collector finds m unreachable (its finalizer runs),
// without waiting for readers or the grace period. m must not be used
// after it.
func (m *bodyMem) release() {
	if m == nil {
		return
	}
	arenas.mu.Lock()
	for _, e := range m.extents() {
		arenas.released[e] = struct{}{}
	}
	arenas.mu.Unlock()
}

// watch registers m's finalizer: once no Item or Variant points to m, its
// extents are retired (after the readers, and the grace period unless
// grace is false).
//
// A finalizer, not runtime.AddCleanup: a cleanup takes two heap objects
// besides its record (a box for its argument, and the closure that calls
// the function with it), where a finalizer that is a method of m takes
// none. None of a finalizer's pitfalls applies here: m points to nothing
// that points back to it (no cycle keeps it alive), the finalizer does not
// keep m, and nothing else sets one on m.
func (m *bodyMem) watch(grace bool) {
	if grace {
		runtime.SetFinalizer(m, (*bodyMem).retire)
	} else {
		runtime.SetFinalizer(m, (*bodyMem).retireHot)
	}
}

// retire is m's finalizer: its extents wait for the readers that might
// still hold them, and the grace period.
func (m *bodyMem) retire() { retireExtents(m.extents(), true) }

// retireHot is retire for hot copies: peers never fetch from the hot
// cache, so only the readers need waiting for.
func (m *bodyMem) retireHot() { retireExtents(m.extents(), false) }

// arena is one mapping outside the Go heap, with its own allocator. Its
// fields other than mem, base, size and sys are guarded by arenas.mu.
type arena struct {
	mem  []byte
	base uintptr
	size int64
	sys  arenaSys // the platform's part (the memfd)

	top     int64                     // never handed out above this
	faulted int64                     // [top, faulted) was prefaulted (prefault) and is still mapped
	frees   map[int64]int64           // start → length of free extents below top
	ends    map[int64]int64           // end → start of the same
	bins    [nbins]map[int64]struct{} // starts of free extents by size class
	used    int64                     // bytes in extents handed out (and not freed)
}

func newArenaAllocator(mem []byte, sys arenaSys) *arena {
	a := &arena{mem: mem, size: int64(len(mem)), sys: sys, frees: map[int64]int64{}, ends: map[int64]int64{}}
	if len(mem) > 0 {
		a.base = uintptrOf(mem)
	}
	for i := range a.bins {
		a.bins[i] = map[int64]struct{}{}
	}
	return a
}

func sizeClass(n int64) int { return min(nbins-1, bits.Len64(uint64(n/arenaGrain))) }

// alloc returns the offset of n free bytes (n a multiple of arenaGrain),
// or -1.
func (a *arena) alloc(n int64) int64 {
	c := sizeClass(n)
	// First fit within n's class (a few looks), then any extent of a larger
	// class, which always fits.
	looked := 0
	for off := range a.bins[c] {
		if a.frees[off] >= n {
			return a.take(off, n)
		}
		if looked++; looked == 8 {
			break
		}
	}
	for k := c + 1; k < nbins; k++ {
		for off := range a.bins[k] {
			return a.take(off, n)
		}
	}
	if a.top+n <= a.size {
		off := a.top
		a.top += n
		a.used += n
		if a.top > a.faulted {
			end := min(a.size, (a.top+prefaultStep-1)/prefaultStep*prefaultStep)
			a.sys.prefault(a.faulted, end-a.faulted)
			a.faulted = end
		}
		return off
	}
	return -1
}

// prefaultStep is how much of an arena's memory above top is made resident
// at a time, ahead of the bodies that will be read into it (arenaSys.prefault):
// one system call per 2 MiB instead of a page fault per 4 KiB page as
// read(2) copies into fresh memory. Priming reads hundreds of thousands of
// small files into arenas; in this VM a fault cost about 20 µs, and
// reading a 2 KiB file into fresh arena memory took 18.8 µs against 13-14
// µs prefaulted (open, read and close included). At most prefaultStep per
// arena is resident before it is used.
const prefaultStep = 2 << 20

// pageSize is the unit in which pages are prefaulted and discarded.
const pageSize = 4096

// take hands out the first n bytes of the free extent at off.
func (a *arena) take(off, n int64) int64 {
	l := a.frees[off]
	a.unlinkFree(off, l)
	if l > n {
		a.linkFree(off+n, l-n)
	}
	a.used += n
	return off
}

func (a *arena) linkFree(off, n int64) {
	a.frees[off] = n
	a.ends[off+n] = off
	a.bins[sizeClass(n)][off] = struct{}{}
}

func (a *arena) unlinkFree(off, n int64) {
	delete(a.frees, off)
	delete(a.ends, off+n)
	delete(a.bins[sizeClass(n)], off)
}

// free returns the n bytes at off, merging them with free neighbours; what
// borders top lowers it. Whole pages of the result go back to the kernel.
func (a *arena) free(off, n int64) {
	a.used -= n
	start, end := off, off+n
	if s, ok := a.ends[start]; ok {
		a.unlinkFree(s, start-s)
		start = s
	}
	if l, ok := a.frees[end]; ok {
		a.unlinkFree(end, l)
		end += l
	}
	if end == a.top {
		// The pages above top go back, the one top is in stays
		// (discard keeps partial pages).
		a.sys.discard(start, a.faulted-start)
		a.top, a.faulted = start, (start+pageSize-1)&^(pageSize-1)
		return
	}
	a.linkFree(start, end-start)
	if end-start >= discardMin {
		a.sys.discard(start, end-start)
	}
}

// discardMin is the smallest free extent whose whole pages are given back
// to the kernel: smaller holes keep their pages for the next body.
const discardMin = 64 << 10

// arenaSet is the process's arenas, shared by every Store and Hot cache.
type arenaSet struct {
	mu     sync.Mutex
	list   []*arena                 // ascending base
	snap   atomic.Pointer[[]*arena] // list, for lock-free lookups (arenaOf)
	failed bool                     // the platform refused a new arena: bodies go to the heap

	pending  []retired
	released map[extent]struct{} // extents of bodies nobody saw (bodyMem.release), freed by their cleanup
	timer    *time.Timer
	due      time.Time // when timer fires; zero when it is not set

	// stats, guarded by mu
	retiredBytes   int64
	reclaimedBytes int64

	sendfiles atomic.Int64 // BodyFile descriptors given to sendfile
}

var arenas = arenaSet{released: map[extent]struct{}{}}

// retired is an extent waiting to be reused.
type retired struct {
	ext    extent
	grace  bool   // wait reuseGrace too (see bodyMem.retire)
	ticket uint64 // readers.seq when it was retired
	at     time.Time
}

// allocBody sets it's Body to it.Size bytes of arena memory that it owns
// (ownBody), or of heap memory where arenas are not available, and returns
// them to fill. Without grace, the memory is reused once no reader may hold
// it, without the grace period (a hot copy: peers never fetch those). it
// must not own a Body yet.
func (it *Item) allocBody(grace bool) []byte {
	n := it.Size
	if n > 0 && arenasOn {
		if e, ok := arenas.alloc(n); ok {
			b := e.bytes()
			it.setBodyPtr(unsafe.SliceData(b))
			it.ownBody(grace)
			return b
		}
	}
	b := make([]byte, n)
	it.setBodyPtr(unsafe.SliceData(b))
	return b
}

// allocChunks returns chunks for size bytes (see newChunks) and their
// anchor (nil: heap memory, where arenas are not available).
func allocChunks(size int64, grace bool) (Chunks, *bodyMem) {
	if !arenasOn {
		return newChunks(size), nil
	}
	c := make(Chunks, 0, NumChunks(size))
	ext := make([]extent, 0, NumChunks(size))
	for size > 0 {
		n := min(size, ChunkSize)
		e, ok := arenas.alloc(n)
		if !ok {
			arenas.mu.Lock()
			for _, e := range ext {
				e.a.freeExtent(e) // no cleanup yet
			}
			arenas.mu.Unlock()
			return newChunks(int64(len(c))*ChunkSize + size), nil
		}
		ext = append(ext, e)
		c = append(c, e.bytes())
		size -= n
	}
	m := &bodyMem{chunks: ext}
	m.watch(grace)
	return c, m
}

func (e extent) bytes() []byte { return e.a.mem[e.at : e.at+e.size : e.at+e.size] }

// alloc finds n bytes in an arena, mapping a new one when none has room.
func (s *arenaSet) alloc(n int64) (extent, bool) {
	g := (n + arenaGrain - 1) / arenaGrain * arenaGrain
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) > 0 {
		s.reclaimLocked(time.Now())
	}
	for _, a := range s.list {
		if off := a.alloc(g); off >= 0 {
			return extent{a: a, at: uint32(off), size: uint32(g)}.trim(n), true
		}
	}
	if s.failed {
		return extent{}, false
	}
	a, err := newArena(arenaSize)
	if err != nil {
		s.failed = true
		return extent{}, false
	}
	i := 0
	for i < len(s.list) && s.list[i].base < a.base {
		i++
	}
	s.list = append(s.list, nil)
	copy(s.list[i+1:], s.list[i:])
	s.list[i] = a
	l := slices.Clone(s.list)
	s.snap.Store(&l)
	off := a.alloc(g)
	return extent{a: a, at: uint32(off), size: uint32(g)}.trim(n), true
}

// trim is e's first n bytes as the body sees them; the grain's padding
// stays allocated with it (free rounds up again).
func (e extent) trim(n int64) extent { e.size = uint32(n); return e }

// grains is e's length as allocated.
func (e extent) grains() int64 { return (int64(e.size) + arenaGrain - 1) / arenaGrain * arenaGrain }

// retireExtents retires ext: they wait for the readers that might still
// hold them, and the grace period if grace.
func retireExtents(ext []extent, grace bool) {
	t := readers.current()
	now := time.Now()
	arenas.mu.Lock()
	defer arenas.mu.Unlock()
	for _, e := range ext {
		if _, ok := arenas.released[e]; ok {
			delete(arenas.released, e)
			e.a.freeExtent(e)
			continue
		}
		arenas.pending = append(arenas.pending, retired{ext: e, grace: grace, ticket: t, at: now})
		arenas.retiredBytes += int64(e.size)
	}
	d := time.Duration(0)
	if grace {
		d = time.Duration(reuseGrace.Load())
	}
	arenas.scheduleLocked(d)
}

// scheduleLocked makes reclaim run after d unless it is already due.
func (s *arenaSet) scheduleLocked(d time.Duration) {
	at := time.Now().Add(d)
	switch {
	case s.timer == nil:
		s.timer = time.AfterFunc(d, s.reclaim)
	case s.due.IsZero() || at.Before(s.due):
		s.timer.Reset(d)
	default:
		return // due sooner already
	}
	s.due = at
}

func (s *arenaSet) reclaim() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.due = time.Time{}
	s.reclaimLocked(time.Now())
	if len(s.pending) > 0 {
		s.scheduleLocked(time.Second)
	}
}

// reclaimLocked frees the retired extents that no reader can hold anymore.
func (s *arenaSet) reclaimLocked(now time.Time) {
	oldest := readers.oldest()
	grace := time.Duration(reuseGrace.Load())
	keep := s.pending[:0]
	for _, r := range s.pending {
		if r.ticket < oldest && (!r.grace || now.Sub(r.at) >= grace) {
			r.ext.a.freeExtent(r.ext)
			s.retiredBytes -= int64(r.ext.size)
			s.reclaimedBytes += int64(r.ext.size)
			continue
		}
		keep = append(keep, r)
	}
	clear(s.pending[len(keep):])
	s.pending = keep
}

// freeExtent returns e to its arena's free space (arenas.mu held).
func (a *arena) freeExtent(e extent) { a.free(int64(e.at), e.grains()) }

// readers tracks the requests that may hold body slices (BeginRead).
var readers readerSet

type readerSet struct {
	mu     sync.Mutex
	seq    uint64
	active map[uint64]struct{}
}

// A Reading is a span in which the caller may use body slices of Items it
// got from a Store or a Hot cache, even after dropping the Items: memory
// the store lets go of meanwhile is not reused before End. The HTTP
// handler brackets every request with one.
type Reading struct{ ticket uint64 }

// BeginRead starts a Reading. End it when the bytes are no longer used
// (after the response was written).
func BeginRead() Reading {
	if !arenasOn {
		return Reading{}
	}
	readers.mu.Lock()
	readers.seq++
	t := readers.seq
	if readers.active == nil {
		readers.active = make(map[uint64]struct{})
	}
	readers.active[t] = struct{}{}
	readers.mu.Unlock()
	return Reading{ticket: t}
}

// End ends the Reading.
func (r Reading) End() {
	if r.ticket == 0 {
		return
	}
	readers.mu.Lock()
	delete(readers.active, r.ticket)
	readers.mu.Unlock()
}

// current is the last ticket handed out: every reader that began before
// now has a ticket ≤ it.
func (rs *readerSet) current() uint64 {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.seq
}

// oldest is the smallest ticket of a running reader (or one past the
// last ticket when none runs).
func (rs *readerSet) oldest() uint64 {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	m := rs.seq + 1
	for t := range rs.active {
		m = min(m, t)
	}
	return m
}

// ArenaStats describes the memory outside the Go heap that holds bodies.
type ArenaStats struct {
	Enabled  bool  // bodies live in arenas (false: in the Go heap)
	Arenas   int64 // arenas mapped
	Mapped   int64 // address space mapped for them
	Used     int64 // bytes in extents handed out (bodies, rounded to 64 bytes), retired ones included
	Retired  int64 // bytes of bodies let go of, waiting for readers and the grace period before reuse
	Free     int64 // free bytes below the arenas' high-water marks (fragmentation)
	FreeRuns int64 // free extents below the high-water marks
	Readers  int64 // Readings in progress

	Reclaimed int64 // bytes of retired bodies whose memory became free again, in all
	Sendfiles int64 // bodies (or parts) handed to sendfile(2), in all
}

// Arenas returns the process's arena counters.
func Arenas() ArenaStats {
	st := ArenaStats{Enabled: arenasOn}
	arenas.mu.Lock()
	for _, a := range arenas.list {
		st.Arenas++
		st.Mapped += a.size
		st.Used += a.used
		for _, l := range a.frees {
			st.Free += l
			st.FreeRuns++
		}
	}
	st.Retired = arenas.retiredBytes
	st.Reclaimed = arenas.reclaimedBytes
	arenas.mu.Unlock()
	st.Sendfiles = arenas.sendfiles.Load()
	readers.mu.Lock()
	st.Readers = int64(len(readers.active))
	readers.mu.Unlock()
	return st
}

// arenaOf finds the arena extent b lies in, if any.
func arenaOf(b []byte) (a *arena, off int64, ok bool) {
	l := arenas.snap.Load()
	if l == nil || len(b) == 0 {
		return nil, 0, false
	}
	p := uintptrOf(b)
	list := *l
	i, _ := slices.BinarySearchFunc(list, p, func(a *arena, p uintptr) int {
		switch {
		case a.base+uintptr(a.size) <= p:
			return -1
		case a.base > p:
			return 1
		}
		return 0
	})
	if i == len(list) || list[i].base > p || p+uintptr(len(b)) > list[i].base+uintptr(list[i].size) {
		return nil, 0, false
	}
	return list[i], int64(p - list[i].base), true
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// toArena moves it's bytes (not its Variants') into arena memory when they
// are in the Go heap (grace as allocBody's). it must not be shared yet.
func (it *Item) toArena(grace bool) {
	if !arenasOn || it.inArena() || it.Size <= 0 {
		return
	}
	switch old := it.Chunks(); {
	case old != nil:
		c, m := allocChunks(old.Len(), grace)
		for i := range c {
			copy(c[i], old[i])
		}
		it.setChunksKept(c, m)
	case it.bodyPtr() != nil:
		old := it.Body()
		copy(it.allocBody(grace), old)
	}
}
