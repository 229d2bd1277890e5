package shard

import (
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Watching storage for changes: a watch on every directory (inotify does
// not watch recursively: on Linux inotify(7) itself, watch_linux.go;
// elsewhere fsnotify, watch_other.go; and a file created in any
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

// A dirWatcher watches directories for changes to their entries.
type dirWatcher interface {
	// add watches the directory at store path p (abs on the file system)
	// and returns its watch descriptor (0 where there is none). Adding a
	// directory twice is harmless.
	add(p, abs string) (wd int32, err error)
	// remove stops watching p, added with descriptor wd.
	remove(p, abs string, wd int32)
	// run reports events until close: ev for a change at store path p
	// (create: it was created or moved in; write: written), overflow when
	// events were lost, fail for other errors. The callbacks must not block.
	run(ev func(p string, create, write bool), overflow func(), fail func(error))
	// list returns the store paths watched (tests).
	list() []string
	close() error
}

// errWatcherClosed is add's error once the watcher is closed.
var errWatcherClosed = errors.New("shard: watcher closed")

// newWatcher makes the file watcher for a root; tests swap it to run
// without one.
var newWatcher = newDirWatcher

// watchFault, when set, is asked first by each watch added (the file-system
// path), and an error from it fails the add: tests inject a watch limit.
var watchFault func(abs string) error

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
	w        dirWatcher   // nil: no watcher
	degraded atomic.Bool  // some directory could not be watched
	warned   atomic.Bool  // that was logged, and not cleared since
	failed   atomic.Int64 // directories in watchFailed
	running  atomic.Bool  // the updater takes kicks
	lastWalk atomic.Int64 // how long the last walk of the tree took, in nanoseconds

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
	w, err := newWatcher(s.root)
	if err != nil {
		s.log.Warn("file watcher unavailable; changes are found by rescanning only", zap.Error(err))
	} else {
		s.watch.w = w
	}
	s.watch.running.Store(true)
	var bg sync.WaitGroup
	if w != nil {
		bg.Add(2)
		go func() {
			defer bg.Done()
			s.pump(w)
		}()
		go func() {
			defer bg.Done()
			<-s.ctx.Done()
			w.close() // ends pump
		}()
	}
	bg.Add(1)
	go func() {
		defer bg.Done()
		s.update()
	}()
	s.prime()
	bg.Wait() // they all return when the store is closed
	s.watch.running.Store(false)
}

// pump moves the watcher's events into the kick queue as they come, until
// the watcher is closed. It never waits for the updater (fsnotify sends some
// errors while holding the lock that adding and removing watches, which the
// updater does, need).
func (s *Store) pump(w dirWatcher) {
	w.run(func(p string, create, write bool) {
		s.stats.events.Add(1)
		s.kickLook(p, look{force: create || write, create: create}, debounce)
	}, func() {
		s.log.Warn("file watcher: events were lost (the kernel's queue overflowed); rescanning the tree")
		s.kick("/", false, debounce)
	}, func(err error) {
		s.log.Warn("file watcher", zap.Error(err))
	})
}

// addWatch watches directory p (called with s.scanMu held, before listing
// it) and returns its watch descriptor. Watching a directory twice is
// harmless. The first failure is logged (once until every directory is
// watched again, see watchSettled).
func (s *Store) addWatch(p string) (int32, error) {
	w := s.watch.w
	if w == nil {
		return 0, nil
	}
	abs := s.abs(p)
	var wd int32
	err := error(nil)
	if watchFault != nil {
		err = watchFault(abs)
	}
	if err == nil {
		wd, err = w.add(p, abs)
	}
	if err == nil || errors.Is(err, errWatcherClosed) {
		return wd, nil
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
	return 0, err
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
// (wd its descriptor; addErr the error adding it, nil when it is watched
// now).
func (s *Store) noteWatchLocked(d *dirRec, wd int32, addErr error) {
	if addErr == nil {
		d.wd = wd
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

// unwatchLocked stops watching directory p (gone), added with descriptor
// wd. The kernel may have dropped the watch already.
func (s *Store) unwatchLocked(p string, wd int32) {
	if w := s.watch.w; w != nil {
		w.remove(p, s.abs(p), wd)
	}
}

// abs returns the file-system path of slash-rooted p.
func (s *Store) abs(p string) string {
	if p == "/" {
		return s.root
	}
	return filepath.Join(s.root, filepath.FromSlash(p[1:]))
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
