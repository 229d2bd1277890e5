package shard

import (
	"io/fs"
	"sync"
	"unsafe"
)

// Changing which paths this node owns (a ring change) without rebuilding
// the store: what is no longer owned leaves memory, what newly is gets
// loaded (from the previous holder through Config.Handoff when it can
// prove it has the bytes storage holds, else from storage), and everything
// else stays as it is.

// ownsState is the latest SetOwns not yet applied by the updater, and who
// waits for it.
type ownsState struct {
	mu      sync.Mutex
	set     bool                   // fn is waiting to be applied
	fn      func(path string) bool // the latest; nil means everything
	waiters []chan struct{}        // closed once fn (or a later one) is applied
	ch      chan struct{}          // wakes the updater; buffered, 1

	// Under Store.mu: gen counts the changes of Store.owner, so that a
	// listing made under an older one is made again (scanDir); gaining,
	// while a change is applied, collects the files newly recorded; walking
	// is true from a change of Store.owner until the tree was listed under
	// it: until then a file this node newly holds may not be recorded yet,
	// and a lookup that finds no record reads storage.
	gen     uint64
	gaining map[string]bool
	walking bool
}

// SetOwns changes which paths this node owns (a ring change). Items it no
// longer owns leave memory (Config.OnDrop is called with each, bytes
// included, first); files it newly needs are loaded, through
// Config.Handoff first, from storage otherwise; everything else is
// untouched (no file is read again, no item published again). Changes are
// reported to OnChange as usual, from the updater goroutine, in order.
//
// It returns once the newly needed files are loaded (during priming: once
// priming is done), or the store closes. Before Start, and after Close, it
// only sets the function. Of concurrent calls, the last one applied wins.
// owns follows the rules of Config.Owns.
func (s *Store) SetOwns(owns func(path string) bool) {
	s.lifeMu.Lock()
	if !s.started || s.closed.Load() {
		s.mu.Lock()
		s.owner = owns
		s.setOwn.gen++
		s.mu.Unlock()
		s.lifeMu.Unlock()
		return
	}
	done := make(chan struct{})
	s.setOwn.mu.Lock()
	s.setOwn.set, s.setOwn.fn = true, owns
	s.setOwn.waiters = append(s.setOwn.waiters, done)
	s.setOwn.mu.Unlock()
	s.lifeMu.Unlock()
	select {
	case s.setOwn.ch <- struct{}{}:
	default:
	}
	select {
	case <-done:
	case <-s.ctx.Done():
		return
	}
	if !s.ready.Load() {
		// Applied before priming was done: priming loads what it planned.
		select {
		case <-s.primedCh:
		case <-s.ctx.Done():
		}
	}
}

// applyOwns applies the latest SetOwns (on the updater goroutine).
func (s *Store) applyOwns() {
	s.setOwn.mu.Lock()
	set, fn, waiters := s.setOwn.set, s.setOwn.fn, s.setOwn.waiters
	s.setOwn.set, s.setOwn.fn, s.setOwn.waiters = false, nil, nil
	s.setOwn.mu.Unlock()
	if !set {
		return
	}
	defer func() {
		for _, w := range waiters {
			close(w)
		}
	}()

	// First the new function, and what it changes among the files this
	// node holds: those it no longer needs (gone), and the published items
	// that go. From here on no load installs content that is not ours and
	// no item that is not ours is published, so drops is complete; but the
	// items in it stay published until OnDrop has seen them.
	s.mu.Lock()
	s.owner = fn
	s.setOwn.gen++
	s.setOwn.walking = true
	var gone []string
	var drops []*Item
	for p, rec := range s.files.all() {
		if !s.needLocked(p) {
			gone = append(gone, p)
			rec.set(recQueued, false) // priming skips it
		}
		if !s.owns(p) {
			if it, ok := s.index.load(p); ok {
				drops = append(drops, it)
			}
		}
	}
	s.mu.Unlock()

	if s.cfg.OnDrop != nil {
		for _, it := range drops {
			s.cfg.OnDrop(it)
		}
	}

	// Then forget what is not ours any more, and list the tree to find
	// what newly is (this node kept no record of other nodes' files).
	aff := make(affected)
	s.mu.Lock()
	for _, p := range gone {
		s.removeFileLocked(p, aff)
	}
	s.setOwn.gaining = make(map[string]bool)
	s.mu.Unlock()
	s.scanTree("/", aff)
	s.mu.Lock()
	gained := s.setOwn.gaining
	s.setOwn.gaining, s.setOwn.walking = nil, false
	s.mu.Unlock()

	// Then drop, republish and load, as after a change on storage.
	s.settle(aff, func(j *job) { j.handoff = gained[j.path] })
	if afterApplyOwns != nil {
		afterApplyOwns()
	}
}

// afterApplyOwns, when not nil, is called by the updater after it applied
// a SetOwns. Tests use it to know a call was applied while priming.
var afterApplyOwns func()

// tryHandoff asks Config.Handoff for the file of j and returns its data if
// it matches storage (size and modification time now, and the bytes' hash
// to the Version claimed) and the budget lets j hold it; else nil.
//
// The version asked for is the one the walk or the last rescan observed;
// storage is checked again only when a peer answers. A node starting with
// its peers (nobody holds anything yet: every ask fails at once) thus
// costs storage no more than reading the file, where a stat through
// os.Root before each ask (a system call or three per path element) took
// 14.6% of a priming node's CPU with a million files.
func (s *Store) tryHandoff(j *job, want func(int64) bool) *Item {
	rel, ok := relPath(j.path)
	if !ok {
		return nil
	}
	r, err := s.fsRoot()
	if err != nil {
		return nil
	}
	s.mu.RLock()
	seen := s.seenLocked(j.rec)
	size, mtime := seen.size, seen.mtime()
	s.mu.RUnlock()
	var fi fs.FileInfo
	if mtime.IsZero() {
		// Never observed (a path only listed): storage first.
		if fi, err = s.statIn(r, rel); err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		size, mtime = fi.Size(), fi.ModTime()
	}
	h, ok := s.cfg.Handoff(s.ctx, j.path, size, mtime)
	if !ok || h == nil {
		return nil
	}
	if fi == nil {
		// a link is seen as its target, as readFile reads it
		if fi, err = s.statIn(r, rel); err != nil || !fi.Mode().IsRegular() {
			return nil
		}
	}
	body, chunks, ok := handoffBytes(h)
	if !ok || h.Size != fi.Size() || !h.ModTime().Equal(fi.ModTime()) {
		s.stats.handoffFailed.Add(1)
		return nil
	}
	sum := newHash()
	defer freeHash(sum)
	var head []byte
	if chunks != nil {
		for _, c := range chunks {
			sum.Write(c)
		}
		head = chunks[0]
	} else {
		sum.Write(body)
		head = body
	}
	tag := tagSum(sum)
	if tag != h.Tag || h.otherETag() != "" {
		s.stats.handoffFailed.Add(1)
		return nil
	}
	if !want(h.Size) {
		return nil // the budget cannot hold it: storage, hashed only
	}
	c := &Item{Path: j.path, Size: h.Size, Tag: tag}
	c.setBodyPtr(unsafe.SliceData(body)) // Size bytes, or nil (handoffBytes)
	c.SetContentType(contentType(j.path, head))
	c.SetModTime(fi.ModTime())
	c.SetChunks(chunks)
	c.toArena(true) // the peer's bytes arrived in the Go heap: held bytes live outside it
	s.stats.handoffItems.Add(1)
	s.stats.handoffBytes.Add(c.Size)
	return c
}

// handoffBytes returns the bytes of it laid out as the store holds them: a
// Body of up to ChunkSize bytes, else Chunks of ChunkSize pieces (a larger
// Body is cut into chunks without copying). ok is false when it does not
// hold exactly Size bytes in either form.
func handoffBytes(it *Item) (body []byte, chunks Chunks, ok bool) {
	size, cs, b := it.Size, it.Chunks(), it.Body()
	switch {
	case size < 0:
		return nil, nil, false
	case size == 0:
		return nil, nil, len(b) == 0 && cs.Len() == 0
	case cs != nil:
		if b != nil || len(cs) != NumChunks(size) {
			return nil, nil, false
		}
		for i, c := range cs {
			if _, n := ChunkRange(size, i); int64(len(c)) != n {
				return nil, nil, false
			}
		}
		if size <= ChunkSize {
			return cs[0], nil, true
		}
		return nil, cs, true
	case int64(len(b)) != size:
		return nil, nil, false
	case size <= ChunkSize:
		return b, nil, true
	default:
		chunks = make(Chunks, NumChunks(size))
		for i := range chunks {
			off, n := ChunkRange(size, i)
			chunks[i] = b[off : off+n : off+n]
		}
		return nil, chunks, true
	}
}
