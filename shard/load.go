package shard

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// job is one load of a file into the store: priming's or the updater's.
type job struct {
	path string
	rec  *fileRec
	seq  uint64
	hold bool  // may hold the body (budget permitting)
	res  int64 // body bytes reserved for it against the budget
	old  int64 // body bytes its current content holds (freed when it installs)

	handoff bool // a file newly needed after SetOwns: ask Config.Handoff first
}

// startLoadLocked starts a load of the file at p (known) and returns it.
// A later load of the same file makes this one's result be dropped.
func (s *Store) startLoadLocked(p string) *job {
	rec := s.files.get(p)
	s.seq++
	rec.setSeq(s.seq)
	rec.set(recLoading, true)
	rec.set(recQueued, false)
	rec.set(recDirty, false)
	return &job{path: p, rec: rec, seq: s.seq, hold: true, old: held(rec.data())}
}

// reserveLocked reserves n body bytes against the budget, counting the
// reclaim bytes that the load will free when it installs as available.
func (s *Store) reserveLocked(n, reclaim int64) bool {
	if s.budget == 0 {
		return true
	}
	if s.held.Load()-reclaim+s.reserved+n > s.budget {
		return false
	}
	s.reserved += n
	return true
}

// wantBody tells readFile whether j may hold a body of size bytes, growing
// j's reservation if the file is bigger than planned.
func (s *Store) wantBody(j *job) func(int64) bool {
	return func(size int64) bool {
		if !j.hold {
			return false
		}
		if s.budget == 0 || size <= j.res {
			return true
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.reserveLocked(size-j.res, j.old) {
			j.res = size
			return true
		}
		return false
	}
}

// finishLocked installs the result of j (if it is still the latest load of
// its file) and republishes what depends on it.
func (s *Store) finishLocked(j *job, c *Item, err error) {
	s.reserved -= j.res
	rec := j.rec
	if s.files.get(j.path) != rec || !rec.seqIs(j.seq) {
		return // removed meanwhile, or a newer load started
	}
	rec.set(recLoading, false)
	if err != nil {
		switch {
		case errors.Is(err, context.Canceled):
		case errors.Is(err, errChanging):
			s.kick(j.path, true, retryDelay) // being written: read it again later
		case missing(err), errors.Is(err, errNotRegular):
			s.kick(j.path, false, 0) // gone, replaced or leading out now: look again
		default:
			rec.set(recFailed, true)
			s.stats.loadErrors.Add(1)
			s.log.Warn("reading file", zap.String("path", j.path), zap.Error(err))
		}
		return
	}
	if !s.needLocked(j.path) {
		return // no longer ours (a sibling whose base changed owner)
	}
	old := rec.data()
	if !sameContent(old, c) {
		if held(c) > 0 && s.budget > 0 && s.held.Load()-held(old)+held(c) > s.budget {
			c.releaseBody() // the hard limit wins over any plan; nobody saw them
			c.setBodyPtr(nil)
			c.setChunksKept(nil, nil)
		}
		s.held.Add(held(c) - held(old))
		rec.setData(c)
		if v, ok := s.seen[rec]; ok && v == seenOf(c.Size, c.ModTime()) {
			s.forgetSeenLocked(rec)
		}
	} else {
		c.releaseBody() // the same bytes are held already; nobody saw these
	}
	if rec.is(recDirty) || s.seenLocked(rec) != seenOf(c.Size, c.ModTime()) {
		// Storage was seen to change after this load began: look again.
		s.kick(j.path, rec.is(recDirty), 0)
	}
	for _, q := range s.related(j.path) {
		s.republishLocked(q)
	}
}

// retryDelay is how long a file seen changing while it was read is left
// alone before it is read again.
const retryDelay = 200 * time.Millisecond

// runJobs runs loads with at most s.workers in parallel and waits for them.
func (s *Store) runJobs(jobs []*job) {
	if len(jobs) == 0 {
		return
	}
	sem := make(chan struct{}, s.workers)
	var wg sync.WaitGroup
	for _, j := range jobs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, lerr := s.loadJob(j)
			s.mu.Lock()
			s.finishLocked(j, c, lerr)
			s.mu.Unlock()
		}()
	}
	wg.Wait()
}

// loadJob reads the file of an updater's load: from Config.Handoff when j
// is a file newly needed after SetOwns and the handoff checks out, else
// from storage.
func (s *Store) loadJob(j *job) (*Item, error) {
	want := s.wantBody(j)
	if j.handoff && s.cfg.Handoff != nil {
		// The handed-off bytes may be memory of another item (a hot
		// copy): held by this Reading until they are copied into the
		// store's own.
		rd := BeginRead()
		c := s.tryHandoff(j, want)
		if c != nil {
			c.toArena(true)
		}
		rd.End()
		if c != nil {
			return c, nil
		}
	}
	c, err := s.readFile(s.ctx, j.path, want)
	if err == nil {
		if !j.handoff {
			s.stats.reloads.Add(1)
		}
		s.stats.storageReads.Add(1)
		s.stats.storageBytes.Add(c.Size)
	}
	return c, err
}
