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
// directory (itself opened through the os.Root) with RESOLVE_BENEATH: the
// kernel follows symbolic links that stay inside the root and refuses any
// path that would leave it (EXDEV), in one system call, where os.Root opens
// every parent directory in turn. Reads then go straight to the descriptor,
// with none of os.File's poller setup. Priming small files is dominated by
// these per-file costs. Where openat2 is missing (Linux < 5.6) or filtered
// (seccomp), the store falls back to os.Root.
//
// RESOLVE_BENEATH also refuses every absolute symbolic link, even one that
// points inside the root: on EXDEV the path is resolved by resolveIn, which
// follows those and refuses the rest, and the link-free path it returns is
// opened with RESOLVE_NO_SYMLINKS as well, so that a link swapped in
// meanwhile is not followed.

// beneath is the root directory's descriptor for openat2.
type beneath struct {
	mu       sync.RWMutex // held for reading around openat2, for writing by close
	dir      *os.File     // the root directory; nil until opened or when unusable
	tried    bool         // dir was opened (or failed to)
	disabled atomic.Bool  // openat2 is not available: use os.Root
}

var (
	// beneathHow follows symbolic links inside the root.
	beneathHow = unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	}
	// resolvedHow opens a path resolveIn returned: it crosses no link.
	resolvedHow = unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
)

// eagainTries bounds the retries of an openat2 that failed with EAGAIN (the
// kernel could not rule out an escape by ".." during a concurrent rename).
const eagainTries = 4

// openat2 is unix.Openat2 retried on EINTR, and a few times on EAGAIN.
func openat2(dirfd int, rel string, how *unix.OpenHow) (int, error) {
	for again := 0; ; {
		fd, err := unix.Openat2(dirfd, rel, how)
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN && again < eagainTries:
			again++
		default:
			return fd, err
		}
	}
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
	dirfd := int(b.dir.Fd())
	fd, err = openat2(dirfd, rel, &beneathHow)
	if err == unix.ENOSYS || err == unix.EPERM {
		// Not implemented, or a seccomp filter (a read-only open's permission
		// problems are EACCES): os.Root from now on.
		b.disabled.Store(true)
		return -1, false, nil
	}
	if err == unix.EXDEV || err == unix.EAGAIN {
		// An absolute symbolic link, or a way out of the root: decide here.
		r, rerr := s.fsRoot()
		if rerr != nil {
			return -1, true, rerr
		}
		canon, rerr := s.resolveIn(r, rel)
		if rerr != nil {
			return -1, true, rerr
		}
		fd, err = openat2(dirfd, canon, &resolvedHow)
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
	fd, err := openat2(int(d.Fd()), ".", &resolvedHow)
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
		return s.openFileRoot(rel)
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
