package shard

import (
	"hash/maphash"
	"sync/atomic"
)

// index maps a slash-rooted path to its published *Item (files only:
// Store.dirs answers for directories): the read side of the Store, keyed
// by Item.Path.
//
// It is an open-addressing hash table of item pointers, with linear
// probing. Reads take no lock and allocate nothing: they load the table,
// then the slots, atomically. Writes come from one writer at a time (the
// Store's writer side, under Store.mu): a new entry goes into a free slot,
// a changed one replaces its slot's pointer, a removed one leaves a
// tombstone; when the live entries and tombstones fill three quarters of
// the slots, or the live ones fall under a sixteenth, the writer builds a
// new table and publishes it with one atomic store. A reader still on the old table sees the index as it was a
// moment before. Each entry costs one slot, 8 bytes, at a load of 3/8 to
// 3/4: 11 to 21 bytes per item (a sync.Map cost 128).
type index struct {
	tab atomic.Pointer[table]

	// The writer's counts, under Store.mu.
	live, tombs int
}

type table struct {
	seed  maphash.Seed
	mask  uint64
	slots []atomic.Pointer[Item]
}

// tombstone marks a slot whose entry was removed: probes go on past it.
var tombstone = &Item{Path: "\x00(removed)"}

const minSlots = 16

func newIndex() *index {
	x := new(index)
	x.tab.Store(newTable(minSlots))
	return x
}

func newTable(n int) *table {
	return &table{seed: maphash.MakeSeed(), mask: uint64(n - 1), slots: make([]atomic.Pointer[Item], n)}
}

// load returns the entry for p.
func (x *index) load(p string) (*Item, bool) {
	t := x.tab.Load()
	for i := maphash.String(t.seed, p) & t.mask; ; i = (i + 1) & t.mask {
		it := t.slots[i].Load()
		if it == nil {
			return nil, false
		}
		if it != tombstone && it.Path == p {
			return it, true
		}
	}
}

// store sets the entry for it.Path to it. The caller is the writer.
func (x *index) store(it *Item) {
	t := x.tab.Load()
	free := -1
	for i := maphash.String(t.seed, it.Path) & t.mask; ; i = (i + 1) & t.mask {
		cur := t.slots[i].Load()
		if cur == nil {
			if free < 0 {
				free = int(i)
			} else {
				x.tombs--
			}
			break
		}
		if cur == tombstone {
			if free < 0 {
				free = int(i)
			}
			continue
		}
		if cur.Path == it.Path {
			t.slots[i].Store(it)
			return
		}
	}
	t.slots[free].Store(it)
	x.live++
	if 4*(x.live+x.tombs) > 3*len(t.slots) {
		x.grow()
	}
}

// delete removes the entry for p, if any. The caller is the writer.
func (x *index) delete(p string) {
	t := x.tab.Load()
	for i := maphash.String(t.seed, p) & t.mask; ; i = (i + 1) & t.mask {
		cur := t.slots[i].Load()
		if cur == nil {
			return
		}
		if cur != tombstone && cur.Path == p {
			t.slots[i].Store(tombstone)
			x.live--
			x.tombs++
			if len(t.slots) > minSlots && 16*x.live < len(t.slots) {
				x.grow() // shrink: a load under 1/16
			}
			return
		}
	}
}

// grow publishes a table sized for the live entries (a load of at most
// 1/2), without tombstones: twice as large when the slots fill up (from
// just over 3/4 to just over 3/8), smaller when most entries are gone. The
// caller is the writer.
func (x *index) grow() {
	n := minSlots
	for 2*x.live > n { // "at most 3/8" quadrupled a table filled just over 3/4
		n *= 2
	}
	old, t := x.tab.Load(), newTable(n)
	for i := range old.slots {
		it := old.slots[i].Load()
		if it == nil || it == tombstone {
			continue
		}
		j := maphash.String(t.seed, it.Path) & t.mask
		for t.slots[j].Load() != nil {
			j = (j + 1) & t.mask
		}
		t.slots[j].Store(it)
	}
	x.tombs = 0
	x.tab.Store(t)
}

// clear empties the index. The caller is the writer.
func (x *index) clear() {
	x.live, x.tombs = 0, 0
	x.tab.Store(newTable(minSlots))
}

// each calls fn for every entry until it returns false. Entries added or
// removed meanwhile may or may not be seen.
func (x *index) each(fn func(*Item) bool) {
	t := x.tab.Load()
	for i := range t.slots {
		if it := t.slots[i].Load(); it != nil && it != tombstone && !fn(it) {
			return
		}
	}
}
