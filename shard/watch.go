package shard

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// Watching storage for changes: fsnotify on every directory (it does not
// watch recursively; inotify watches directories, and a file created in any
// of them may be this node's to publish: its owner must see it at once),
// events collected for a short debounce window and then applied as one
// batch, plus a periodic rescan as the safety net for what notifications
// miss (network filesystems, overflows, watch limits). An event on a file
// another node holds costs nothing but a look at the store's maps (a
// creation: one stat, as it may be a directory). A rescan lists every
// directory but stats only what this node holds; the time between two is at
// least rescanFactor times the last walk, so a large tree never rescans
// back to back.
//
// Running out of inotify watches (fs.inotify.max_user_watches) is logged
// once, with the sysctl to raise; the directories that could not be watched
// are tried again at each rescan, and when they all are, that is logged
// too. Meanwhile changes there are found by rescans.
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

	// rescanFactor: the time between two rescans is at least this many
	// times the last walk of the tree, whatever the interval: walks then
	// take at most 1/21 of the updater's time, under 5% of a core.
	rescanFactor = 20
)

// newWatcher makes the file watcher; tests swap it to run without one.
var newWatcher = fsnotify.NewWatcher

// watchAdd adds a watch; tests swap it to inject errors (a watch limit).
var watchAdd = func(w *fsnotify.Watcher, name string) error { return w.Add(name) }

// watchMode is whether a directory is watched.
type watchMode uint8

const (
	watchNew    watchMode = iota // not listed yet: watch it before listing it
	watchOn                      // watched: not added again at each rescan
	watchOff                     // not watched: forgotten
	watchFailed                  // the watch could not be added: tried again at each rescan
)

// watchState is the Store's watcher and the queue of paths to look at again.
type watchState struct {
	w        *fsnotify.Watcher // nil: no watcher
	degraded atomic.Bool       // some directory could not be watched
	warned   atomic.Bool       // that was logged, and not cleared since
	failed   atomic.Int64      // directories in watchFailed
	running  atomic.Bool       // the updater takes kicks
	lastWalk atomic.Int64      // how long the last walk of the tree took, in nanoseconds

	kickMu sync.Mutex
	kicked map[string]pending
	kickCh chan struct{}
}

// pending is a path waiting to be looked at again.
type pending struct {
	due time.Time
	look
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
				create := ev.Has(fsnotify.Create)
				s.kickLook(p, look{force: create || ev.Has(fsnotify.Write), create: create}, debounce)
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
// it). Watching a directory twice is harmless. The first failure is logged
// (once until every directory is watched again, see watchSettled).
func (s *Store) addWatch(p string) error {
	w := s.watch.w
	if w == nil {
		return nil
	}
	err := watchAdd(w, s.abs(p))
	if err == nil || errors.Is(err, fsnotify.ErrClosed) {
		return nil
	}
	if !s.watch.warned.Swap(true) {
		if errors.Is(err, syscall.ENOSPC) {
			s.log.Warn("out of inotify watches: directories from here on are not watched, and changes in them are found by rescans; "+
				"raise the limit with `sysctl -w fs.inotify.max_user_watches=N` (persist it in /etc/sysctl.d/), "+
				"N above the directories of every store on this machine",
				zap.String("path", p), zap.Error(err),
				zap.Int64("dirs", s.stats.dirs.Load()),
				zap.Duration("rescan_at_least", s.rescanInterval()))
		} else {
			s.log.Warn("cannot watch directory; relying on rescans",
				zap.String("path", p), zap.Error(err),
				zap.Duration("rescan_at_least", s.rescanInterval()))
		}
	}
	return err
}

// setWatchLocked records directory d's watch mode, counting the
// directories whose watch failed.
func (s *Store) setWatchLocked(d *dirRec, m watchMode) {
	if d.watch == m {
		return
	}
	if d.watch == watchFailed {
		s.watch.failed.Add(-1)
	}
	if m == watchFailed {
		s.watch.failed.Add(1)
		s.watch.degraded.Store(true)
	}
	d.watch = m
}

// noteWatchLocked records the outcome of scanDir's watch of directory d
// (addErr: the error adding it, nil when it is watched now).
func (s *Store) noteWatchLocked(d *dirRec, addErr error) {
	if addErr == nil {
		s.setWatchLocked(d, watchOn)
	} else {
		s.setWatchLocked(d, watchFailed)
	}
}

// watchSettled is called after each rescan: once every directory that
// could not be watched is, it says so and clears the degraded state.
func (s *Store) watchSettled() {
	if s.watch.failed.Load() > 0 {
		return
	}
	s.watch.degraded.Store(false)
	if s.watch.warned.Swap(false) {
		s.log.Info("every directory is watched again; the watcher sees changes at once",
			zap.Int64("dirs", s.stats.dirs.Load()))
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
	s.kickLook(p, look{force: force}, delay)
}

// kickLook is kick with the reasons to look in lk.
func (s *Store) kickLook(p string, lk look, delay time.Duration) {
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
		lk = lk.or(old.look)
	}
	s.watch.kicked[p] = pending{due, lk}
	s.watch.kickMu.Unlock()
	select {
	case s.watch.kickCh <- struct{}{}:
	default:
	}
}

// or merges two reasons to look.
func (lk look) or(o look) look { return look{lk.force || o.force, lk.create || o.create} }

// rescanInterval is the time from the end of a walk of the whole tree to
// the start of the next: Config.Rescan, or the default (rescanWatched, or
// rescanUnwatched without a working watcher), and at least rescanFactor
// times the last walk.
func (s *Store) rescanInterval() time.Duration {
	var iv time.Duration
	switch {
	case s.cfg.Rescan > 0:
		iv = s.cfg.Rescan
	case s.watch.w == nil || s.watch.degraded.Load():
		iv = rescanUnwatched
	default:
		iv = rescanWatched
	}
	return max(iv, rescanFactor*time.Duration(s.watch.lastWalk.Load()))
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
	rescanTimer := time.NewTimer(time.Hour)
	rescanTimer.Stop()
	defer rescanTimer.Stop()

	for {
		select {
		case <-s.ctx.Done():
			return

		case <-primed:
			primed = nil
			rescanTimer.Reset(s.rescanInterval())
			rescan = rescanTimer.C

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
					pd.look = pd.look.or(old.look)
				}
				dirty[p] = pd
				if next.IsZero() || pd.due.Before(next) {
					next = pd.due
					timer.Reset(max(time.Until(next), 0))
				}
			}

		case <-timer.C:
			now := time.Now()
			batch := make(map[string]look)
			next = time.Time{}
			for p, pd := range dirty {
				if !pd.due.After(now) {
					batch[p] = pd.look
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
			s.watch.lastWalk.Store(int64(s.rescan()))
			rescanTimer.Reset(s.rescanInterval()) // from now: never back to back
		}
	}
}
