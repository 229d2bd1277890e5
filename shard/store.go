package shard

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// Store is a node's copy of (its share of) a directory tree: an index from
// path to Item that Lookup reads without locks, filled by priming, kept
// current by a file watcher and periodic rescans, with item bodies held in
// memory up to a hard budget.
//
// New only checks the configuration; Start primes and watches in the
// background; Close stops everything and drops the memory. Until priming is
// done (Ready), a path not yet in memory is answered from storage. SetOwns
// changes the node's share in place (a ring change).
type Store struct {
	cfg     Config
	root    string     // absolute, clean
	encs    []encoding // configured precompressed encodings, in preference order
	budget  int64      // cfg.Memory; 0: no limit
	workers int
	log     *zap.Logger

	// index maps a slash-rooted path to its published *Item, or to a
	// directory's item (isDir). It is the read side: Lookup touches nothing
	// else for a known path. Written under mu.
	index *index

	// mu guards the writer side below (see tree.go) and the planned flag.
	// Lookups take it only on a miss.
	mu       sync.RWMutex
	files    fileTable
	seen     map[*fileRec]seenAs // what storage holds where a record's data is not that (tree.go)
	seenPeak int                 // the most entries seen has had since it was made
	dirs     map[string]*dirRec
	seq      uint64                 // last load sequence number handed out
	planned  bool                   // the priming queue is built; later files are the updater's
	owner    func(path string) bool // Config.Owns, or SetOwns's latest; nil: everything
	reserved int64                  // body bytes promised to loads in flight
	held     atomic.Int64
	changes  []change // published while a batch runs; reported after it

	// scanMu serializes observing storage and applying what was seen (a
	// directory listing, an lstat), so observations apply in the order they
	// were made. Priming's walk lists different directories in parallel,
	// each under the read lock.
	scanMu sync.RWMutex

	ready    atomic.Bool
	closed   atomic.Bool
	started  bool
	lifeMu   sync.Mutex // Start/Close
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	primedCh chan struct{} // closed when priming is done

	rootMu   sync.Mutex
	fsroot   atomic.Pointer[os.Root]
	realRoot string  // root with every symbolic link resolved; set before fsroot
	beneath  beneath // Linux: openat2 relative to the root (source_linux.go)

	watch  watchState
	setOwn ownsState
	flight singleflight.Group
	memo   memo
	stats  counters
	primed progressCounters
}

// New returns a Store for cfg after checking it. It is cheap: it reads no
// file (it runs in `caddy validate`); Start does the work.
func New(cfg Config) (*Store, error) {
	if cfg.Root == "" {
		return nil, fmt.Errorf("shard: root is required")
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("shard: root %q: %w", cfg.Root, err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("shard: root %q: %w", cfg.Root, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("shard: root %q is not a directory", cfg.Root)
	}
	if cfg.Memory < 0 {
		return nil, fmt.Errorf("shard: memory %d is negative", cfg.Memory)
	}
	if cfg.Workers < 0 {
		return nil, fmt.Errorf("shard: workers %d is negative", cfg.Workers)
	}
	if cfg.Rescan < 0 {
		return nil, fmt.Errorf("shard: rescan interval %v is negative", cfg.Rescan)
	}
	var encs []encoding
	for _, name := range cfg.Precompressed {
		ext, ok := encodingExt[name]
		if !ok {
			return nil, fmt.Errorf("shard: unknown precompressed encoding %q (want br, gzip or zstd)", name)
		}
		if slices.ContainsFunc(encs, func(e encoding) bool { return e.name == name }) {
			return nil, fmt.Errorf("shard: precompressed encoding %q listed twice", name)
		}
		encs = append(encs, encoding{name: name, ext: ext})
	}
	workers := cfg.Workers
	if workers == 0 {
		workers = max(4, 2*runtime.GOMAXPROCS(0))
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cfg:      cfg,
		root:     root,
		encs:     encs,
		budget:   cfg.Memory,
		workers:  workers,
		log:      log.With(zap.String("root", root)),
		index:    newIndex(),
		files:    fileTable{},
		dirs:     make(map[string]*dirRec),
		ctx:      ctx,
		cancel:   cancel,
		primedCh: make(chan struct{}),
		owner:    cfg.Owns,
	}
	s.setOwn.ch = make(chan struct{}, 1)
	s.watch.kickCh = make(chan struct{}, 1)
	return s, nil
}

// Start starts priming and watching the root in the background and returns
// at once. Calling it again, or after Close, does nothing.
// Started reports whether Start was called.
func (s *Store) Started() bool {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	return s.started
}

func (s *Store) Start() {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.started || s.closed.Load() {
		return
	}
	s.started = true
	s.wg.Add(1)
	go s.run()
}

// Close stops the watcher, the rescans and the priming workers, waits for
// them, and drops the memory the store holds. Lookups after Close fail with
// ErrClosed. Calling it again does nothing.
func (s *Store) Close() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	s.cancel()
	s.wg.Wait()

	s.closeBeneath()
	s.rootMu.Lock()
	var err error
	if r := s.fsroot.Swap(nil); r != nil {
		err = r.Close()
	}
	s.rootMu.Unlock()

	s.mu.Lock()
	s.index.clear()
	for _, rec := range s.files.all() {
		rec.drop() // the bodies go once nothing else holds them
	}
	s.files = fileTable{}
	s.seen, s.seenPeak = nil, 0
	s.dirs = make(map[string]*dirRec)
	s.held.Store(0)
	s.stats.items.Store(0)
	s.stats.dirs.Store(0)
	s.mu.Unlock()
	s.memo.clear()
	return err
}

// Ready reports whether priming has finished. Once true it stays true, also
// across the changes the watcher applies and after Close.
func (s *Store) Ready() bool { return s.ready.Load() }

// Root returns the absolute path of the directory the store holds.
func (s *Store) Root() string { return s.root }

// Lookup returns the item for the regular file at path, or isDir for a
// directory ("/" included), or ErrNotFound. path must be clean and
// slash-rooted ("/css/site.css"), as the handler makes it.
//
// A known path costs one lock-free map read and no allocation. Before
// priming is done, a path not in memory yet is answered from storage (the
// Item is then transient: not kept by the store; concurrent lookups of the
// same path share one read). After that, a path the store does not know is
// not found without touching storage, except for files this node does not
// own, which are always read from storage.
//
// A precompressed sibling (x.css.gz, with gzip configured, when x.css
// exists) is not found: it is a Variant of the item it compresses.
// Published returns the item the store publishes at path (a file this
// node holds, or held until a ring change that is still being applied),
// nil if none. Unlike Lookup it never reads storage.
func (s *Store) Published(path string) *Item {
	if it, ok := s.index.load(path); ok {
		return it
	}
	return nil
}

func (s *Store) Lookup(path string) (it *Item, isDir bool, err error) {
	if it, ok := s.index.load(path); ok {
		return it, false, nil
	}
	return s.lookupSlow(path)
}

// lookupSlow answers a path that is not in the index.
func (s *Store) lookupSlow(p string) (*Item, bool, error) {
	if s.closed.Load() {
		return nil, false, ErrClosed
	}
	if p == "/" {
		return nil, true, nil
	}
	if _, ok := relPath(p); !ok {
		return nil, false, ErrNotFound
	}
	// Directories are not in the index (an Item each cost 200 bytes a
	// directory, for lookups that are rare): their records answer.
	s.mu.RLock()
	_, isDir := s.dirs[p]
	s.mu.RUnlock()
	if isDir {
		return nil, true, nil
	}
	if s.ready.Load() {
		s.mu.RLock()
		rec := s.files.get(p)
		hidden := rec != nil && s.hiddenLocked(p)
		theirs := rec == nil && !s.mayHoldLocked(p) // scale-store: not recorded, another node's: storage answers
		s.mu.RUnlock()
		if (rec == nil && !theirs) || hidden {
			return nil, false, ErrNotFound
		}
		// A file we know but do not publish: not ours, or its (re)load has
		// not finished. Storage answers.
	}
	return s.fromStorage(p)
}

// Each calls fn for every item the store publishes (what Lookup answers
// from memory), in no particular order, until fn returns false. Items added
// or removed meanwhile may or may not be seen.
func (s *Store) Each(fn func(*Item) bool) {
	s.index.each(fn)
}

// fsRoot returns the os.Root every storage access goes through, opening it
// on first use. It also sets realRoot, for absolute symbolic links
// (resolve.go).
func (s *Store) fsRoot() (*os.Root, error) {
	if r := s.fsroot.Load(); r != nil {
		return r, nil
	}
	s.rootMu.Lock()
	defer s.rootMu.Unlock()
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if r := s.fsroot.Load(); r != nil {
		return r, nil
	}
	r, err := os.OpenRoot(s.root)
	if err != nil {
		return nil, fmt.Errorf("shard: opening root: %w", err)
	}
	if rr, err := filepath.EvalSymlinks(s.root); err == nil {
		s.realRoot = rr
	}
	s.fsroot.Store(r)
	return r, nil
}
