package shard

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// Watching storage for changes: fsnotify on every directory (it does not
// watch recursively), events collected for a short debounce window and then
// applied as one batch, plus a periodic rescan as the safety net for what
// notifications miss (network filesystems, overflows, watch limits).
//
// Symbolic links: a directory is watched under its real path only, never
// under a path through a directory link (one inotify watch per directory
// reports under one name only). So the change of a file under a directory
// link, or of the target of a file link, shows at its real path at once and
// at the link's path at the next rescan (Config.Rescan; 30s by default with
// a working watcher). Creating, removing or retargeting a link is an event
// in its (real) parent directory, applied at once. Open finding a link's
// target changed also asks for the path to be looked at again.

const (
	// debounce is how long after the first event for a path the batch that
	// includes it is applied: editors and deploys write in bursts.
	debounce = 75 * time.Millisecond

	// rescanWatched is the default rescan interval when the watcher works;
	// rescanUnwatched when it does not (it is then the only way to see
	// changes).
	rescanWatched   = 30 * time.Second
	rescanUnwatched = time.Second
)

// newWatcher makes the file watcher; tests swap it to run without one.
var newWatcher = fsnotify.NewWatcher

// watchState is the Store's watcher and the queue of paths to look at again.
type watchState struct {
	w        *fsnotify.Watcher // nil: no watcher
	degraded atomic.Bool       // some directory could not be watched
	warned   atomic.Bool
	running  atomic.Bool // the updater takes kicks

	kickMu sync.Mutex
	kicked map[string]pending
	kickCh chan struct{}
}

// pending is a path waiting to be looked at again.
type pending struct {
	due   time.Time
	force bool
}

// run is the store's background life: watch, prime, then keep up with
// changes until Close.
func (s *Store) run() {
	defer s.wg.Done()
	w, err := newWatcher()
	if err != nil {
		s.log.Warn("file watcher unavailable; changes are found by rescanning only", zap.Error(err))
	} else {
		s.watch.w = w
	}
	s.watch.running.Store(true)
	var bg sync.WaitGroup
	if w != nil {
		bg.Add(1)
		go func() {
			defer bg.Done()
			s.pump(w)
		}()
	}
	bg.Add(1)
	go func() {
		defer bg.Done()
		s.update()
	}()
	s.prime()
	bg.Wait() // both return when the store is closed
	s.watch.running.Store(false)
	if w != nil {
		w.Close()
	}
}

// pump moves the watcher's events into the kick queue as they come. It
// never waits for the updater: fsnotify sends some errors while holding the
// lock that Add and Remove (called by the updater) need, so the updater
// must not be the one draining its channels.
func (s *Store) pump(w *fsnotify.Watcher) {
	for {
		select {
		case <-s.ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			s.stats.events.Add(1)
			if p, ok := s.eventPath(ev.Name); ok {
				s.kick(p, ev.Has(fsnotify.Create) || ev.Has(fsnotify.Write), debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			s.log.Warn("file watcher", zap.Error(err))
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				s.kick("/", false, debounce) // events were lost: scan everything
			}
		}
	}
}

// addWatch watches directory p (called with s.scanMu held, before listing
// it). Watching a directory twice is harmless.
func (s *Store) addWatch(p string) {
	w := s.watch.w
	if w == nil {
		return
	}
	if err := w.Add(s.abs(p)); err != nil && !errors.Is(err, fsnotify.ErrClosed) {
		s.watch.degraded.Store(true)
		if !s.watch.warned.Swap(true) {
			s.log.Warn("cannot watch directory; relying on rescans",
				zap.String("path", p), zap.Error(err),
				zap.Duration("rescan", s.rescanInterval()))
		}
	}
}

// unwatchLocked stops watching directory p (gone). The kernel may have
// dropped the watch already.
func (s *Store) unwatchLocked(p string) {
	if w := s.watch.w; w != nil {
		_ = w.Remove(s.abs(p))
	}
}

// abs returns the file-system path of slash-rooted p.
func (s *Store) abs(p string) string {
	if p == "/" {
		return s.root
	}
	return filepath.Join(s.root, filepath.FromSlash(p[1:]))
}

// eventPath returns the slash-rooted path of an event's file-system path.
func (s *Store) eventPath(name string) (string, bool) {
	if name == s.root {
		return "/", true
	}
	prefix := s.root
	if !strings.HasSuffix(prefix, string(filepath.Separator)) {
		prefix += string(filepath.Separator)
	}
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || rest == "" {
		return "", false
	}
	return "/" + filepath.ToSlash(rest), true
}

// kick asks the updater to look at p again after delay (force: reload it
// even if its size and modification time look unchanged); a path kicked
// again before then keeps the earlier time, so a file written continuously
// is still looked at every delay. It never blocks and may be called with
// s.mu held.
func (s *Store) kick(p string, force bool, delay time.Duration) {
	if !s.watch.running.Load() {
		return
	}
	due := time.Now().Add(delay)
	s.watch.kickMu.Lock()
	if s.watch.kicked == nil {
		s.watch.kicked = make(map[string]pending)
	}
	if old, ok := s.watch.kicked[p]; ok {
		if old.due.Before(due) {
			due = old.due
		}
		force = force || old.force
	}
	s.watch.kicked[p] = pending{due, force}
	s.watch.kickMu.Unlock()
	select {
	case s.watch.kickCh <- struct{}{}:
	default:
	}
}

// rescanInterval is how often the whole tree is walked again.
func (s *Store) rescanInterval() time.Duration {
	switch {
	case s.cfg.Rescan > 0:
		return s.cfg.Rescan
	case s.watch.w == nil || s.watch.degraded.Load():
		return rescanUnwatched
	default:
		return rescanWatched
	}
}

// update is the updater: the one goroutine that applies changes seen on
// storage (events and kicks, after their delay; rescans) once priming has
// queued its work, and reports them to OnChange, in order. It exits when
// the store is closed.
func (s *Store) update() {
	dirty := make(map[string]pending)
	var next time.Time // earliest due in dirty; zero if none
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()

	primed := s.primedCh
	var rescan <-chan time.Time
	var ticker *time.Ticker
	var interval time.Duration
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()

	for {
		select {
		case <-s.ctx.Done():
			return

		case <-primed:
			primed = nil
			interval = s.rescanInterval()
			ticker = time.NewTicker(interval)
			rescan = ticker.C

		case <-s.watch.kickCh:
			s.watch.kickMu.Lock()
			kicked := s.watch.kicked
			s.watch.kicked = nil
			s.watch.kickMu.Unlock()
			for p, pd := range kicked {
				if old, ok := dirty[p]; ok {
					if old.due.Before(pd.due) {
						pd.due = old.due
					}
					pd.force = pd.force || old.force
				}
				dirty[p] = pd
				if next.IsZero() || pd.due.Before(next) {
					next = pd.due
					timer.Reset(max(time.Until(next), 0))
				}
			}

		case <-timer.C:
			now := time.Now()
			batch := make(map[string]bool)
			next = time.Time{}
			for p, pd := range dirty {
				if !pd.due.After(now) {
					batch[p] = pd.force
					delete(dirty, p)
				} else if next.IsZero() || pd.due.Before(next) {
					next = pd.due
				}
			}
			if !next.IsZero() {
				timer.Reset(max(time.Until(next), 0))
			}
			aff := make(affected)
			s.refreshPaths(batch, aff)
			s.settle(aff)

		case <-s.setOwn.ch:
			s.applyOwns()

		case <-rescan:
			s.rescan()
			if iv := s.rescanInterval(); iv != interval {
				interval = iv
				ticker.Reset(iv)
			}
		}
	}
}
