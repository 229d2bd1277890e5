package shard

import (
	"container/list"
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// Hot holds copies of items other nodes own and this node is asked for
// often, inside a hard byte budget.
//
// Keys are versioned: an entry is found only for the version asked for, and
// a request for a newer version drops the older copy. Eviction is LRU, but
// admission is by observed frequency (TinyLFU): a candidate is let in only
// when it has been asked for at least twice recently, and it may only evict
// entries asked for less often than itself. So a key requested once never
// displaces a hot one, and a key requested ten times in a second is local
// after its second request. groupcache admits one in ten misses at random.
//
// Hot is safe for concurrent use. Bodies are shared, never copied out: the
// caller must not modify them.
type Hot struct {
	budget int64

	mu    sync.Mutex
	ll    *list.List // front: most recently used
	items map[string]*list.Element
	bytes int64

	freq *sketch

	hits, misses, admits, rejects, evicts atomic.Int64
	pushes                                atomic.Int64 // push.go
}

// hotEntry is one cached copy; Item is immutable.
type hotEntry struct {
	it   *Item
	cost int64
}

// entryOverhead approximates the memory of one entry beyond its bytes (map
// slot, list element, Item struct, strings), so that many small entries
// cannot overshoot the budget.
const entryOverhead = 256

// NewHot returns a hot cache holding at most budget bytes. A budget of 0
// disables it: nothing is ever admitted.
func NewHot(budget int64) *Hot {
	return &Hot{
		budget: budget,
		ll:     list.New(),
		items:  make(map[string]*list.Element),
		freq:   newSketch(budget),
	}
}

// cost is what holding it counts against the budget.
func cost(it *Item) int64 {
	c := held(it) + entryOverhead + int64(len(it.Path))
	for _, v := range it.Variants() {
		c += int64(len(v.Body)) + v.Chunks.Len()
	}
	return c
}

// Get returns the copy of path at version, if held. Every call, hit or
// miss, counts as a request of path for admission.
func (h *Hot) Get(path, version string) (*Item, bool) {
	h.freq.add(path)
	h.mu.Lock()
	el, ok := h.items[path]
	if ok {
		e := el.Value.(*hotEntry)
		if e.it.HasVersion(version) {
			h.ll.MoveToFront(el)
			h.mu.Unlock()
			h.hits.Add(1)
			return e.it, true
		}
		// A stale version: nobody will ask for it again.
		h.removeLocked(el)
	}
	h.mu.Unlock()
	h.misses.Add(1)
	return nil, false
}

// Contains reports whether a copy of path at version is held, without
// counting a request.
func (h *Hot) Contains(path, version string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	el, ok := h.items[path]
	return ok && el.Value.(*hotEntry).it.HasVersion(version)
}

// Admit offers a copy fetched from a peer. It is kept when it is requested
// often enough, fits the budget and is requested more often than whatever it
// would displace. It reports whether the copy was kept. it must hold its
// body.
func (h *Hot) Admit(it *Item) bool {
	c := cost(it)
	if c > h.budget || !it.Resident() {
		h.rejects.Add(1)
		return false
	}
	f := h.freq.estimate(it.Path)
	if f < 2 {
		h.rejects.Add(1)
		return false
	}
	if h.Contains(it.Path, it.Version()) {
		return true // a concurrent fetch got here first
	}
	// The copy kept lives in the same arenas as the store's items (a hot
	// hit is sent like a local one); it is made outside the lock, and
	// dropped at once if it is not kept after all.
	orig := it
	it = arenaCopy(it)
	kept := false
	defer func() {
		if !kept && it != orig {
			it.releaseBody() // the copy nobody saw
		}
	}()

	h.mu.Lock()
	defer h.mu.Unlock()
	if el, ok := h.items[it.Path]; ok {
		if SameVersion(el.Value.(*hotEntry).it, it) {
			return true // a concurrent fetch got here first
		}
		h.removeLocked(el)
	}
	// Find the victims first; evict only if all of them are colder.
	need := h.bytes + c - h.budget
	var victims []*list.Element
	for el := h.ll.Back(); need > 0 && el != nil; el = el.Prev() {
		e := el.Value.(*hotEntry)
		if h.freq.estimate(e.it.Path) >= f {
			h.rejects.Add(1)
			return false
		}
		victims = append(victims, el)
		need -= e.cost
	}
	kept = true
	for _, el := range victims {
		h.removeLocked(el)
		h.evicts.Add(1)
	}
	h.items[it.Path] = h.ll.PushFront(&hotEntry{it: it, cost: c})
	h.bytes += c
	h.admits.Add(1)
	return true
}

// arenaCopy returns it, or a copy of it whose bytes are in arena memory
// when its own are in the Go heap (a fetch from a peer).
func arenaCopy(it *Item) *Item {
	if !arenasOn || it.inArena() || it.Size <= 0 {
		return it
	}
	c := it.copyFields()
	c.toArena(false) // peers never fetch hot copies: readers are all to wait for
	return c
}

// Drop removes any copy of path (purge, or the owner said it changed) and
// reports whether there was one.
func (h *Hot) Drop(path string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	el, ok := h.items[path]
	if ok {
		h.removeLocked(el)
	}
	return ok
}

// DropPrefix removes the copies of every path starting with prefix.
func (h *Hot) DropPrefix(prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for p, el := range h.items {
		if len(p) >= len(prefix) && p[:len(prefix)] == prefix {
			h.removeLocked(el)
			n++
		}
	}
	return n
}

func (h *Hot) removeLocked(el *list.Element) {
	e := h.ll.Remove(el).(*hotEntry)
	delete(h.items, e.it.Path)
	h.bytes -= e.cost
}

// HotStats are a hot cache's counters.
type HotStats struct {
	Items, Bytes, Budget                  int64
	Hits, Misses, Admits, Rejects, Evicts int64
}

// Stats returns the cache's counters.
func (h *Hot) Stats() HotStats {
	h.mu.Lock()
	items, bytes := int64(len(h.items)), h.bytes
	h.mu.Unlock()
	return HotStats{
		Items: items, Bytes: bytes, Budget: h.budget,
		Hits: h.hits.Load(), Misses: h.misses.Load(),
		Admits: h.admits.Load(), Rejects: h.rejects.Load(), Evicts: h.evicts.Load(),
	}
}

// sketch estimates how often each key was requested recently: a count-min
// sketch of 4-bit counters (4 rows) in front of a doorkeeper bit set, as in
// TinyLFU. Every resetAt additions all counters are halved, so the past
// fades and a key that was hot yesterday does not stay hot forever.
type sketch struct {
	mu      sync.Mutex
	seed    maphash.Seed
	rows    [4][]uint8
	door    []uint64 // one bit per key hash: seen once since the last reset
	mask    uint64   // counter slots - 1
	dmask   uint64   // doorkeeper bits - 1
	adds    int
	resetAt int
}

// newSketch sizes the sketch for the number of entries a budget of that
// many bytes may hold (assuming 4 KiB objects), between 1Ki and 1Mi slots.
func newSketch(budget int64) *sketch {
	n := uint64(1024)
	for n < uint64(budget/4096) && n < 1<<20 {
		n <<= 1
	}
	s := &sketch{seed: maphash.MakeSeed(), mask: n - 1, dmask: 32*n - 1, resetAt: int(n) * 10}
	for i := range s.rows {
		s.rows[i] = make([]uint8, n)
	}
	// The doorkeeper sees up to resetAt (10n) distinct keys between resets;
	// 32n bits keep its false positives near a quarter at worst.
	s.door = make([]uint64, n/2)
	return s
}

func (s *sketch) index(key string) uint64 { return maphash.String(s.seed, key) }

// slot returns the counter index of row i for hash x.
func (s *sketch) slot(x uint64, i int) uint64 {
	return (x>>(16*i) ^ x*uint64(2*i+1)) & s.mask
}

func (s *sketch) add(key string) {
	x := s.index(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	d := (x >> 32) & s.dmask
	if s.door[d/64]&(1<<(d%64)) == 0 {
		// First sighting since the last reset: only the doorkeeper learns
		// of it, so one-off keys do not pollute the counters.
		s.door[d/64] |= 1 << (d % 64)
	} else {
		for i := range s.rows {
			if c := &s.rows[i][s.slot(x, i)]; *c < 15 {
				*c++
			}
		}
	}
	if s.adds++; s.adds >= s.resetAt {
		s.resetLocked()
	}
}

// estimate returns how many times key was added since the last reset
// (approximately, never less), counting the doorkeeper's one.
func (s *sketch) estimate(key string) int {
	x := s.index(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	d := (x >> 32) & s.dmask
	if s.door[d/64]&(1<<(d%64)) == 0 {
		return 0
	}
	m := uint8(15)
	for i := range s.rows {
		m = min(m, s.rows[i][s.slot(x, i)])
	}
	return int(m) + 1
}

func (s *sketch) resetLocked() {
	for i := range s.rows {
		for j := range s.rows[i] {
			s.rows[i][j] >>= 1
		}
	}
	clear(s.door)
	s.adds = 0
}
