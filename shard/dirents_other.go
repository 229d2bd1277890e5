//go:build !linux

package shard

import (
	"fmt"
	"io/fs"
	"os"
	"slices"
	"syscall"
)

// Listing a directory elsewhere than Linux: os.File.ReadDir through the
// os.Root, which lstats every entry as it lists it; stat only hands out
// what the listing already holds.

// dirReader is a directory open for listing.
type dirReader struct {
	f     *os.File
	infos map[string]fs.FileInfo
}

func (s *Store) openDir(r *os.Root, rel string) (*dirReader, error) {
	f, err := s.openIn(r, rel)
	if err != nil {
		return nil, err
	}
	return &dirReader{f: f}, nil
}

func (d *dirReader) close() { d.f.Close() }

func (d *dirReader) ident(rel string) (fileID, bool, error) {
	fi, err := d.f.Stat()
	if err != nil {
		return fileID{}, false, err
	}
	if !fi.IsDir() {
		return fileID{}, false, fmt.Errorf("listing %s: %w", rel, syscall.ENOTDIR)
	}
	id, ok := idOf(fi)
	return id, ok, nil
}

func (d *dirReader) entries(rel string, out []dirent) ([]dirent, error) {
	ents, err := d.f.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	d.infos = make(map[string]fs.FileInfo, len(ents))
	out = slices.Grow(out, len(ents))
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			d.infos[e.Name()] = fi
		}
		out = append(out, dirent{name: e.Name(), kind: kindOfMode(e.Type())})
	}
	return out, nil
}

func (d *dirReader) stat(e *dirent) error {
	fi, ok := d.infos[e.name]
	if !ok {
		return &fs.PathError{Op: "lstat", Path: e.name, Err: fs.ErrNotExist}
	}
	e.kind = kindOfMode(fi.Mode().Type())
	e.size, e.mtime = fi.Size(), fi.ModTime()
	e.id, e.hasID = idOf(fi)
	e.stated = true
	return nil
}
