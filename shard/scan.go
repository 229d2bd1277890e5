package shard

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// maxDirLinks bounds the directory links a walked path may cross: deeper
// ones are not walked (with cycles already cut, only a tree made to
// multiply paths goes that deep).
const maxDirLinks = 8

// errCycle means a directory is one of its own ancestors (reached through a
// symbolic link, or a bind mount), and errTooDeep that its path crosses more
// than maxDirLinks directory links: neither is walked nor served.
var (
	errCycle   = fmt.Errorf("directory is its own ancestor: %w", fs.ErrNotExist)
	errTooDeep = fmt.Errorf("more than %d directory links on the path: %w", maxDirLinks, fs.ErrNotExist)
)

// entKind is what a directory entry is.
type entKind uint8

const (
	entUnknown entKind = iota // the listing did not say: stat it
	entFile                   // a regular file
	entDir                    // a directory
	entLink                   // a symbolic link (until resolved)
	entOther                  // anything else: not served
)

// kindOfMode returns the entry kind of a file mode's type bits.
func kindOfMode(t fs.FileMode) entKind {
	switch {
	case t.IsRegular():
		return entFile
	case t.IsDir():
		return entDir
	case t&fs.ModeSymlink != 0:
		return entLink
	default:
		return entOther
	}
}

// dirent is one entry of a directory being listed.
type dirent struct {
	name   string
	kind   entKind
	link   bool // a symbolic link, resolved: kind, size and mtime are its target's
	held   bool // a file: this node holds it; a directory: known already
	stated bool // size, mtime and identity are filled in
	size   int64
	mtime  time.Time
	id     fileID
	hasID  bool
}

// onEntryStat, when not nil, is called with the path of each directory
// entry listDir stats. Tests count them.
var onEntryStat func(p string)

// direntLists are listDir's lists of entries, reused: a walk lists every
// directory of the tree, and a list grown one entry at a time for each
// took 300 MB of garbage for a tree of 100,000 directories of ten files.
// Lists longer than maxPooledDirents are left to the collector.
var direntLists = sync.Pool{New: func() any { return new([]dirent) }}

const maxPooledDirents = 1024

// listing is what listDir saw of a directory.
type listing struct {
	ents  []obs  // the files this node holds, and the directories
	id    fileID // the directory's identity
	hasID bool   //
	gen   uint64 // ownsState.gen the held files were chosen under
	files int    // regular files (and links to one) in it, held or not
	held  int    // of which this node holds
}

// listDir lists directory dir (root-relative rel), whose proper ancestors
// have the identities anc and whose path crosses links directory links:
// the regular files this node holds (with size and modification time), the
// directories, and the symbolic links that resolve inside the root to a
// directory or to a file it holds (with their target's metadata). Links
// that lead out of the root or nowhere, special files, directories that
// are an ancestor of dir or dir itself (cycles), and directory links past
// maxDirLinks are left out: they are not served.
//
// Only what is listed as held is stat'ed, plus symbolic links, entries
// whose type the listing does not give, and directories not known yet (for
// cycles): the files another node holds are its to watch.
func (s *Store) listDir(r *os.Root, dir, rel string, anc []fileID, links int) (listing, error) {
	var l listing
	d, err := s.openDir(r, rel)
	if err != nil {
		return l, err
	}
	defer d.close()
	if l.id, l.hasID, err = d.ident(rel); err != nil {
		return l, err
	}
	if l.hasID {
		if slices.Contains(anc, l.id) {
			return l, errCycle
		}
		anc = append(anc[:len(anc):len(anc)], l.id)
	}
	sp := direntLists.Get().(*[]dirent)
	ents, err := d.entries(rel, (*sp)[:0])
	defer func() {
		if cap(ents) <= maxPooledDirents {
			clear(ents) // no names kept alive
			*sp = ents[:0]
			direntLists.Put(sp)
		}
	}()
	if err != nil {
		return l, err
	}
	cyclic := func(id fileID, ok bool) bool { return ok && slices.Contains(anc, id) }
	stat := d.stat
	if onEntryStat != nil {
		stat = func(e *dirent) error { onEntryStat(join(dir, e.name)); return d.stat(e) }
	}

	// What each entry is: links resolved through the root.
	for i := range ents {
		e := &ents[i]
		if e.kind == entUnknown && stat(e) != nil {
			e.kind = entOther // gone since the listing
		}
		if e.kind != entLink {
			continue
		}
		fi, err := s.statIn(r, joinRel(rel, e.name))
		switch {
		case err != nil: // dangling, leading out, a loop, or gone
			e.kind = entOther
		case fi.Mode().IsRegular():
			e.kind, e.link, e.stated = entFile, true, true
			e.size, e.mtime = fi.Size(), fi.ModTime()
		case fi.IsDir() && links < maxDirLinks:
			e.kind, e.link, e.stated = entDir, true, true
			if id, ok := idOf(fi); cyclic(id, ok) {
				e.kind = entOther
			}
		default:
			e.kind = entOther
		}
	}

	// Which files are this node's (a precompressed sibling follows the file
	// it compresses, when that is listed too), which directories are new.
	var fileNames map[string]bool
	if len(s.encs) > 0 {
		fileNames = make(map[string]bool, len(ents))
		for _, e := range ents {
			if e.kind == entFile {
				fileNames[e.name] = true
			}
		}
	}
	isFile := func(p string) bool { return fileNames[path.Base(p)] }
	s.mu.RLock()
	l.gen = s.setOwn.gen
	for i := range ents {
		switch e := &ents[i]; e.kind {
		case entFile:
			l.files++
			e.held = s.holdsLocked(join(dir, e.name), isFile)
		case entDir:
			e.held = s.dirs[join(dir, e.name)] != nil
		}
	}
	s.mu.RUnlock()

	l.ents = make([]obs, 0, len(ents))
	for i := range ents {
		switch e := &ents[i]; e.kind {
		case entFile:
			if !e.held {
				continue
			}
			l.held++
			if !e.stated && (stat(e) != nil || e.kind != entFile) {
				continue // gone or replaced since the listing: the next look sees it
			}
			l.ents = append(l.ents, obs{name: e.name, size: e.size, mtime: e.mtime, link: e.link})
		case entDir:
			if !e.held && !e.stated && (stat(e) != nil || e.kind != entDir || cyclic(e.id, e.hasID)) {
				continue // gone, replaced, or a bind mount of an ancestor
			}
			l.ents = append(l.ents, obs{name: e.name, dir: true, link: e.link})
		}
	}
	return l, nil
}

// joinRel returns the root-relative path of name in directory rel.
func joinRel(rel, name string) string {
	if rel == "." {
		return name
	}
	return rel + "/" + name
}

// missing reports whether err means the path is not there (any more), or
// is refused: a symbolic link that leads out of the root (errEscapes, or
// EXDEV from openat2), a loop of links (ELOOP), a cycle of directories.
func missing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) ||
		errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.EXDEV)
}

// scanTree walks the tree at directory d (known, or with a known parent),
// watching every directory before listing it, and
// applies what it finds: new and changed files go to aff, vanished ones are
// forgotten.
func (s *Store) scanTree(d string, aff affected) {
	type todo struct {
		dir       string
		viaParent bool
	}
	stack := []todo{{d, false}}
	for len(stack) > 0 && s.ctx.Err() == nil {
		t := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, sub := range s.scanDir(t.dir, aff, false, t.viaParent) {
			stack = append(stack, todo{sub, true})
		}
	}
}

// walkParallel is scanTree("/", nil) with s.workers directories listed at
// a time: priming's first walk, where no two walkers list the same
// directory (the listings of a directory must apply in the order they were
// taken; the updater's scans are exclusive).
func (s *Store) walkParallel() {
	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		stack   = []string{"/"}
		pending = 1 // directories queued or being listed
		wg      sync.WaitGroup
	)
	for range s.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			for {
				for len(stack) == 0 && pending > 0 {
					cond.Wait()
				}
				if pending == 0 {
					return
				}
				dir := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				mu.Unlock()
				var subs []string
				if s.ctx.Err() == nil {
					subs = s.scanDir(dir, nil, true, true)
				}
				mu.Lock()
				stack = append(stack, subs...)
				pending += len(subs) - 1
				cond.Broadcast()
			}
		}()
	}
	wg.Wait()
}

// scanDir lists directory dir and applies the listing; it returns the
// subdirectories. shared lets other shared listings of other directories
// run meanwhile. viaParent says that dir was just found in its parent's
// listing, which told whether it is reached through a directory link.
//
// A directory is watched before it is listed (what is created after the
// listing makes an event), once: a rescan does not add the watch again
// unless adding it failed. A directory whose path crosses a directory link
// is listed like any other (as file_server would serve it) but not
// watched: the watcher would report its events under one of the paths of
// the directory only, and Remove would drop the real directory's watch.
// Changes under it are found by rescans.
func (s *Store) scanDir(dir string, aff affected, shared, viaParent bool) []string {
	r, err := s.fsRoot()
	if err != nil {
		return nil
	}
	rel, _ := relPath(dir)
	if shared {
		s.scanMu.RLock()
		defer s.scanMu.RUnlock()
	} else {
		s.scanMu.Lock()
		defer s.scanMu.Unlock()
	}
	for try := 0; ; try++ {
		s.mu.RLock()
		links, anc, placed := s.placeLocked(dir)
		known := s.dirs[dir]
		mode := watchNew
		var oldID fileID
		if known != nil {
			mode, oldID = known.watch, known.id
			if viaParent {
				links = int(known.links)
			}
		}
		s.mu.RUnlock()
		if !placed {
			return nil // its parent is not known (any more)
		}
		if dir != "/" && (known == nil || !viaParent) {
			if fi, err := r.Lstat(rel); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
				links++
			}
		}
		added, wd, addErr := false, int32(0), error(nil)
		if links == 0 && (mode == watchNew || mode == watchFailed) {
			added = true
			wd, addErr = s.addWatch(dir)
		}
		var l listing
		if links > maxDirLinks {
			err = errTooDeep
		} else {
			l, err = s.listDir(r, dir, rel, anc, links)
		}

		s.mu.Lock()
		if err == nil && l.gen != s.setOwn.gen && try < 3 {
			s.mu.Unlock()
			continue // the node's share changed while listing: list again
		}
		var subs []string
		switch {
		case err != nil && missing(err):
			if dir != "/" {
				s.removeLocked(dir, aff)
			}
		case err != nil:
			s.log.Warn("listing directory", zap.String("path", dir), zap.Error(err))
		default:
			if d := s.dirs[dir]; d != nil && int(d.links) != links && dir != "/" {
				// A directory replaced by a link to one, or the other way round.
				s.removeDirLocked(dir, aff)
			}
			if s.dirs[dir] == nil && (dir == "/" || s.dirs[path.Dir(dir)] != nil) {
				if s.files.get(dir) != nil {
					s.removeFileLocked(dir, aff)
				}
				s.addDirLocked(dir, links)
			}
			if d := s.dirs[dir]; d != nil {
				d.id, d.hasID = l.id, l.hasID
				subs = s.applyListingLocked(dir, l.ents, aff)
			}
		}
		d := s.dirs[dir]
		switch {
		case d != nil && added:
			s.noteWatchLocked(d, wd, addErr)
		case added && addErr == nil:
			s.unwatchLocked(dir, wd) // gone meanwhile
		case d != nil && links == 0 && d.watch == watchOn && d.hasID && d.id != oldID:
			// Another directory under the same path (removed and made
			// again): the kernel dropped the old one's watch.
			wd, err := s.addWatch(dir)
			s.noteWatchLocked(d, wd, err)
		}
		s.mu.Unlock()
		return subs
	}
}

// placeLocked returns, for directory dir, the directory links its parent's
// path crosses and the identities of its proper ancestors; placed is false
// if its parent is not known.
func (s *Store) placeLocked(dir string) (links int, anc []fileID, placed bool) {
	if dir == "/" {
		return 0, nil, true
	}
	parent := s.dirs[path.Dir(dir)]
	if parent == nil {
		return 0, nil, false
	}
	for p := path.Dir(dir); ; p = path.Dir(p) {
		if d := s.dirs[p]; d != nil && d.hasID {
			anc = append(anc, d.id)
		}
		if p == "/" {
			break
		}
	}
	return int(parent.links), anc, true
}

// look is why a path is looked at again.
type look struct {
	force  bool // reload it even if size and modification time look unchanged
	create bool // something was created there: look even if it is not ours
}

// refreshPaths looks at each path again (after file-system events or
// kicks) and applies what it sees. Directories are scanned. A path this
// node neither holds nor could hold is not looked at unless something was
// created there (it may be a directory): its changes are its owner's to
// see.
func (s *Store) refreshPaths(paths map[string]look, aff affected) {
	r, err := s.fsRoot()
	if err != nil {
		return
	}
	type seen struct {
		p        string
		fi       fs.FileInfo
		err      error
		force    bool
		baseFile bool // a precompressed sibling whose base is a regular file
	}
	var scans []string

	s.scanMu.Lock()
	all := make([]seen, 0, len(paths))
	s.mu.RLock()
	for p, lk := range paths {
		if _, ok := relPath(p); !ok {
			continue
		}
		if lk.create || p == "/" || s.files.get(p) != nil || s.dirs[p] != nil || s.mayHoldLocked(p) || s.siblingsMineLocked(p) {
			all = append(all, seen{p: p, force: lk.force})
		}
	}
	s.mu.RUnlock()
	for i := range all {
		e := &all[i]
		rel, _ := relPath(e.p)
		e.fi, e.err = s.statIn(r, rel) // a link is seen as its target
		if e.err == nil && e.fi.Mode().IsRegular() {
			if base, ok := siblingBase(s.encs, e.p); ok {
				bfi, err := s.statIn(r, base[1:])
				e.baseFile = err == nil && bfi.Mode().IsRegular()
			}
		}
	}
	// Removals first: a renamed directory must be forgotten (and its watch
	// dropped) before its new name is watched.
	sort.SliceStable(all, func(i, j int) bool { return all[i].err != nil && all[j].err == nil })
	s.mu.Lock()
	for _, e := range all {
		parent := path.Dir(e.p)
		switch {
		case e.p == "/":
			scans = append(scans, "/")
		case s.dirs[parent] == nil:
			// Not under a directory we know: look at the parent instead.
			if e.err == nil {
				scans = append(scans, parent)
			}
		case e.err != nil && !missing(e.err):
			s.log.Warn("checking path", zap.String("path", e.p), zap.Error(e.err))
		case e.err != nil || (!e.fi.IsDir() && !e.fi.Mode().IsRegular()):
			s.removeLocked(e.p, aff)
			// Its siblings are items of their own now.
			s.lookAtSiblingsLocked(e.p, s.owns)
		case e.fi.IsDir():
			if d := s.dirs[e.p]; d != nil && d.watch == watchOn {
				// An event about the directory itself: it may have been
				// removed and made again, and its watch dropped with it.
				// Watch it again (harmless if it was not).
				s.setWatchLocked(d, watchNew)
			}
			scans = append(scans, e.p)
		default:
			held := s.owns(e.p)
			if base, ok := siblingBase(s.encs, e.p); ok && (e.baseFile || s.files.get(base) != nil) {
				held = s.owns(base)
			}
			if held {
				s.observeFileLocked(e.p, e.fi.Size(), e.fi.ModTime(), e.force, aff)
			} else {
				s.removeFileLocked(e.p, aff) // now a variant of another node's item
			}
			// Its siblings follow it now.
			if s.owns(e.p) {
				s.lookAtSiblingsLocked(e.p, func(string) bool { return true })
			} else {
				for _, enc := range s.encs {
					s.removeFileLocked(e.p+enc.ext, aff)
				}
			}
		}
	}
	s.mu.Unlock()
	s.scanMu.Unlock()

	for _, d := range scans {
		s.scanTreeFrom(d, aff)
	}
}

// lookAtSiblingsLocked asks for the precompressed siblings of p that this
// node does not hold, and for which want says yes, to be looked at: they
// may have become its to hold (p, their base, vanished, or became this
// node's).
func (s *Store) lookAtSiblingsLocked(p string, want func(q string) bool) {
	for _, enc := range s.encs {
		if q := p + enc.ext; s.files.get(q) == nil && want(q) {
			s.kickLook(q, look{create: true}, 0)
		}
	}
}

// scanTreeFrom scans directory d, starting from its nearest known ancestor
// if d itself is not reachable from what the store knows.
func (s *Store) scanTreeFrom(d string, aff affected) {
	s.mu.RLock()
	for d != "/" && s.dirs[path.Dir(d)] == nil {
		d = path.Dir(d)
	}
	s.mu.RUnlock()
	s.scanTree(d, aff)
}

// rescan walks the whole tree again, comparing the sizes and modification
// times of what this node holds, to catch what the watcher missed, and
// listing every directory to find new paths; then it loads what changed.
// It returns how long the walk took.
func (s *Store) rescan() time.Duration {
	start := time.Now()
	aff := make(affected)
	s.scanTree("/", aff)
	took := time.Since(start)
	s.stats.rescans.Add(1)
	s.watchSettled()
	s.settle(aff)
	return took
}

// settle republishes and reloads whatever aff names and reports the
// changes to OnChange. prepare, if not nil, sees the loads before they
// run, with s.mu held.
func (s *Store) settle(aff affected, prepare ...func(*job)) {
	s.mu.Lock()
	jobs := s.settleLocked(aff)
	for _, f := range prepare {
		for _, j := range jobs {
			f(j)
		}
	}
	s.mu.Unlock()
	s.runJobs(jobs)
	s.mu.Lock()
	changes := s.takeChangesLocked()
	s.mu.Unlock()
	if s.cfg.OnChange != nil {
		for _, c := range changes {
			s.cfg.OnChange(c.path, c.it)
		}
	}
}
