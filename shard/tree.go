package shard

import (
	"maps"
	"path"
	"time"
	"unsafe"
)

// The writer side of a Store: what storage was last seen to hold (every
// directory under the root, every regular file this node holds, and every
// symbolic link that resolves inside the root to either, as what it
// resolves to), what was loaded from it, and the rules that turn that into
// published Items. Everything here runs with s.mu held.
//
// A node holds the files it owns and their precompressed siblings (see
// needLocked); it keeps no record of the others' files, and never stats or
// watches them: their changes are their owners' to see and publish, and a
// lookup of one reads storage. Listings of every directory find new paths.

// fileRec is one regular file under the root that this node holds, or a
// symbolic link to one (its size and modification time are the target's).
// 16 bytes (files.go keeps it in a table by its path; what storage was
// last seen to hold there is its data, or in Store.seen): a loaded record
// points to its data, whose Path is the record's; one not loaded yet to its
// path. Where it kept both, and the path's string header, it took 32.
type fileRec struct {
	ref unsafe.Pointer // its data (*Item) once loaded (recLoaded), else its path (*string)
	st  recState       // the latest load's number and the flags below
}

// newFileRec returns a record, not loaded, of the file at p.
func newFileRec(p string) *fileRec { return &fileRec{ref: unsafe.Pointer(&p)} }

// path is the record's path: its key in Store.files.
func (rec *fileRec) path() string {
	if rec.st&recLoaded != 0 {
		return (*Item)(rec.ref).Path
	}
	return *(*string)(rec.ref)
}

// data is the last loaded data (no Variants); nil if not loaded.
func (rec *fileRec) data() *Item {
	if rec.st&recLoaded != 0 {
		return (*Item)(rec.ref)
	}
	return nil
}

// setData sets the record's data, an Item of the record's path: the
// record keeps it (Item.keep) and lets go of its previous data
// (Item.letGo). Under the store's mu.
func (rec *fileRec) setData(it *Item) {
	old := rec.data()
	if old == it {
		return
	}
	it.keep()
	old.letGo()
	rec.ref = unsafe.Pointer(it)
	rec.st |= recLoaded
}

// drop lets go of the record's data: the store forgets the record. Under
// the store's mu.
func (rec *fileRec) drop() { rec.data().letGo() }

// What storage was last seen to hold at a record's path (walk, rescan,
// event): its data's size and modification time, nearly always, so only
// the records seen otherwise (not loaded yet, changed since their load)
// keep theirs, in Store.seen. A record takes 32 bytes where it took 48.

// seenAs is a file's size and modification time as last seen on storage.
type seenAs struct {
	size int64
	sec  int64
	nsec int32
}

func seenOf(size int64, mtime time.Time) seenAs {
	return seenAs{size: size, sec: mtime.Unix(), nsec: int32(mtime.Nanosecond())}
}

func (v seenAs) mtime() time.Time { return time.Unix(v.sec, int64(v.nsec)) }

// seenLocked is what storage was last seen to hold at rec's path.
func (s *Store) seenLocked(rec *fileRec) seenAs {
	if v, ok := s.seen[rec]; ok {
		return v
	}
	return seenOf(rec.data().Size, rec.data().ModTime())
}

// setSeenLocked records that storage holds size bytes of mtime at rec's
// path.
func (s *Store) setSeenLocked(rec *fileRec, size int64, mtime time.Time) {
	if v := seenOf(size, mtime); rec.data() == nil || v != seenOf(rec.data().Size, rec.data().ModTime()) {
		if s.seen == nil {
			s.seen = make(map[*fileRec]seenAs)
		}
		s.seen[rec] = v
		s.seenPeak = max(s.seenPeak, len(s.seen))
		return
	}
	s.forgetSeenLocked(rec)
}

// forgetSeenLocked drops rec's entry in s.seen, if any: its data is what
// storage holds, or it is gone. The map is built anew once it has shrunk
// to a quarter of its peak (priming fills it with every file this node
// holds, and a Go map keeps its size), and dropped once empty.
func (s *Store) forgetSeenLocked(rec *fileRec) {
	if _, ok := s.seen[rec]; !ok {
		return
	}
	delete(s.seen, rec)
	switch n := len(s.seen); {
	case n == 0:
		s.seen, s.seenPeak = nil, 0
	case n < s.seenPeak/4 && s.seenPeak > 1024:
		// A new map, not maps.Clone: a clone keeps the original's
		// capacity (every one took the peak's size again, 100 MB in all
		// for a store priming 335,000 files, and shrank nothing).
		m := make(map[*fileRec]seenAs, n)
		maps.Copy(m, s.seen)
		s.seen, s.seenPeak = m, n
	}
}

// recState is a fileRec's flags, and the low bits of the number of the
// latest load started (setSeq, seqIs): a load that finds a newer one
// started is dropped. Loads of one file are never 2^27 apart.
type recState uint32

const (
	recQueued  recState = 1 << 31 // waiting in the priming queue: priming will read it
	recLoading recState = 1 << 30 // a load is in flight
	recDirty   recState = 1 << 29 // an event says reload even if size and mtime look the same
	recFailed  recState = 1 << 28 // the last load failed for good; retried when the file changes
	recLoaded  recState = 1 << 27 // ref is the data (else the path)
	recSeqMask recState = 1<<27 - 1
)

func (rec *fileRec) is(f recState) bool { return rec.st&f != 0 }

func (rec *fileRec) set(f recState, on bool) {
	if on {
		rec.st |= f
	} else {
		rec.st &^= f
	}
}

func (rec *fileRec) setSeq(seq uint64) { rec.st = rec.st&^recSeqMask | recState(seq)&recSeqMask }

func (rec *fileRec) seqIs(seq uint64) bool { return rec.st&recSeqMask == recState(seq)&recSeqMask }

// staleLocked reports whether rec needs (re)loading to match storage.
func (s *Store) staleLocked(rec *fileRec) bool {
	_, other := s.seen[rec]
	return rec.is(recDirty) || rec.data() == nil || other
}

// dirRec is one directory under the root (or a path to one through
// directory links).
type dirRec struct {
	kids  names     // names of the files and directories in it we track
	links uint8     // directory links its path crosses (≤ maxDirLinks+1); 0: a real path, maybe watched
	watch watchMode // whether the watcher watches it (links 0 only)
	hasID bool
	wd    int32  // its watch descriptor, when watched (watchOn)
	id    fileID // its identity, from its last listing, to cut cycles
}

// obs is one entry of a directory as observed on storage: a regular file or
// a directory, or a symbolic link inside the root to one (link; size and
// mtime are the target's). Anything else is not tracked.
type obs struct {
	name  string
	dir   bool
	link  bool
	size  int64
	mtime time.Time
}

// change is a published item that changed (it nil: removed), for OnChange.
type change struct {
	path string
	it   *Item
}

// affected collects the paths whose files changed in a batch; nil collects
// nothing.
type affected map[string]struct{}

func (a affected) add(p string) {
	if a != nil {
		a[p] = struct{}{}
	}
}

// join returns the path of name in directory d.
func join(d, name string) string {
	if d == "/" {
		return "/" + name
	}
	return d + "/" + name
}

// owns reports whether this node owns the item at p.
func (s *Store) owns(p string) bool { return s.owner == nil || s.owner(p) }

// holdsLocked reports whether this node holds the regular file at p, given
// which paths of its directory are regular files (isFile): it owns it, or
// it is a precompressed sibling of a file this node owns.
func (s *Store) holdsLocked(p string, isFile func(string) bool) bool {
	if base, ok := siblingBase(s.encs, p); ok && isFile(base) {
		return s.owns(base)
	}
	return s.owns(p)
}

// mayHoldLocked reports whether this node would hold a regular file at p
// (it does, if p is recorded), as far as it can tell without looking at
// storage: a precompressed sibling of a file it does not hold may be the
// sibling of a file it was never told about. While a change of share is
// being applied (SetOwns), a file it newly holds may not be recorded yet:
// then it says false for every path not recorded.
func (s *Store) mayHoldLocked(p string) bool {
	if s.setOwn.walking && s.files.get(p) == nil {
		return false
	}
	if base, ok := siblingBase(s.encs, p); ok && s.files.get(base) != nil {
		return true // a sibling of a file this node holds
	}
	return s.owns(p)
}

// siblingsMineLocked reports whether a precompressed sibling of p is, or
// would be by itself, this node's: what happens to p (a base) changes
// whether it holds them.
func (s *Store) siblingsMineLocked(p string) bool {
	for _, e := range s.encs {
		if q := p + e.ext; s.files.get(q) != nil || s.owns(q) {
			return true
		}
	}
	return false
}

// hiddenLocked reports whether p is a precompressed sibling of an existing
// file, and so a Variant rather than an item.
func (s *Store) hiddenLocked(p string) bool {
	base, ok := siblingBase(s.encs, p)
	return ok && s.files.get(base) != nil
}

// needLocked reports whether the content of the file at p is ours to load:
// it is an item we own, or a sibling of an item we own.
func (s *Store) needLocked(p string) bool {
	if base, ok := siblingBase(s.encs, p); ok && s.files.get(base) != nil {
		return s.owns(base)
	}
	return s.owns(p)
}

// related returns p and the paths whose publication depends on the file at
// p: the item it may be a sibling of, and its own possible siblings.
func (s *Store) related(p string) []string {
	out := make([]string, 0, 2+len(s.encs))
	out = append(out, p)
	if base, ok := siblingBase(s.encs, p); ok {
		out = append(out, base)
	}
	for _, e := range s.encs {
		out = append(out, p+e.ext)
	}
	return out
}

// addDirLocked records directory p (whose parent, unless p is "/", is
// known), whose path crosses links directory links.
func (s *Store) addDirLocked(p string, links int) {
	if s.dirs[p] != nil {
		return
	}
	s.dirs[p] = &dirRec{links: uint8(links)}
	s.stats.pathBytes.Add(int64(len(p)))
	if p != "/" {
		if pd := s.dirs[path.Dir(p)]; pd != nil {
			pd.kids.add(path.Base(p))
		}
	}
	s.stats.dirs.Add(1)
}

// removeDirLocked forgets directory p and everything under it.
func (s *Store) removeDirLocked(p string, aff affected) {
	d := s.dirs[p]
	if d == nil {
		return
	}
	for name := range d.kids.all() {
		s.removeLocked(join(p, name), aff)
	}
	delete(s.dirs, p)
	s.stats.pathBytes.Add(-int64(len(p)))
	if pd := s.dirs[path.Dir(p)]; pd != nil && p != "/" {
		pd.kids.remove(path.Base(p))
	}
	s.stats.dirs.Add(-1)
	if d.watch == watchOn {
		s.unwatchLocked(p, d.wd)
	}
	s.setWatchLocked(d, watchOff)
}

// removeFileLocked forgets the file at p and frees its body.
func (s *Store) removeFileLocked(p string, aff affected) {
	rec := s.files.get(p)
	if rec == nil {
		return
	}
	s.held.Add(-held(rec.data()))
	s.forgetSeenLocked(rec)
	s.files.remove(p)
	rec.drop()
	s.stats.pathBytes.Add(-int64(len(p)))
	if pd := s.dirs[path.Dir(p)]; pd != nil {
		pd.kids.remove(path.Base(p))
	}
	aff.add(p)
}

// removeLocked forgets whatever is at p.
func (s *Store) removeLocked(p string, aff affected) {
	if s.dirs[p] != nil {
		s.removeDirLocked(p, aff)
	} else {
		s.removeFileLocked(p, aff)
	}
}

// observeFileLocked records that storage has a regular file at p with size
// and mtime. force marks it for reloading even if those did not change.
func (s *Store) observeFileLocked(p string, size int64, mtime time.Time, force bool, aff affected) {
	if s.dirs[p] != nil {
		s.removeDirLocked(p, aff)
	}
	rec := s.files.get(p)
	if rec == nil {
		rec = newFileRec(p)
		s.setSeenLocked(rec, size, mtime)
		s.files.put(rec)
		s.stats.pathBytes.Add(int64(len(p)))
		if s.setOwn.gaining != nil {
			s.setOwn.gaining[p] = true
		}
		if pd := s.dirs[path.Dir(p)]; pd != nil {
			pd.kids.add(path.Base(p))
		}
		aff.add(p)
	} else if s.seenLocked(rec) != seenOf(size, mtime) {
		s.setSeenLocked(rec, size, mtime)
		rec.set(recFailed, false)
		aff.add(p)
	}
	if force {
		rec.set(recDirty, true)
		rec.set(recFailed, false)
		aff.add(p)
	}
}

// applyListingLocked makes directory d (known) match a listing of it and
// returns its subdirectories.
func (s *Store) applyListingLocked(d string, ents []obs, aff affected) (subdirs []string) {
	dr := s.dirs[d]
	if dr.kids.len() > 0 {
		seen := make(map[string]bool, len(ents))
		for _, e := range ents {
			seen[e.name] = true
		}
		for name := range dr.kids.all() {
			if !seen[name] {
				s.removeLocked(join(d, name), aff)
			}
		}
	}
	for _, e := range ents {
		p := join(d, e.name)
		if e.dir {
			if s.files.get(p) != nil {
				s.removeFileLocked(p, aff)
			}
			links := int(dr.links)
			if e.link {
				links++
			}
			if old := s.dirs[p]; old != nil && int(old.links) != links {
				s.removeDirLocked(p, aff) // a directory replaced by a link to one, or back
			}
			s.addDirLocked(p, links)
			subdirs = append(subdirs, p)
			continue
		}
		s.observeFileLocked(p, e.size, e.mtime, false, aff)
	}
	return subdirs
}

// desiredLocked returns the Item that should be published at p now, or nil.
func (s *Store) desiredLocked(p string) *Item {
	rec := s.files.get(p)
	if rec == nil || rec.data() == nil || s.hiddenLocked(p) || !s.owns(p) {
		return nil
	}
	var sibs []*Item
	for i, e := range s.encs {
		if v := s.files.get(p + e.ext); v != nil && v.data() != nil {
			if sibs == nil {
				sibs = make([]*Item, len(s.encs))
			}
			sibs[i] = v.data()
		}
	}
	return withVariants(rec.data(), s.encs, sibs)
}

// republishLocked makes the index entry for p match desiredLocked(p) and,
// once the store is ready, records the change for OnChange.
func (s *Store) republishLocked(p string) {
	if s.dirs[p] != nil {
		return
	}
	want := s.desiredLocked(p)
	cur, _ := s.index.load(p)
	if sameItem(cur, want) {
		return
	}
	if want == nil {
		s.index.delete(p)
		s.stats.items.Add(-1)
	} else {
		s.index.store(want)
		if cur == nil {
			s.stats.items.Add(1)
		}
	}
	if s.ready.Load() {
		s.changes = append(s.changes, change{p, want})
		s.stats.changes.Add(1)
	}
}

// settleLocked brings every path affected by a batch of observations (and
// the paths related to them) up to date: drops content that is no longer
// ours, republishes, and starts a load for every file that needs one. The
// caller runs the returned loads.
func (s *Store) settleLocked(aff affected) []*job {
	var jobs []*job
	done := make(map[string]bool, len(aff))
	for p := range aff {
		for _, q := range s.related(p) {
			if done[q] {
				continue
			}
			done[q] = true
			if s.wantsLoadLocked(q) {
				jobs = append(jobs, s.startLoadLocked(q))
			}
			s.republishLocked(q)
		}
	}
	return jobs
}

// wantsLoadLocked reports whether the file at p should be loaded now, and
// forgets it if it is no longer this node's to hold (a sibling whose base
// went, or came back under another owner).
func (s *Store) wantsLoadLocked(p string) bool {
	rec := s.files.get(p)
	if rec == nil {
		return false
	}
	if !s.needLocked(p) {
		s.removeFileLocked(p, nil)
		return false
	}
	if !s.planned || rec.is(recQueued) || rec.is(recLoading) || rec.is(recFailed) {
		return false
	}
	return s.staleLocked(rec)
}

// takeChangesLocked returns and resets the changes recorded for OnChange.
func (s *Store) takeChangesLocked() []change {
	ch := s.changes
	s.changes = nil
	return ch
}
