//go:build linux

package shard

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Listing a directory on Linux: the directory is opened with openat2
// beneath the root (one system call, see source_linux.go), read with
// getdents64, whose records carry each entry's type, and only the entries
// the caller asks about are stat'ed (fstatat relative to the directory, not
// following links). os.File.ReadDir on a directory opened in an os.Root
// lstats every entry: for a node holding a third of a tree, that is three
// system calls where one is needed.

// dirReader is a directory open for listing.
type dirReader struct {
	fd int
	f  *os.File // when opened through os.Root (openat2 unavailable); owns fd
}

// direntBufs are getdents64 buffers.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// openDir opens directory rel (root-relative; symbolic links inside the
// root are followed) for listing.
func (s *Store) openDir(r *os.Root, rel string) (*dirReader, error) {
	fd, ok, err := s.openFD(rel)
	if ok {
		if err != nil {
			return nil, err
		}
		return &dirReader{fd: fd}, nil
	}
	f, err := s.openIn(r, rel)
	if err != nil {
		return nil, err
	}
	return &dirReader{fd: int(f.Fd()), f: f}, nil
}

func (d *dirReader) close() {
	if d.f != nil {
		d.f.Close()
		return
	}
	unix.Close(d.fd)
}

// ident returns the identity of the directory (and an error if it is not
// one).
func (d *dirReader) ident(rel string) (fileID, bool, error) {
	var st unix.Stat_t
	if err := fstatat(d.fd, "", &st, unix.AT_EMPTY_PATH); err != nil {
		return fileID{}, false, &fs.PathError{Op: "fstat", Path: rel, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fileID{}, false, fmt.Errorf("listing %s: %w", rel, syscall.ENOTDIR)
	}
	return fileID{dev: st.Dev, ino: st.Ino}, true, nil
}

// entries returns the directory's entries ("." and ".." left out), with
// their kind from getdents64 (entUnknown where the file system does not
// say).
func (d *dirReader) entries(rel string, out []dirent) ([]dirent, error) {
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	buf := *bp
	for {
		n, err := unix.Getdents(d.fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "getdents", Path: rel, Err: err}
		}
		if n <= 0 {
			return out, nil
		}
		for off := 0; off+19 <= n; {
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			if reclen == 0 || off+reclen > n {
				break
			}
			typ := buf[off+18]
			name := buf[off+19 : off+reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			off += reclen
			if string(name) == "." || string(name) == ".." {
				continue
			}
			out = append(out, dirent{name: string(name), kind: kindOfDT(typ)})
		}
	}
}

// kindOfDT maps a getdents64 d_type to an entry kind.
func kindOfDT(t uint8) entKind {
	switch t {
	case unix.DT_REG:
		return entFile
	case unix.DT_DIR:
		return entDir
	case unix.DT_LNK:
		return entLink
	case unix.DT_UNKNOWN:
		return entUnknown
	default:
		return entOther
	}
}

// stat lstats entry e (one fstatat, links not followed) and fills in its
// kind, size, modification time and identity.
func (d *dirReader) stat(e *dirent) error {
	var st unix.Stat_t
	if err := fstatat(d.fd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "fstatat", Path: e.name, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.kind = entFile
	case unix.S_IFDIR:
		e.kind = entDir
	case unix.S_IFLNK:
		e.kind = entLink
	default:
		e.kind = entOther
	}
	e.size, e.mtime = st.Size, time.Unix(st.Mtim.Unix())
	e.id, e.hasID, e.stated = fileID{dev: st.Dev, ino: st.Ino}, true, true
	return nil
}

// fstatat is unix.Fstatat retried on EINTR.
func fstatat(dirfd int, name string, st *unix.Stat_t, flags int) error {
	for {
		err := unix.Fstatat(dirfd, name, st, flags)
		if err != unix.EINTR {
			return err
		}
	}
}
