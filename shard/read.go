package shard

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"strings"
	"sync"
	"unsafe"
)

// errChanging means the file changed while it was being read: its size or
// modification time after reading differ from before. Read it again later.
var errChanging = errors.New("shard: file changed while being read")

// errNotRegular means a path names something other than a regular file or a
// directory (a device, a pipe, a socket; or a link that appeared on a path
// already resolved): never served.
var errNotRegular = errors.New("shard: not a regular file")

// readChunk is how much is read (and hashed, while still in cache) at a time.
// Cancellation is checked between chunks.
const readChunk = 256 << 10

var chunkPool = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}

// readFile reads the regular file at p (slash-rooted; symbolic links inside
// the root are followed) from storage and returns its data as an Item
// without Variants. Once the size is known, wantBody says whether to hold
// the bytes (true) or only hash them while streaming (false), so a file is
// read once either way.
//
// The bytes go to arena memory (arena.go): they are the store's to keep.
func (s *Store) readFile(ctx context.Context, p string, wantBody func(size int64) bool) (*Item, error) {
	return s.read(ctx, p, wantBody, true)
}

// readFileHeap is readFile with the bytes in the Go heap: for transient
// items, which the collector frees as soon as their requests are done
// (arena memory would wait for the reuse grace period).
func (s *Store) readFileHeap(ctx context.Context, p string, wantBody func(size int64) bool) (*Item, error) {
	return s.read(ctx, p, wantBody, false)
}

func (s *Store) read(ctx context.Context, p string, wantBody func(size int64) bool, arena bool) (*Item, error) {
	f, err := s.openRead(p[1:])
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, mtime, regular, err := f.stat()
	if err != nil {
		return nil, err
	}
	if !regular {
		return nil, errNotRegular
	}
	c := &Item{Path: p, Size: size}
	c.SetModTime(mtime)
	h := newHash()
	defer freeHash(h)
	var head []byte
	if wantBody(c.Size) {
		// A body of up to ChunkSize is one slice; a larger one is held in
		// chunks, so that it never needs more contiguous memory than that.
		// The memory is outside the Go heap where the platform allows
		// (arena.go); it is freed at once if the read fails.
		var one [1][]byte
		chunks := one[:0]
		var mem *bodyMem // a chunked body's anchor
		switch {
		case c.Size > ChunkSize && arena:
			chunks, mem = allocChunks(c.Size, true)
		case c.Size > ChunkSize:
			chunks = newChunks(c.Size)
		case c.Size > 0 && arena:
			chunks = append(chunks, c.allocBody(true))
		case c.Size > 0:
			b := make([]byte, c.Size)
			c.setBodyPtr(unsafe.SliceData(b))
			chunks = append(chunks, b)
		}
		if err := fill(ctx, f, h, chunks); err != nil {
			c.dropOwnBody()
			mem.release()
			return nil, err
		}
		switch {
		case len(chunks) == 0:
			head = []byte{}
		case c.Size > ChunkSize:
			head = chunks[0]
			c.setChunksKept(chunks, mem)
		default:
			head = chunks[0] // the Body, set by allocBody or above
		}
	} else {
		bp := chunkPool.Get().(*[]byte)
		defer chunkPool.Put(bp)
		buf := *bp
		var total int64
		for {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			n, err := f.Read(buf)
			if n > 0 {
				if head == nil {
					head = append([]byte(nil), buf[:min(n, sniffLen)]...)
				}
				h.Write(buf[:n])
				total += int64(n)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, err
			}
		}
		if total != c.Size {
			return nil, errChanging
		}
	}
	size, mtime, _, err = f.stat()
	if err == nil && (size != c.Size || !mtime.Equal(c.ModTime())) {
		err = errChanging
	}
	if err != nil {
		c.releaseBody()
		return nil, err
	}
	c.SetContentType(contentType(p, head))
	c.Tag = tagSum(h)
	return c, nil
}

// fill reads the bytes of chunks from f, hashing them into h.
func fill(ctx context.Context, f io.Reader, h io.Writer, chunks [][]byte) error {
	for _, body := range chunks {
		for off := 0; off < len(body); {
			if err := ctx.Err(); err != nil {
				return err
			}
			end := min(off+readChunk, len(body))
			n, err := io.ReadFull(f, body[off:end])
			if err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
					return errChanging // truncated while we read
				}
				return err
			}
			h.Write(body[off : off+n])
			off += n
		}
	}
	return nil
}

// relPath turns a slash-rooted request path into a root-relative name for
// os.Root: "/" is ".", "/a/b" is "a/b". It refuses anything that is not a
// clean path inside the root ("..", empty or "." elements, a trailing
// slash), even though callers are meant to clean paths first.
func relPath(p string) (string, bool) {
	if p == "/" {
		return ".", true
	}
	if !strings.HasPrefix(p, "/") {
		return "", false
	}
	rel := p[1:]
	if !fs.ValidPath(rel) || strings.IndexByte(rel, 0) >= 0 {
		return "", false
	}
	return rel, true
}
