//go:build linux

package shard

import (
	"io"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// On Linux, files are opened with openat2(2) relative to the root
// directory (itself opened through the os.Root) with RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS: the kernel refuses any path that leaves the root or
// crosses a symbolic link, in one system call, where os.Root opens every
// parent directory in turn. Reads then go straight to the descriptor, with
// none of os.File's poller setup. Priming small files is dominated by these
// per-file costs. Where openat2 is missing (Linux < 5.6) or filtered
// (seccomp), the store falls back to os.Root.

// beneath is the root directory's descriptor for openat2.
type beneath struct {
	mu       sync.RWMutex // held for reading around openat2, for writing by close
	dir      *os.File     // the root directory; nil until opened or when unusable
	tried    bool         // dir was opened (or failed to)
	disabled atomic.Bool  // openat2 is not available: use os.Root
}

var beneathHow = unix.OpenHow{
	Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
	Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
}

// openFD opens rel (root-relative) with openat2, or returns ok false when
// openat2 cannot be used and the caller should use os.Root.
func (s *Store) openFD(rel string) (fd int, ok bool, err error) {
	b := &s.beneath
	b.mu.RLock()
	if !b.tried {
		b.mu.RUnlock()
		s.openBeneath()
		b.mu.RLock()
	}
	defer b.mu.RUnlock()
	if b.disabled.Load() || b.dir == nil {
		return -1, false, nil
	}
	how := beneathHow
	for {
		fd, err = unix.Openat2(int(b.dir.Fd()), rel, &how)
		if err != unix.EINTR {
			break
		}
	}
	if err == unix.ENOSYS || err == unix.EPERM {
		// Not implemented, or a seccomp filter (a read-only open's permission
		// problems are EACCES): os.Root from now on.
		b.disabled.Store(true)
		return -1, false, nil
	}
	if err != nil {
		return -1, true, &fs.PathError{Op: "openat2", Path: rel, Err: err}
	}
	return fd, true, nil
}

// openBeneath opens the root directory for openat2 once.
func (s *Store) openBeneath() {
	b := &s.beneath
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tried {
		return
	}
	b.tried = true
	r, err := s.fsRoot()
	if err != nil {
		return
	}
	d, err := r.Open(".")
	if err != nil {
		return
	}
	// Probe: openat2 of the directory itself.
	how := beneathHow
	fd, err := unix.Openat2(int(d.Fd()), ".", &how)
	if err != nil {
		d.Close()
		b.disabled.Store(true)
		return
	}
	unix.Close(fd)
	b.dir = d
}

// closeBeneath closes the root directory descriptor, waiting for opens in
// flight, so it is never used after (or reused as another file's number).
func (s *Store) closeBeneath() {
	b := &s.beneath
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tried = true
	if b.dir != nil {
		b.dir.Close()
		b.dir = nil
	}
}

// openRead opens the regular file rel for reading.
func (s *Store) openRead(rel string) (rfile, error) {
	fd, ok, err := s.openFD(rel)
	if !ok {
		return s.openReadRoot(rel)
	}
	if err != nil {
		return nil, err
	}
	return fdFile(fd), nil
}

// openFile opens rel as an *os.File (for Open: the HTTP server can then
// use sendfile).
func (s *Store) openFile(rel string) (*os.File, error) {
	fd, ok, err := s.openFD(rel)
	if !ok {
		r, err := s.fsRoot()
		if err != nil {
			return nil, err
		}
		return r.Open(rel)
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), s.abs("/"+rel)), nil
}

// fdFile is a file descriptor being read.
type fdFile int

func (f fdFile) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(f), b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, &fs.PathError{Op: "read", Err: err}
		}
		if n == 0 && len(b) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (f fdFile) Close() error { return unix.Close(int(f)) }

func (f fdFile) stat() (size int64, mtime time.Time, regular bool, err error) {
	var st unix.Stat_t
	for {
		err = unix.Fstat(int(f), &st)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return 0, time.Time{}, false, &fs.PathError{Op: "fstat", Err: err}
	}
	return st.Size, time.Unix(st.Mtim.Unix()), st.Mode&unix.S_IFMT == unix.S_IFREG, nil
}
