package shard

import (
	"hash/maphash"
	"iter"
	"strings"
)

// fileTable is the store's records of the files it holds, by path: open
// addressing over a hash of the path (linear probing, tombstones for
// removed records), one 8-byte slot per record at a load between 3/8 and
// 3/4, 11 to 21 bytes a file, where a map[string]*fileRec took about 70
// (its key's string header, its value and the map's slack). The record
// keeps its path (the string the Item shares). Guarded by Store.mu, like
// the records; not safe for concurrent use.
type fileTable struct {
	seed  maphash.Seed
	slots []*fileRec // len a power of two, or 0
	live  int
	tombs int
}

// removedRec marks a slot whose record was removed: probes go on past it.
var removedRec = newFileRec("\x00(removed)")

const minFileSlots = 16

// get returns the record of p, or nil.
func (t *fileTable) get(p string) *fileRec {
	if t.live == 0 {
		return nil
	}
	mask := uint64(len(t.slots) - 1)
	for i := maphash.String(t.seed, p) & mask; ; i = (i + 1) & mask {
		r := t.slots[i]
		if r == nil {
			return nil
		}
		if r != removedRec && r.path() == p {
			return r
		}
	}
}

// put adds r, whose path has no record yet.
func (t *fileTable) put(r *fileRec) {
	if len(t.slots) == 0 {
		t.seed = maphash.MakeSeed()
		t.slots = make([]*fileRec, minFileSlots)
	} else if (t.live+t.tombs+1)*4 > len(t.slots)*3 {
		t.rebuild()
	}
	mask := uint64(len(t.slots) - 1)
	for i := maphash.String(t.seed, r.path()) & mask; ; i = (i + 1) & mask {
		switch t.slots[i] {
		case nil:
			t.slots[i] = r
			t.live++
			return
		case removedRec:
			t.slots[i] = r
			t.live++
			t.tombs--
			return
		}
	}
}

// remove removes the record of p, if any.
func (t *fileTable) remove(p string) {
	if t.live == 0 {
		return
	}
	mask := uint64(len(t.slots) - 1)
	for i := maphash.String(t.seed, p) & mask; ; i = (i + 1) & mask {
		r := t.slots[i]
		if r == nil {
			return
		}
		if r != removedRec && r.path() == p {
			t.slots[i] = removedRec
			t.live--
			t.tombs++
			if len(t.slots) > minFileSlots && t.live*16 < len(t.slots) {
				t.rebuild()
			}
			return
		}
	}
}

// rebuild makes a table of the live records at a load of 3/8 (or the
// smallest one).
func (t *fileTable) rebuild() {
	n := minFileSlots
	for n*3 < t.live*8 {
		n *= 2
	}
	old := t.slots
	t.slots = make([]*fileRec, n)
	t.live, t.tombs = 0, 0
	mask := uint64(n - 1)
	for _, r := range old {
		if r == nil || r == removedRec {
			continue
		}
		i := maphash.String(t.seed, r.path()) & mask
		for t.slots[i] != nil {
			i = (i + 1) & mask
		}
		t.slots[i] = r
		t.live++
	}
}

// len is the number of records.
func (t *fileTable) len() int { return t.live }

// all yields every record with its path, in no particular order. The
// table must not change meanwhile.
func (t *fileTable) all() iter.Seq2[string, *fileRec] {
	return func(yield func(string, *fileRec) bool) {
		for _, r := range t.slots {
			if r == nil || r == removedRec {
				continue
			}
			if !yield(r.path(), r) {
				return
			}
		}
	}
}

// names is the set of names a directory's record tracks (the files this
// node holds in it and its subdirectories): packed in one string while
// there are few, as in most directories (a node holds a share of each),
// each name followed by a NUL (no file name has one); a map past namesFew.
// A directory with four names of ten bytes takes a 48-byte string, where a
// slice of their string headers took 64 bytes (128 past four), an empty
// map 48 and one with a few names 184.
type names struct {
	packed string
	many   map[string]struct{}
}

const namesFew = 32

// index returns the offset of name in packed, or -1.
func (n *names) index(name string) int {
	for off := 0; off < len(n.packed); {
		end := off + strings.IndexByte(n.packed[off:], 0)
		if n.packed[off:end] == name {
			return off
		}
		off = end + 1
	}
	return -1
}

func (n *names) add(name string) {
	if n.many != nil {
		n.many[name] = struct{}{}
		return
	}
	if n.index(name) >= 0 {
		return
	}
	if n.len() < namesFew {
		n.packed += name + "\x00"
		return
	}
	many := make(map[string]struct{}, 2*namesFew)
	for x := range n.all() {
		many[strings.Clone(x)] = struct{}{}
	}
	many[name] = struct{}{}
	n.many, n.packed = many, ""
}

func (n *names) remove(name string) {
	if n.many != nil {
		delete(n.many, name)
		return
	}
	if i := n.index(name); i >= 0 {
		n.packed = n.packed[:i] + n.packed[i+len(name)+1:]
	}
}

func (n *names) len() int {
	if n.many != nil {
		return len(n.many)
	}
	return strings.Count(n.packed, "\x00")
}

// all yields every name. The loop may remove the name it was given (and
// only that one) as it goes: it walks the names as they were when it
// began.
func (n *names) all() iter.Seq[string] {
	return func(yield func(string) bool) {
		if n.many != nil {
			for name := range n.many {
				if !yield(name) {
					return
				}
			}
			return
		}
		packed := n.packed
		for off := 0; off < len(packed); {
			end := off + strings.IndexByte(packed[off:], 0)
			if !yield(packed[off:end]) {
				return
			}
			off = end + 1
		}
	}
}
