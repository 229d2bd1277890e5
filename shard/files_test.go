package shard

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"
)

// TestFileTable: the files table against a map, through growth, removals
// (tombstones), shrinking and re-adding, with every path checked after
// each round and the iteration yielding each record once.
func TestFileTable(t *testing.T) {
	var tab fileTable
	model := map[string]*fileRec{}
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(round string) {
		t.Helper()
		if tab.len() != len(model) {
			t.Fatalf("%s: len %d, want %d", round, tab.len(), len(model))
		}
		seen := map[string]bool{}
		for p, r := range tab.all() {
			if seen[p] {
				t.Fatalf("%s: %s yielded twice", round, p)
			}
			seen[p] = true
			if model[p] != r || r.path() != p {
				t.Fatalf("%s: %s yielded %p (path %q), want %p", round, p, r, r.path(), model[p])
			}
		}
		if len(seen) != len(model) {
			t.Fatalf("%s: %d yielded, want %d", round, len(seen), len(model))
		}
		for p, r := range model {
			if got := tab.get(p); got != r {
				t.Fatalf("%s: get(%s) = %p, want %p", round, p, got, r)
			}
		}
		for i := range 100 {
			if p := fmt.Sprintf("/absent/%d", i); tab.get(p) != nil {
				t.Fatalf("%s: get(%s) found a record", round, p)
			}
		}
		if tab.live > 0 && (tab.live+tab.tombs)*4 > len(tab.slots)*3 {
			t.Fatalf("%s: %d live and %d tombstones in %d slots: over 3/4", round, tab.live, tab.tombs, len(tab.slots))
		}
	}
	for round := range 6 {
		// Grow.
		for i := range 5000 {
			p := fmt.Sprintf("/d%d/f%d-%d", i%97, round, i)
			r := newFileRec(p)
			tab.put(r)
			model[p] = r
		}
		check(fmt.Sprintf("round %d, added", round))
		// Remove most (a shrink), some twice, some never present.
		for p := range model {
			if rng.IntN(10) < 9 {
				tab.remove(p)
				tab.remove(p)
				delete(model, p)
			}
		}
		tab.remove("/never/there")
		check(fmt.Sprintf("round %d, removed", round))
	}
	// Remove everything, then use the table again.
	for p := range model {
		tab.remove(p)
		delete(model, p)
	}
	check("emptied")
	if len(tab.slots) > minFileSlots {
		t.Errorf("an empty table kept %d slots", len(tab.slots))
	}
	r := newFileRec("/again")
	tab.put(r)
	model["/again"] = r
	check("reused")
}

// TestSeen: what storage was last seen to hold at a path is its record's
// data's size and modification time, or else kept in Store.seen, exactly
// (the zero time included: a path only listed); a record stays in the
// 32-byte size class, and seen empties and shrinks as loads catch up.
func TestSeen(t *testing.T) {
	s := &Store{}
	for _, tm := range []time.Time{
		{},
		time.Unix(0, 0),
		time.Unix(1796254666, 896072123),
		time.Unix(-1, 999999999),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
	} {
		rec := newFileRec("/x")
		s.setSeenLocked(rec, 7, tm)
		if v := s.seenLocked(rec); v.size != 7 || !v.mtime().Equal(tm) || v.mtime().IsZero() != tm.IsZero() || !s.staleLocked(rec) {
			t.Errorf("seen %v, not loaded: %d bytes of %v (zero %v), stale %v", tm, v.size, v.mtime(), v.mtime().IsZero(), s.staleLocked(rec))
		}
		rec.setData(withModTime(&Item{Path: "/x", Size: 7}, tm)) // loaded
		s.setSeenLocked(rec, 7, tm)
		if len(s.seen) != 0 || s.staleLocked(rec) || s.seenLocked(rec) != seenOf(7, tm) {
			t.Errorf("seen %v, loaded: %d entries, stale %v", tm, len(s.seen), s.staleLocked(rec))
		}
		s.setSeenLocked(rec, 7, tm.Add(time.Nanosecond)) // changed on storage
		if len(s.seen) != 1 || !s.staleLocked(rec) || s.seenLocked(rec) != seenOf(7, tm.Add(time.Nanosecond)) {
			t.Errorf("seen %v, then a nanosecond later: %d entries, stale %v", tm, len(s.seen), s.staleLocked(rec))
		}
		s.forgetSeenLocked(rec)
	}

	recs := make([]*fileRec, 4000)
	for i := range recs {
		recs[i] = newFileRec(fmt.Sprint("/f", i))
		s.setSeenLocked(recs[i], int64(i), time.Unix(int64(i), 0))
	}
	for _, rec := range recs[:3500] {
		s.forgetSeenLocked(rec)
	}
	if len(s.seen) != 500 || s.seenPeak >= 4000/4 {
		t.Errorf("after 3500 of 4000 were forgotten: %d entries, peak %d; want 500, in a map built anew under a quarter of 4000", len(s.seen), s.seenPeak)
	}
	for i, rec := range recs[3500:] {
		if v := s.seenLocked(rec); v.size != int64(3500+i) {
			t.Fatalf("%s: %d bytes after the map was built anew", rec.path(), v.size)
		}
		s.forgetSeenLocked(rec)
	}
	if s.seen != nil {
		t.Errorf("seen is %d entries once all were forgotten; want nil", len(s.seen))
	}

	if n := heapSizeClass(int64(unsafe.Sizeof(fileRec{}))); n != 16 {
		t.Errorf("a fileRec takes %d bytes (%d as allocated); want 16", unsafe.Sizeof(fileRec{}), n)
	}
}

// TestFileRecState: a record's four flags and its latest load's number
// share one word without disturbing each other, and a number is told from
// the next ones, across the wrap of its low bits too.
func TestFileRecState(t *testing.T) {
	flags := []recState{recQueued, recLoading, recDirty, recFailed}
	var rec fileRec
	for _, seq := range []uint64{1, 2, 1<<28 - 1, 1 << 28, 1<<28 + 1, 1<<40 + 12345} {
		for mask := range 1 << len(flags) {
			for i, f := range flags {
				rec.set(f, mask&(1<<i) != 0)
			}
			rec.setSeq(seq)
			for i, f := range flags {
				if rec.is(f) != (mask&(1<<i) != 0) {
					t.Fatalf("seq %d, flags %04b: flag %d is %v after setSeq", seq, mask, i, rec.is(f))
				}
			}
			if !rec.seqIs(seq) || rec.seqIs(seq+1) || rec.seqIs(seq-1) {
				t.Fatalf("seq %d, flags %04b: seqIs(seq) %v, seqIs(seq+1) %v, seqIs(seq-1) %v",
					seq, mask, rec.seqIs(seq), rec.seqIs(seq+1), rec.seqIs(seq-1))
			}
			rec.set(flags[mask%len(flags)], mask%2 == 0)
			if !rec.seqIs(seq) {
				t.Fatalf("seq %d: a flag changed the number", seq)
			}
		}
	}
}

// TestNames: a directory's names against a map, across the switch from a
// packed string to a map, with the loop over them removing the name it was given
// (as a rescan and a directory's removal do) and seeing every name once.
func TestNames(t *testing.T) {
	for _, total := range []int{0, 1, 5, namesFew, namesFew + 1, 3 * namesFew} {
		var n names
		model := map[string]bool{}
		for i := range total {
			name := fmt.Sprintf("f%d", i)
			n.add(name)
			n.add(name) // twice: a set
			model[name] = true
		}
		if n.len() != len(model) {
			t.Fatalf("%d names: len %d", total, n.len())
		}
		if (n.many != nil) != (total > namesFew) {
			t.Errorf("%d names: map %v; want a map only past %d", total, n.many != nil, namesFew)
		}
		// Remove every other name while looping.
		seen := map[string]bool{}
		for name := range n.all() {
			if seen[name] {
				t.Fatalf("%d names: %s yielded twice", total, name)
			}
			seen[name] = true
			if len(seen)%2 == 0 {
				n.remove(name)
				delete(model, name)
			}
		}
		if len(seen) != total {
			t.Errorf("%d names: the loop saw %d", total, len(seen))
		}
		n.remove("absent")
		left := map[string]bool{}
		for name := range n.all() {
			left[name] = true
		}
		if len(left) != len(model) || n.len() != len(model) {
			t.Fatalf("%d names: %d left (len %d), want %d", total, len(left), n.len(), len(model))
		}
		for name := range model {
			if !left[name] {
				t.Errorf("%d names: %s lost", total, name)
			}
		}
		for name := range model {
			n.remove(name)
		}
		if n.len() != 0 {
			t.Errorf("%d names: %d left after removing all", total, n.len())
		}
	}
}

// TestFileRecPathAndData: a record's path is its own until it is loaded,
// then its data's; flags and the load number survive loading, and neither
// setting them nor the number touches whether it is loaded.
func TestFileRecPathAndData(t *testing.T) {
	rec := newFileRec("/dir/a.txt")
	if rec.path() != "/dir/a.txt" || rec.data() != nil {
		t.Fatalf("new: path %q, data %v", rec.path(), rec.data())
	}
	rec.set(recQueued, true)
	rec.setSeq(uint64(recSeqMask))
	it := &Item{Path: "/dir/a.txt", Size: 3}
	rec.setData(it)
	if rec.path() != "/dir/a.txt" || rec.data() != it || !rec.is(recQueued) || !rec.seqIs(uint64(recSeqMask)) {
		t.Fatalf("loaded: path %q, data %p (want %p), queued %v, seq kept %v", rec.path(), rec.data(), it, rec.is(recQueued), rec.seqIs(uint64(recSeqMask)))
	}
	rec.setSeq(uint64(recSeqMask) + 1) // wraps to 0 in the record's bits
	for _, f := range []recState{recQueued, recLoading, recDirty, recFailed} {
		rec.set(f, true)
		rec.set(f, false)
	}
	if rec.data() != it || rec.path() != "/dir/a.txt" {
		t.Fatalf("after flags and a wrapped number: data %p, path %q", rec.data(), rec.path())
	}
}
