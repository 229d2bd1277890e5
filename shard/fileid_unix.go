//go:build unix

package shard

import (
	"io/fs"
	"syscall"
)

// fileID identifies a file on the machine: its device and inode numbers.
type fileID struct{ dev, ino uint64 }

// idOf returns the identity of the file fi describes, if the system gives
// one.
func idOf(fi fs.FileInfo) (fileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)}, true //nolint:unconvert // the types differ between systems
}
