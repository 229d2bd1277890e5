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

// listDir lists directory rel, whose proper ancestors have the identities
// anc and whose path crosses links directory links: its regular files (with
// size and modification time) and directories, and the symbolic links that
// resolve inside the root to either (with their target's metadata). Links
// that lead out of the root or nowhere, special files, directories that are
// an ancestor of rel or rel itself (cycles), and directory links past
// maxDirLinks are left out: they are not served. It also returns rel's
// identity.
func (s *Store) listDir(r *os.Root, rel string, anc []fileID, links int) ([]obs, fileID, bool, error) {
	f, err := s.openIn(r, rel)
	if err != nil {
		return nil, fileID{}, false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileID{}, false, err
	}
	if !fi.IsDir() {
		return nil, fileID{}, false, fmt.Errorf("listing %s: %w", rel, syscall.ENOTDIR)
	}
	id, hasID := idOf(fi)
	if hasID {
		if slices.Contains(anc, id) {
			return nil, id, hasID, errCycle
		}
		anc = append(anc[:len(anc):len(anc)], id)
	}
	ents, err := f.ReadDir(-1) // in a Root, entries come with their lstat
	if err != nil {
		return nil, id, hasID, err
	}
	cyclic := func(fi fs.FileInfo) bool {
		id, ok := idOf(fi)
		return ok && slices.Contains(anc, id)
	}
	out := make([]obs, 0, len(ents))
	for _, e := range ents {
		t := e.Type()
		if t&fs.ModeSymlink != 0 {
			// Stat the target through the root: refused if it leads out.
			fi, err := s.statIn(r, joinRel(rel, e.Name()))
			switch {
			case err != nil: // dangling, leading out, a loop, or gone
			case fi.Mode().IsRegular():
				out = append(out, obs{name: e.Name(), size: fi.Size(), mtime: fi.ModTime(), link: true})
			case fi.IsDir() && links < maxDirLinks && !cyclic(fi):
				out = append(out, obs{name: e.Name(), dir: true, link: true})
			}
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // gone since the listing
		}
		switch {
		case t.IsDir():
			if !cyclic(fi) { // a bind mount of an ancestor
				out = append(out, obs{name: e.Name(), dir: true})
			}
		case t.IsRegular():
			out = append(out, obs{name: e.Name(), size: fi.Size(), mtime: fi.ModTime()})
		}
	}
	return out, id, hasID, nil
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
// watching every directory before listing it, and applies what it finds:
// new and changed files go to aff, vanished ones are forgotten.
func (s *Store) scanTree(d string, aff affected) {
	stack := []string{d}
	for len(stack) > 0 && s.ctx.Err() == nil {
		dir := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		stack = append(stack, s.scanDir(dir, aff, false)...)
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
					subs = s.scanDir(dir, nil, true)
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

// scanDir watches and lists directory dir and applies the listing; it
// returns the subdirectories. shared lets other shared listings of other
// directories run meanwhile.
//
// A directory whose path crosses a directory link is listed like any other
// (as file_server would serve it) but not watched: the watcher would report
// its events under one of the paths of the directory only, and Remove would
// drop the real directory's watch. Changes under it are found by rescans.
func (s *Store) scanDir(dir string, aff affected, shared bool) []string {
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
	s.mu.RLock()
	links, anc, placed := s.placeLocked(dir)
	s.mu.RUnlock()
	if !placed {
		return nil // its parent is not known (any more)
	}
	if dir != "/" {
		if fi, err := r.Lstat(rel); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			links++
		}
	}
	if links == 0 {
		s.addWatch(dir) // before listing: what is created after the listing makes an event
	}
	var (
		ents  []obs
		id    fileID
		hasID bool
	)
	if links > maxDirLinks {
		err = errTooDeep
	} else {
		ents, id, hasID, err = s.listDir(r, rel, anc, links)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err != nil && missing(err):
		if dir != "/" {
			s.removeLocked(dir, aff)
		}
	case err != nil:
		s.log.Warn("listing directory", zap.String("path", dir), zap.Error(err))
	default:
		if d := s.dirs[dir]; d != nil && d.links != links && dir != "/" {
			// A directory replaced by a link to one, or the other way round.
			s.removeDirLocked(dir, aff)
		}
		if s.dirs[dir] == nil && (dir == "/" || s.dirs[path.Dir(dir)] != nil) {
			if s.files[dir] != nil {
				s.removeFileLocked(dir, aff)
			}
			s.addDirLocked(dir, links)
		}
		if d := s.dirs[dir]; d != nil {
			d.id, d.hasID = id, hasID
			return s.applyListingLocked(dir, ents, aff)
		}
	}
	return nil
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
	return parent.links, anc, true
}

// refreshPaths looks at each path again (after file-system events or
// kicks; force: reload even if size and modification time look unchanged)
// and applies what it sees. Directories are scanned.
func (s *Store) refreshPaths(paths map[string]bool, aff affected) {
	r, err := s.fsRoot()
	if err != nil {
		return
	}
	type seen struct {
		p     string
		fi    fs.FileInfo
		err   error
		force bool
	}
	var scans []string

	s.scanMu.Lock()
	all := make([]seen, 0, len(paths))
	for p, force := range paths {
		rel, ok := relPath(p)
		if !ok {
			continue
		}
		fi, err := s.statIn(r, rel) // a link is seen as its target
		all = append(all, seen{p, fi, err, force})
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
		case e.fi.IsDir():
			scans = append(scans, e.p)
		default:
			s.observeFileLocked(e.p, e.fi.Size(), e.fi.ModTime(), e.force, aff)
		}
	}
	s.mu.Unlock()
	s.scanMu.Unlock()

	for _, d := range scans {
		s.scanTreeFrom(d, aff)
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

// rescan walks the whole tree again, comparing sizes and modification
// times, to catch what the watcher missed; then loads what changed.
func (s *Store) rescan() {
	aff := make(affected)
	s.scanTree("/", aff)
	s.stats.rescans.Add(1)
	s.settle(aff)
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
