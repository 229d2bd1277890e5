//go:build linux

package shard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// inotify is the Linux watcher: inotify(7) directly, one watch per
// directory, and for each only the store path its events are reported
// under. It keeps a 24-byte map entry per watched directory, and the path
// string the store already has; fsnotify kept two maps, a watch record and
// the absolute path (about 120 bytes a directory: 12 MB of a store watching
// 100,000 directories). The events and their meaning are fsnotify's.
type inotify struct {
	f  *os.File // the inotify descriptor, non-blocking: reads wait in the poller
	fd int

	mu     sync.Mutex
	paths  map[int32]string // watch descriptor → store path of the directory
	closed bool
}

// inotifyMask is what a directory's watch reports: its entries created,
// moved in or out, written, their attributes changed, removed; itself
// removed or moved. IN_ONLYDIR: a path that is no longer a directory is
// not watched.
const inotifyMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_MODIFY |
	unix.IN_ATTRIB | unix.IN_DELETE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

func newDirWatcher(string) (dirWatcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, os.NewSyscallError("inotify_init1", err)
	}
	return &inotify{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, paths: make(map[int32]string)}, nil
}

func (w *inotify) add(p, abs string) (int32, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errWatcherClosed
	}
	wd, err := unix.InotifyAddWatch(w.fd, abs, inotifyMask)
	if err != nil {
		return 0, &os.PathError{Op: "inotify_add_watch", Path: abs, Err: err}
	}
	// The same directory under a new path (renamed) gets its descriptor
	// again: its events are reported under the path added last.
	w.paths[int32(wd)] = p
	return int32(wd), nil
}

func (w *inotify) remove(p, _ string, wd int32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.paths[wd] != p {
		return // gone already, or the directory now watched under another path
	}
	delete(w.paths, wd)
	_, _ = unix.InotifyRmWatch(w.fd, uint32(wd)) // the kernel may have dropped it
}

func (w *inotify) list() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := make([]string, 0, len(w.paths))
	for _, p := range w.paths {
		l = append(l, p)
	}
	return l
}

func (w *inotify) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	return w.f.Close() // wakes run's read
}

// run reads events until close. Each inotify_event is a 16-byte header
// (wd, mask, cookie, len) and len bytes of name, NUL-padded; the name is
// empty for an event on the watched directory itself.
func (w *inotify) run(ev func(p string, create, write bool), overflow func(), fail func(error)) {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		switch {
		case errors.Is(err, os.ErrClosed):
			return
		case errors.Is(err, syscall.EINTR):
			continue
		case err != nil:
			fail(err)
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int32(binary.NativeEndian.Uint32(buf[off:]))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
			name := buf[off+unix.SizeofInotifyEvent : min(n, off+unix.SizeofInotifyEvent+nameLen)]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			off += unix.SizeofInotifyEvent + nameLen
			if mask&unix.IN_Q_OVERFLOW != 0 {
				overflow()
				continue
			}
			w.mu.Lock()
			p, ok := w.paths[wd]
			if ok && mask&unix.IN_IGNORED != 0 {
				delete(w.paths, wd) // the kernel dropped the watch (directory removed)
			}
			w.mu.Unlock()
			if !ok || mask&unix.IN_IGNORED != 0 {
				continue
			}
			if len(name) > 0 {
				p = join(p, string(name))
			}
			ev(p, mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0, mask&unix.IN_MODIFY != 0)
		}
	}
}
