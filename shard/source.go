package shard

import (
	"io"
	"os"
	"time"
)

// rfile is a regular file open for reading while it is primed or loaded.
type rfile interface {
	io.Reader
	io.Closer
	// stat returns the open file's size and modification time, and whether
	// it is a regular file.
	stat() (size int64, mtime time.Time, regular bool, err error)
}

// osFile is an *os.File as an rfile.
type osFile struct{ *os.File }

func (f osFile) stat() (int64, time.Time, bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, time.Time{}, false, err
	}
	return fi.Size(), fi.ModTime(), fi.Mode().IsRegular(), nil
}

// openReadRoot opens rel for reading through the os.Root, following
// symbolic links that stay inside the root.
func (s *Store) openReadRoot(rel string) (rfile, error) {
	f, err := s.openFileRoot(rel)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// openFileRoot opens rel through the os.Root, following symbolic links that
// stay inside the root.
func (s *Store) openFileRoot(rel string) (*os.File, error) {
	r, err := s.fsRoot()
	if err != nil {
		return nil, err
	}
	return s.openIn(r, rel)
}
