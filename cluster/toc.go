package cluster

import (
	"encoding/hex"
	"hash/maphash"
	"math/bits"
	"time"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// The compact table of content.
//
// A node keeps, per group and per peer, what that peer published: for
// every file, what a node that does not hold it needs to answer 404, HEAD
// and 304 and to route a fetch. It is a flat open-addressing table of
// 48-byte slots without pointers (Robin Hood linear probing), keyed by a
// 64-bit hash of the path, sized for a load of 0.8 (60 bytes per file),
// growing in steps of 25% past 0.875 and shrinking under 0.5: a table of
// millions of files is one allocation the garbage collector does not scan.
//
// A slot holds the content hash (the ETag and Version are derived from
// it), size, modification time, an index into the group's interned content
// types and which precompressed variants exist. What a slot cannot say —
// the variants' sizes and ETags — is asked of the owner with the full path
// on first use (a META request) and kept in a small bounded cache of
// items (toc_itemcache.go), which also spares a hit on a remote file from
// building an Item per request.
//
// The path itself is not kept. A second, independent 32-bit hash (the
// fingerprint) tells apart paths whose keys collide; two paths whose key
// and fingerprint both collide (one chance in 2^96 per pair) are detected
// when a snapshot lists both, and the slot is then marked collided: a
// lookup of either asks the owner with the full path. Entries that do not
// fit a slot (an ETag that is not derived from a 128-bit content hash, a
// variant in an encoding other than br, gzip and zstd, more content types
// than maxTypes) are kept whole in a side map, by path.

// tocSlot is one entry: 48 bytes, no pointers.
type tocSlot struct {
	key    uint64 // hash of the path; 0: empty slot
	size   int64
	mtime  int64     // unix nanoseconds; 0 for the zero time
	digest shard.Tag // the content hash: Version is its hex, ETag that quoted
	fp     uint32    // an independent hash of the path
	ctype  uint16    // index into the group's content types
	flags  uint8
	_      uint8
}

// Slot flags.
const (
	slotBr   = 1 << iota // a br variant exists
	slotGzip             // a gzip variant exists
	slotZstd             // a zstd variant exists
	// slotGen is the generation the slot was last written in: a snapshot
	// flips the table's generation, and sweeps the slots it did not write.
	slotGen
	// slotCollided: two paths share the slot's key and fingerprint; the
	// owner is asked with the full path.
	slotCollided
	// slotSide: the entry is kept whole in the side map.
	slotSide

	slotEncodings = slotBr | slotGzip | slotZstd
)

// slotSize is what a slot takes.
const slotSize = 48

// encodingFlag maps the encodings a slot can name to their flags.
var encodingFlag = map[string]uint8{"br": slotBr, "gzip": slotGzip, "zstd": slotZstd}

// Load factors, in eighths and tenths: see the package comment above.
const (
	minTableSlots = 8
	growAt        = 7 // eighths: grow past a load of 7/8
	shrinkUnder   = 4 // eighths: shrink under a load of 1/2
)

// capFor returns the slots for n entries at a load of 0.8.
func capFor(n int) int { return max(minTableSlots, n+n/4+1) }

// tocTable is one peer's table of one group. Not safe for concurrent use:
// the group's lock guards it.
type tocTable struct {
	slots []tocSlot
	n     int
	gen   uint8 // slotGen or 0: the current generation
	// snapshot: a snapshot is being applied (since begin).
	snapshot bool
	side     map[string]sideEntry
	// sideWeight is the bytes of the side entries' strings.
	sideWeight int64
}

type sideEntry struct {
	it  *shard.Item
	gen uint8
}

// home is key's first slot in a table of n slots (fast range reduction:
// any n, no modulo).
func home(key uint64, n int) int {
	hi, _ := bits.Mul64(key, uint64(n))
	return int(hi)
}

// dist is how far slot i is from the home of the key it holds.
func (t *tocTable) dist(i int) int {
	d := i - home(t.slots[i].key, len(t.slots))
	if d < 0 {
		d += len(t.slots)
	}
	return d
}

// find returns the index of the slot for key and fp, -1 if none.
func (t *tocTable) find(key uint64, fp uint32) int {
	if t.n == 0 {
		return -1
	}
	n := len(t.slots)
	i := home(key, n)
	for d := 0; ; d++ {
		s := &t.slots[i]
		if s.key == 0 || t.dist(i) < d {
			return -1
		}
		if s.key == key && s.fp == fp {
			return i
		}
		if i++; i == n {
			i = 0
		}
	}
}

// insert places s, whose key and fingerprint are not in the table.
func (t *tocTable) insert(s tocSlot) {
	if len(t.slots) == 0 || 8*(t.n+1) > growAt*len(t.slots) {
		t.resize(capFor(t.n + 1))
	}
	n := len(t.slots)
	i := home(s.key, n)
	for d := 0; ; d++ {
		cur := &t.slots[i]
		if cur.key == 0 {
			*cur = s
			t.n++
			return
		}
		if cd := t.dist(i); cd < d {
			// Robin Hood: the entry nearer its home moves on.
			s, *cur = *cur, s
			d = cd
		}
		if i++; i == n {
			i = 0
		}
	}
}

// removeAt empties slot i, shifting the entries after it back.
func (t *tocTable) removeAt(i int) {
	n := len(t.slots)
	for {
		j := i + 1
		if j == n {
			j = 0
		}
		if t.slots[j].key == 0 || t.dist(j) == 0 {
			t.slots[i] = tocSlot{}
			break
		}
		t.slots[i] = t.slots[j]
		i = j
	}
	t.n--
	if len(t.slots) > minTableSlots && 8*t.n < shrinkUnder*len(t.slots) && !t.snapshot {
		t.resize(capFor(t.n))
	}
}

// resize moves the entries to a table of size slots.
func (t *tocTable) resize(size int) {
	old := t.slots
	t.slots = make([]tocSlot, max(size, minTableSlots))
	t.n = 0
	for i := range old {
		if old[i].key != 0 {
			t.insert(old[i])
		}
	}
}

// begin starts applying a snapshot that lists about items entries: the
// entries written until end are the new generation, the others are swept
// by end. The table is sized for the larger of both once, up front.
func (t *tocTable) begin(items int) {
	if t.snapshot {
		// One that never ended (its connection died): what it did not
		// write goes now, or flipping the generation back would keep it
		// for good.
		t.end()
	}
	t.gen ^= slotGen
	t.snapshot = true
	if want := capFor(max(items, t.n)); want > len(t.slots) {
		t.resize(want)
	}
}

// end sweeps the entries the snapshot begun by begin did not write. It
// returns how many it removed.
func (t *tocTable) end() int {
	t.snapshot = false
	removed := 0
	for p, e := range t.side {
		if e.gen != t.gen {
			delete(t.side, p)
			t.sideWeight -= metaWeight(e.it)
		}
	}
	n := len(t.slots)
	if t.n > 0 {
		// Start after an empty slot: no run of entries wraps past the
		// start, so a backward shift never moves an entry before i.
		start := 0
		for t.slots[start].key != 0 {
			start++
		}
		for k := 1; k <= n; k++ {
			i := (start + k) % n
			for t.slots[i].key != 0 && t.slots[i].flags&slotGen != t.gen {
				t.removeAtNoShrink(i)
				removed++
			}
		}
	}
	if len(t.slots) > minTableSlots && 8*t.n < shrinkUnder*len(t.slots) {
		t.resize(capFor(t.n))
	}
	return removed
}

// removeAtNoShrink is removeAt without the shrink (end shrinks once).
func (t *tocTable) removeAtNoShrink(i int) {
	snap := t.snapshot
	t.snapshot = true
	t.removeAt(i)
	t.snapshot = snap
}

// bytes is what the table takes: its slots and its side entries' strings.
func (t *tocTable) bytes() int64 { return int64(len(t.slots))*slotSize + t.sideWeight }

// entries is how many entries the table holds (side entries included).
func (t *tocTable) entries() int { return t.n }

// typeTable interns the content types of a group's tables: a slot holds an
// index. Index 0 is "".
type typeTable struct {
	names []string
	index map[string]uint16
}

// maxTypes bounds the content types interned per group; entries of other
// types are kept whole (a peer cannot grow the table without bound).
const maxTypes = 4096

func (tt *typeTable) intern(s string) (uint16, bool) {
	if s == "" {
		return 0, true
	}
	if i, ok := tt.index[s]; ok {
		return i, true
	}
	if len(tt.names) == 0 {
		tt.names = append(tt.names, "")
		tt.index = map[string]uint16{}
	}
	if len(tt.names) >= maxTypes {
		return 0, false
	}
	i := uint16(len(tt.names))
	tt.names = append(tt.names, s)
	tt.index[s] = i
	return i, true
}

func (tt *typeTable) name(i uint16) string {
	if int(i) < len(tt.names) {
		return tt.names[i]
	}
	return ""
}

// pathHash is the hash a group keys its tables by: a 64-bit key (never 0)
// and an independent 32-bit fingerprint. Tests inject their own to force
// collisions.
type pathHash func(path string) (key uint64, fp uint32)

// newPathHash returns a hash with seeds of its own: a peer cannot choose
// paths that collide on this node.
func newPathHash() pathHash {
	s1, s2 := maphash.MakeSeed(), maphash.MakeSeed()
	return func(p string) (uint64, uint32) {
		k := maphash.String(s1, p)
		if k == 0 {
			k = 1
		}
		return k, uint32(maphash.String(s2, p))
	}
}

// slotFor encodes meta into a slot, or reports that it does not fit one
// (see the package comment above).
func (tt *typeTable) slotFor(meta *peering.Meta, key uint64, fp uint32) (tocSlot, bool) {
	s := tocSlot{key: key, fp: fp, size: meta.Size}
	if !meta.ModTime.IsZero() {
		s.mtime = meta.ModTime.UnixNano()
		if s.mtime == 0 {
			return s, false
		}
	}
	v := meta.Version
	if len(v) != 32 || len(meta.ETag) != 34 || meta.ETag[0] != '"' || meta.ETag[33] != '"' || meta.ETag[1:33] != v {
		return s, false
	}
	for i := range len(v) {
		if c := v[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return s, false
		}
	}
	if _, err := hex.Decode(s.digest[:], []byte(v)); err != nil || s.digest == (shard.Tag{}) {
		return s, false // a zero Tag is an Item's "no ETag"
	}
	for _, vr := range meta.Variants {
		f, ok := encodingFlag[vr.Encoding]
		if !ok || s.flags&f != 0 {
			return s, false
		}
		s.flags |= f
	}
	ct, ok := tt.intern(meta.ContentType)
	if !ok {
		return s, false
	}
	s.ctype = ct
	return s, true
}

// item builds the Item a slot describes for path, without variants.
func (tt *typeTable) item(path string, s *tocSlot) *shard.Item {
	it := &shard.Item{Path: path, Size: s.size, Tag: s.digest}
	it.SetContentType(tt.name(s.ctype))
	if s.mtime != 0 {
		it.SetModTime(time.Unix(0, s.mtime))
	}
	return it
}

// sameSlot reports whether a and b describe the same version of an entry
// (whatever their generations).
func sameSlot(a, b *tocSlot) bool {
	return a.key == b.key && a.fp == b.fp && a.size == b.size && a.mtime == b.mtime && a.digest == b.digest &&
		a.ctype == b.ctype && a.flags&^slotGen == b.flags&^slotGen
}
