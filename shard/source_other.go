//go:build !linux

package shard

import "os"

// beneath is Linux's openat2 fast path; elsewhere every open goes through
// os.Root.
type beneath struct{}

func (s *Store) closeBeneath() {}

// openRead opens the regular file rel for reading.
func (s *Store) openRead(rel string) (rfile, error) { return s.openReadRoot(rel) }

// openFile opens rel as an *os.File.
func (s *Store) openFile(rel string) (*os.File, error) { return s.openFileRoot(rel) }
