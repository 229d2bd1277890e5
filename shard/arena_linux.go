//go:build linux

package shard

import (
	"errors"
	"io"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Linux an arena is a memfd (anonymous shared memory, a file in the
// kernel's page cache) mapped read-write into the process: the collector
// does not see it, RSS counts its written pages, and sendfile(2) can send
// from it as from any file. 64-bit only: an arena is 1 GiB of address
// space.
var arenasOn = unsafe.Sizeof(uintptr(0)) == 8 && os.Getenv("SHARDCACHE_ARENAS") != "off"

// arenaSys is an arena's memfd, and the open file descriptions sendfile
// uses (each has its own file position, which sendfile reads from).
type arenaSys struct {
	fd    int
	path  string        // /proc/self/fd/<fd>: opening it makes a new description
	files chan *os.File // idle descriptions (a sync.Pool would be emptied by every GC)
	mem   []byte        // the mapping (prefault)
}

func newArena(size int64) (*arena, error) {
	fd, err := unix.MemfdCreate("shardcache-arena", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	sys := arenaSys{fd: fd, path: "/proc/self/fd/" + strconv.Itoa(fd), files: make(chan *os.File, 256), mem: mem}
	return newArenaAllocator(mem, sys), nil
}

// file returns an idle file description of the arena, or opens one.
func (s arenaSys) file() *os.File {
	select {
	case f := <-s.files:
		return f
	default:
	}
	f, err := os.Open(s.path)
	if err != nil {
		return nil
	}
	return f
}

// putFile keeps f for the next body, or closes it.
func (s arenaSys) putFile(f *os.File) {
	select {
	case s.files <- f:
	default:
		f.Close()
	}
}

// prefault makes the pages of [off, off+n) resident and writable in one
// system call (MADV_POPULATE_WRITE, Linux 5.14), where writing them would
// fault each page in (see prefaultStep). Pages already there are left as
// they are. Where the kernel refuses it, every page faults in as it is
// first written, as before. Called under arenas.mu (2 MiB took about 0.6 ms
// here, once per 2 MiB handed out).
func (s arenaSys) prefault(off, n int64) {
	if s.mem == nil || n <= 0 || noPrefault.Load() {
		return
	}
	if err := unix.Madvise(s.mem[off:off+n], unix.MADV_POPULATE_WRITE); err == unix.EINVAL || err == unix.ENOSYS {
		noPrefault.Store(true)
	}
}

// noPrefault is set once the kernel refused MADV_POPULATE_WRITE.
var noPrefault atomic.Bool

// discard gives the whole pages inside the n bytes at off back to the
// kernel: they read as zeros until written again.
func (s arenaSys) discard(off, n int64) {
	if s.files == nil {
		return // an allocator over other memory (tests)
	}
	const page = 4096
	start := (off + page - 1) &^ (page - 1)
	end := (off + n) &^ (page - 1)
	if end > start {
		_ = unix.Fallocate(s.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, end-start)
	}
}

// A BodyFile reads one body (a slice of arena memory) through a file
// description of its arena, so that a TCP connection's ReadFrom sends it
// with sendfile(2): no copy through user space. Its position is the file's
// own. Close it after use.
type BodyFile struct {
	f        *os.File
	sys      arenaSys
	end      int64 // the body's end in the arena
	chunk    int64 // see OpenBody
	granted  bool  // the last SyscallConn gave out the descriptor
	sendable bool  // false once net copied after being given the descriptor
}

// OpenBody returns a BodyFile for b when b is arena memory.
//
// The kernel's sendfile, as net/http reaches it (net.TCPConn.ReadFrom with
// an *io.LimitedReader around a syscall.Conn), sends as many bytes as the
// LimitedReader allows from the file's position, whatever lies there: a
// BodyFile must never be asked for more than the rest of its body. Two
// uses are safe:
//
//   - chunk == 0: the caller passes &io.LimitedReader{R: bf, N: len(b)}
//     (LimitedReader) to the ResponseWriter's ReadFrom, and nothing else
//     reads bf; the reader's N is then always the rest of the body. A
//     writer in between that wraps it in another LimitedReader only makes
//     the kernel path unavailable (a copy instead).
//   - chunk > 0: the caller passes bf itself to a writer known to wrap it
//     in a LimitedReader of at most chunk bytes per call (Caddy's write
//     idle timeout does, with its MaxChunk); bf then offers its descriptor
//     only while the rest of the body is at least chunk bytes, and is
//     otherwise copied by read(2). Whoever else reads from bf meanwhile
//     only makes the rest shorter. To have every byte go by sendfile, the
//     body should be a multiple of chunk, with the headers flushed first
//     (else net/http reads its first 512 bytes).
func OpenBody(b []byte, chunk int64) (*BodyFile, bool) {
	a, off, ok := arenaOf(b)
	if !ok {
		return nil, false
	}
	f := a.sys.file()
	if f == nil {
		return nil, false
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, false
	}
	return &BodyFile{f: f, sys: a.sys, end: off + int64(len(b)), chunk: chunk, sendable: true}, true
}

// LimitedReader returns bf wrapped for the chunk == 0 use of OpenBody.
func (bf *BodyFile) LimitedReader() *io.LimitedReader {
	pos, _ := bf.f.Seek(0, io.SeekCurrent)
	return &io.LimitedReader{R: bf, N: bf.end - pos}
}

func (bf *BodyFile) Read(p []byte) (int, error) {
	pos, err := bf.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	rest := bf.end - pos
	if rest <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > rest {
		p = p[:rest]
	}
	if bf.granted {
		// net was given the descriptor and copies anyway: what it will
		// ask next is unknown, so no more descriptors.
		bf.sendable = false
	}
	return bf.f.Read(p)
}

// errNoSendfile refuses the kernel path (net/http then copies).
var errNoSendfile = errors.New("shard: not sendable here")

// SyscallConn gives net the file descriptor for sendfile(2) when the
// kernel cannot send past the body (see OpenBody) (syscall.Conn).
func (bf *BodyFile) SyscallConn() (syscall.RawConn, error) {
	bf.granted = false
	if !bf.sendable {
		return nil, errNoSendfile
	}
	if bf.chunk > 0 {
		pos, err := bf.f.Seek(0, io.SeekCurrent)
		if err != nil || bf.end-pos < bf.chunk {
			bf.sendable = false
			return nil, errNoSendfile
		}
	}
	bf.granted = true
	arenas.sendfiles.Add(1)
	return bf.f.SyscallConn()
}

// Close returns the file description to its arena's pool.
func (bf *BodyFile) Close() error {
	if bf.f != nil {
		bf.sys.putFile(bf.f)
		bf.f = nil
	}
	return nil
}
