package shard

import (
	"math/bits"
	"unsafe"
)

// What a store's bookkeeping costs on the Go heap, besides the bytes it
// holds: for the Go memory limit (the root package's memlimit.go), which
// must leave room for it, and for operators sizing nodes. An estimate from
// counts kept as the store changes (never a walk of its maps), calibrated
// against the heap by TestMetadataBytesEstimate.
//
// Per file this node holds: its record, its slot in the files table and
// its entry in its directory's names; per published item: the Item and
// its index slot; per directory (every directory of the tree,
// held or not): its record, its entry in the dirs map and in its parent's
// names; and the paths themselves. The files of other nodes cost nothing here. Variants
// (a published copy of the Item and the Variant slice) are not counted.

const (
	// mapSlack is what a Go map entry costs beyond its key and value: the
	// control byte, and the free slots of groups kept between 7/16 and 7/8
	// full.
	mapSlack = 18

	// stringHeader is the size of a string header (a map key).
	stringHeader = int64(unsafe.Sizeof(""))

	// indexSlot is an index entry: an 8-byte slot at a load between 3/8
	// and 3/4.
	indexSlot = 14

	// nameEntry is a name in a directory's names: its bytes and a NUL in
	// the directory's packed string, for a name of about a dozen bytes,
	// and the string's rounding to its size class (a map past namesFew
	// names costs more per name, the key's header and mapSlack, but few
	// directories have one).
	nameEntry = 16
)

var (
	itemBytes = heapSizeClass(int64(unsafe.Sizeof(Item{})))

	// metaPerFile is a held file's record, its slot in the files table
	// (as an index slot) and its entry in its directory's names.
	metaPerFile = heapSizeClass(int64(unsafe.Sizeof(fileRec{}))) + indexSlot + nameEntry

	// metaPerItem is a published item: the Item (its ETag is its Tag, in
	// it), its index slot.
	metaPerItem = itemBytes + indexSlot

	// metaPerDir is a directory: its record, its entry in the dirs map and
	// in its parent's names.
	metaPerDir = heapSizeClass(int64(unsafe.Sizeof(dirRec{}))) +
		(stringHeader + 8 + mapSlack) + nameEntry
)

// heapSizeClass rounds n up to the Go allocator's size class (roughly: the
// classes are 16 bytes apart up to 256, then closer than 1/8 of the size).
func heapSizeClass(n int64) int64 {
	switch {
	case n <= 8:
		return 8
	case n <= 256:
		return (n + 15) &^ 15
	default:
		step := int64(1) << (63 - bits.LeadingZeros64(uint64(n)) - 3) // an eighth of the power of two below n
		return (n + step - 1) &^ (step - 1)
	}
}

// MetadataBytes estimates the Go heap the store's bookkeeping takes, besides
// item bodies (Stats.ResidentBytes): records of the files this node holds,
// published items, directories and paths. It costs a few atomic loads.
func (s *Store) MetadataBytes() int64 {
	s.mu.RLock()
	files := int64(s.files.len())
	s.mu.RUnlock()
	items := s.stats.items.Load()
	dirs := s.stats.dirs.Load()
	paths := s.stats.pathBytes.Load()
	// A path string is rounded up to its size class: about an eighth more
	// on average, at least 8 bytes (a third more) for short ones.
	return files*metaPerFile + items*metaPerItem + dirs*metaPerDir + paths + paths/4
}
