package shard

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// File is an item's body opened for reading: an *os.File for a body on
// storage (so the HTTP server can use sendfile), or an in-memory reader for
// a resident one.
type File interface {
	io.ReadSeeker
	io.Closer
}

// memFile is a resident body as a File.
type memFile struct{ *bytes.Reader }

func (memFile) Close() error { return nil }

// Open opens the body of it (encoding ""), or of its Variant with the given
// Content-Encoding. A resident body is read from memory; otherwise the file
// is opened on storage, and if it no longer matches the item (size or
// modification time differ, or it is gone) Open returns an error wrapping
// ErrChanged: look the path up again. The store reloads the file meanwhile;
// until it has, Lookup may return the same stale item, so do not retry in a
// loop. An unknown encoding is ErrNotFound.
func (s *Store) Open(it *Item, encoding string) (File, error) {
	if it == nil {
		return nil, ErrNotFound
	}
	p, size, mtime, body, chunks := it.Path, it.Size, it.ModTime(), it.Body(), it.Chunks()
	if encoding != "" {
		v := it.Variant(encoding)
		ext, ok := encodingExt[encoding]
		if v == nil || !ok {
			return nil, fmt.Errorf("shard: %s has no %s variant: %w", it.Path, encoding, ErrNotFound)
		}
		p, size, mtime, body, chunks = p+ext, v.Size, v.ModTime, v.Body, v.Chunks
	}
	if chunks != nil {
		return NewChunksReader(chunks), nil
	}
	if body != nil || size == 0 {
		return memFile{bytes.NewReader(body)}, nil
	}
	rel, ok := relPath(p)
	if !ok {
		return nil, ErrNotFound
	}
	f, err := s.openFile(rel)
	if err != nil {
		if missing(err) {
			s.stale(p)
			return nil, fmt.Errorf("shard: opening %s: %w", p, ErrChanged)
		}
		return nil, fmt.Errorf("shard: opening %s: %w", p, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("shard: opening %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != size || !fi.ModTime().Equal(mtime) {
		f.Close()
		s.stale(p)
		return nil, fmt.Errorf("shard: opening %s: %w", p, ErrChanged)
	}
	s.stats.storageReads.Add(1)
	s.stats.storageBytes.Add(size)
	return f, nil
}

// stale notes that Open found p changed and asks the updater to look.
func (s *Store) stale(p string) {
	s.stats.stale.Add(1)
	s.kick(p, false, 0)
}

// Interface guards
var (
	_ File = (*os.File)(nil)
	_ File = memFile{}
	_ File = (*ChunksReader)(nil)
)
