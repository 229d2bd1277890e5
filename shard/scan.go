package shard

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"sync"
	"syscall"

	"go.uber.org/zap"
)

// listDir lists directory rel through r: its regular files (with size and
// modification time) and directories. Symbolic links and special files are
// left out: they are never served.
func listDir(r *os.Root, rel string) ([]obs, error) {
	f, err := r.Open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1) // in a Root, entries come with their lstat
	if err != nil {
		return nil, err
	}
	out := make([]obs, 0, len(ents))
	for _, e := range ents {
		switch t := e.Type(); {
		case t.IsDir():
			out = append(out, obs{name: e.Name(), dir: true})
		case t.IsRegular():
			fi, err := e.Info()
			if err != nil {
				continue // gone since the listing
			}
			out = append(out, obs{name: e.Name(), size: fi.Size(), mtime: fi.ModTime()})
		}
	}
	return out, nil
}

// realDir checks that rel is a directory reached without symbolic links
// (os.Root would follow links that stay inside the root), so that a
// directory replaced by a link is not listed through it.
func realDir(r *os.Root, rel string) error {
	if rel == "." {
		return nil
	}
	fi, err := lstatNoLinks(r, rel)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("listing %s: %w", rel, fs.ErrNotExist)
	}
	return nil
}

// missing reports whether err means the path is not there (any more), or
// is refused: a symbolic link on the way (ELOOP), or a way out of the root
// (EXDEV, from openat2).
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
	s.addWatch(dir) // before listing: what is created after the listing makes an event
	var ents []obs
	err = realDir(r, rel)
	if err == nil {
		ents, err = listDir(r, rel)
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
		if s.dirs[dir] == nil && (dir == "/" || s.dirs[path.Dir(dir)] != nil) {
			if s.files[dir] != nil {
				s.removeFileLocked(dir, aff)
			}
			s.addDirLocked(dir)
		}
		if s.dirs[dir] != nil {
			return s.applyListingLocked(dir, ents, aff)
		}
	}
	return nil
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
		fi, err := lstatNoLinks(r, rel)
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
// changes to OnChange.
func (s *Store) settle(aff affected) {
	s.mu.Lock()
	jobs := s.settleLocked(aff)
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
