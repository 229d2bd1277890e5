package shard

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// beforePrimeRead, when not nil, is called by priming workers before they
// read a file. Tests use it to hold priming in the middle.
var beforePrimeRead func(path string)

// progressEvery is how often priming logs its progress.
const progressEvery = 2 * time.Second

// prime fills the store: it walks the root (watching every directory
// before listing it), then reads every file this node needs with
// s.workers readers in parallel, then marks the store ready.
//
// Files are read in ascending order of size. When the tree does not fit the
// memory budget, bodies are held until the next file does not fit, and the
// rest, the largest files, are only hashed (streamed, not held: each file is
// read once) and later served from storage by Open. Small files first
// because per-request overhead dominates small files while large ones stream
// from the page cache nearly as fast as from memory, and because it serves
// the largest number of items from RAM. Every file gets its metadata and
// ETag either way.
func (s *Store) prime() {
	start := time.Now()
	s.log.Info("priming", zap.Int64("memory", s.budget), zap.Int("workers", s.workers))

	stopLog := make(chan struct{})
	var logWG sync.WaitGroup
	logWG.Add(1)
	go func() {
		defer logWG.Done()
		s.logProgress(start, stopLog)
	}()
	stopProgress := sync.OnceFunc(func() {
		close(stopLog)
		logWG.Wait()
	})
	defer stopProgress()

	if _, err := s.fsRoot(); err != nil {
		s.log.Error("cannot prime", zap.Error(err))
	}
	s.walkParallel()
	if s.ctx.Err() != nil {
		return
	}
	s.watch.lastWalk.Store(int64(time.Since(start)))
	s.log.Debug("walked", zap.Duration("duration", time.Since(start)),
		zap.Int64("dirs", s.stats.dirs.Load()))

	// Plan: everything this node needs, smallest first.
	type item struct {
		path string
		size int64
	}
	s.mu.Lock()
	plan := make([]item, 0, s.files.len())
	for p, rec := range s.files.all() {
		if s.needLocked(p) {
			rec.set(recQueued, true)
			plan = append(plan, item{p, s.seenLocked(rec).size})
		}
	}
	s.planned = true
	s.mu.Unlock()
	slices.SortFunc(plan, func(a, b item) int {
		return cmp.Or(cmp.Compare(a.size, b.size), cmp.Compare(a.path, b.path))
	})
	var total, fit, fitItems int64 // fit: what the budget holds, as the dispatch below decides
	full := false
	for _, it := range plan {
		total += it.size
		if full = full || (s.budget > 0 && fit+it.size > s.budget); !full {
			fit += it.size
			fitItems++
		}
	}
	s.primed.totalItems.Store(int64(len(plan)))
	s.primed.totalBytes.Store(total)
	if s.budget > 0 && total > s.budget {
		s.log.Warn("memory budget is smaller than this node's share: the largest files will be served from storage",
			zap.Int64("budget", s.budget),
			zap.Int64("total_bytes", total),
			zap.Int64("held_bytes", fit),
			zap.Int64("held_items", fitItems),
			zap.Int64("not_held_items", int64(len(plan))-fitItems),
			zap.Int64("not_held_bytes", total-fit))
	}

	jobs := make(chan *job)
	var wg sync.WaitGroup
	for range s.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if beforePrimeRead != nil {
					beforePrimeRead(j.path)
				}
				var c *Item
				var lerr error
				if s.cfg.Handoff != nil {
					// A node joining a running cluster: its share is in
					// the memory of the nodes that held it until now.
					c = s.tryHandoff(j, s.wantBody(j))
				}
				if c == nil {
					c, lerr = s.readFile(s.ctx, j.path, s.wantBody(j))
				}
				if lerr == nil {
					s.primed.items.Add(1)
					s.primed.bytes.Add(c.Size)
				}
				s.mu.Lock()
				s.finishLocked(j, c, lerr)
				s.mu.Unlock()
			}
		}()
	}

	// Dispatch in order, deciding residency here so the budget goes to the
	// smallest files.
	holding := true
dispatch:
	for _, it := range plan {
		s.mu.Lock()
		rec := s.files.get(it.path)
		if rec == nil || !rec.is(recQueued) {
			s.mu.Unlock()
			continue // gone, or the updater took it over
		}
		j := s.startLoadLocked(it.path)
		switch {
		case s.budget == 0:
		case holding && s.reserveLocked(s.seenLocked(rec).size, 0):
			j.res = s.seenLocked(rec).size
		default:
			holding = false
			j.hold = false
		}
		s.mu.Unlock()
		select {
		case jobs <- j:
		case <-s.ctx.Done():
			s.mu.Lock()
			s.finishLocked(j, nil, s.ctx.Err())
			s.mu.Unlock()
			break dispatch
		}
	}
	close(jobs)
	wg.Wait()
	stopProgress()
	if s.ctx.Err() != nil {
		return
	}

	s.mu.Lock()
	s.ready.Store(true)
	s.mu.Unlock()
	close(s.primedCh)

	d := time.Since(start)
	bytes := s.primed.bytes.Load()
	fields := []zap.Field{
		zap.Int64("items", s.primed.items.Load()),
		zap.Int64("bytes", bytes),
		zap.Duration("duration", d),
		zap.Float64("mb_per_s", mbps(bytes, d)),
		zap.Int64("resident_bytes", s.held.Load()),
		zap.Int64("memory", s.budget),
	}
	if s.cfg.Handoff != nil {
		// A node joining a running cluster: how much of its share came
		// from its peers' memory, and how many of their answers storage
		// refused (the rest of the items were read from storage).
		fields = append(fields, zap.Int64("from_peers_memory", s.stats.handoffItems.Load()),
			zap.Int64("from_peers_refused", s.stats.handoffFailed.Load()))
	}
	s.log.Info("primed", fields...)
}

// logProgress logs priming progress every progressEvery until stop closes.
func (s *Store) logProgress(start time.Time, stop <-chan struct{}) {
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			p := s.Progress()
			if p.TotalItems == 0 && p.Items == 0 {
				s.mu.RLock()
				n := s.files.len()
				s.mu.RUnlock()
				s.log.Info("priming: walking the tree",
					zap.Int("files_found", n),
					zap.Int64("dirs_found", s.stats.dirs.Load()))
				continue
			}
			s.log.Info("priming progress",
				zap.Int64("items", p.Items),
				zap.Int64("total_items", p.TotalItems),
				zap.Int64("bytes", p.Bytes),
				zap.Int64("total_bytes", p.TotalBytes),
				zap.Float64("percent", p.Percent),
				zap.Float64("mb_per_s", mbps(p.Bytes, time.Since(start))))
		}
	}
}

// mbps returns bytes per duration in MB/s (10^6 bytes).
func mbps(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) / 1e6 / d.Seconds()
}
