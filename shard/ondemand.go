package shard

import (
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"
)

// Answering a path from storage, for lookups the store cannot answer from
// memory: before priming is done, and for files this node does not own.
// The Item is transient: it is not kept, and its body is held only when the
// file is small.

// transientBodyMax is the largest body a transient Item holds; larger ones
// are served with Open.
const transientBodyMax = 1 << 20

// memoMax bounds the number of large files whose hash is remembered.
const memoMax = 1024

// memo remembers the data (without body) of large files read on demand,
// by path, so that looking one up again while it has not changed (same size
// and modification time) does not hash it again.
type memo struct {
	mu sync.Mutex
	m  map[string]*Item
}

func (m *memo) get(p string, fi fs.FileInfo) *Item {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.m[p]
	if c == nil || c.Size != fi.Size() || !c.ModTime().Equal(fi.ModTime()) {
		return nil
	}
	return c
}

func (m *memo) put(p string, c *Item) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil || len(m.m) >= memoMax {
		m.m = make(map[string]*Item) // crude, and enough: it only saves re-hashing
	}
	m.m[p] = c
}

func (m *memo) clear() {
	m.mu.Lock()
	m.m = nil
	m.mu.Unlock()
}

// transient is what a lookup from storage found.
type transient struct {
	it    *Item
	isDir bool
}

// fromStorage answers p from storage. Concurrent calls for the same path
// share one read.
func (s *Store) fromStorage(p string) (*Item, bool, error) {
	v, err, _ := s.flight.Do(p, func() (any, error) {
		it, isDir, err := s.loadTransient(p)
		return transient{it, isDir}, err
	})
	if err != nil {
		return nil, false, err
	}
	t := v.(transient)
	return t.it, t.isDir, nil
}

func (s *Store) loadTransient(p string) (*Item, bool, error) {
	rel, ok := relPath(p)
	if !ok {
		return nil, false, ErrNotFound
	}
	r, err := s.fsRoot()
	if err != nil {
		return nil, false, err
	}
	s.stats.onDemand.Add(1)
	fi, err := s.statIn(r, rel) // symbolic links inside the root are followed
	switch {
	case err != nil && missing(err):
		return nil, false, ErrNotFound // dangling, or leading out of the root
	case err != nil:
		return nil, false, fmt.Errorf("shard: looking up %s: %w", p, err)
	case fi.IsDir():
		return nil, true, nil
	case !fi.Mode().IsRegular():
		return nil, false, ErrNotFound // devices, pipes, sockets
	}
	if base, ok := siblingBase(s.encs, p); ok {
		if bfi, err := s.statIn(r, base[1:]); err == nil && bfi.Mode().IsRegular() {
			return nil, false, ErrNotFound // a Variant of base, not an item
		}
	}
	c, err := s.readTransient(p, fi)
	for try := 1; try < 3 && errors.Is(err, errChanging); try++ {
		time.Sleep(time.Duration(try) * 20 * time.Millisecond) // being written: give it a moment
		if fi, err = s.statIn(r, rel); err == nil {
			c, err = s.readTransient(p, fi)
		}
	}
	if err != nil {
		if missing(err) || errors.Is(err, errNotRegular) {
			return nil, false, ErrNotFound
		}
		return nil, false, fmt.Errorf("shard: reading %s: %w", p, err)
	}
	var sibs []*Item
	for i, e := range s.encs {
		sfi, err := s.statIn(r, rel+e.ext)
		if err != nil || !sfi.Mode().IsRegular() {
			continue
		}
		if v, err := s.readTransient(p+e.ext, sfi); err == nil {
			if sibs == nil {
				sibs = make([]*Item, len(s.encs))
			}
			sibs[i] = v
		}
	}
	return withVariants(c, s.encs, sibs), false, nil
}

// readTransient reads the file at p (stat'ed as fi) for a transient Item.
func (s *Store) readTransient(p string, fi fs.FileInfo) (*Item, error) {
	if fi.Size() > transientBodyMax {
		if c := s.memo.get(p, fi); c != nil {
			return c, nil
		}
	}
	c, err := s.readFileHeap(s.ctx, p, func(size int64) bool { return size <= transientBodyMax })
	if err != nil {
		return nil, err
	}
	s.stats.storageReads.Add(1)
	s.stats.storageBytes.Add(c.Size)
	if !c.Resident() {
		s.memo.put(p, c)
	}
	return c, nil
}
