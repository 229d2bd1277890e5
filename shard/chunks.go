package shard

import (
	"errors"
	"io"
)

// ChunkSize is the unit large bodies are held and moved in. A body of up to
// ChunkSize bytes is one slice (Item.Body); a larger one is held as Chunks
// of ChunkSize bytes, the last one shorter, so that no item ever needs more
// contiguous memory than ChunkSize (a 1 GiB file is 256 allocations, not
// one), and a node can fetch from a peer just the chunks a Range request
// needs.
const ChunkSize = 4 << 20

// Chunks is a body held in memory in pieces: every piece but the last is
// exactly ChunkSize bytes. A Chunks is never modified once built.
type Chunks [][]byte

// newChunks allocates chunks for size bytes.
func newChunks(size int64) Chunks {
	c := make(Chunks, 0, NumChunks(size))
	for size > 0 {
		n := min(size, ChunkSize)
		c = append(c, make([]byte, n))
		size -= n
	}
	return c
}

// NumChunks is the number of chunks a body of size bytes is held and
// fetched in (0 for an empty body).
func NumChunks(size int64) int {
	return int((size + ChunkSize - 1) / ChunkSize)
}

// ChunkRange is the offset and length of chunk i of a body of size bytes.
func ChunkRange(size int64, i int) (off, n int64) {
	off = int64(i) * ChunkSize
	return off, max(0, min(ChunkSize, size-off))
}

// Len is the number of bytes in c.
func (c Chunks) Len() int64 {
	if len(c) == 0 {
		return 0
	}
	return int64(len(c)-1)*ChunkSize + int64(len(c[len(c)-1]))
}

// ReadAt copies the bytes of c from off on into p (io.ReaderAt).
func (c Chunks) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("shard: negative offset")
	}
	n := 0
	for n < len(p) {
		i := int((off + int64(n)) / ChunkSize)
		if i >= len(c) {
			return n, io.EOF
		}
		in := int((off + int64(n)) % ChunkSize)
		if in >= len(c[i]) {
			return n, io.EOF
		}
		n += copy(p[n:], c[i][in:])
	}
	return n, nil
}

// Slice returns the n bytes of c at off: a slice of c's own memory when they
// lie in one chunk (the case for whole, aligned chunks), else a copy.
func (c Chunks) Slice(off, n int64) []byte {
	i, in := off/ChunkSize, off%ChunkSize
	if off >= 0 && n >= 0 && i < int64(len(c)) && in+n <= int64(len(c[i])) {
		return c[i][in : in+n : in+n]
	}
	b := make([]byte, n)
	k, _ := c.ReadAt(b, off)
	return b[:k]
}

// ChunksReader reads a Chunks: an io.ReadSeeker for http.ServeContent that
// also writes itself straight from the held memory (io.WriterTo).
type ChunksReader struct {
	c   Chunks
	pos int64
}

// NewChunksReader returns a reader of c from its start.
func NewChunksReader(c Chunks) *ChunksReader { return &ChunksReader{c: c} }

func (r *ChunksReader) Read(p []byte) (int, error) {
	if r.pos >= r.c.Len() {
		return 0, io.EOF
	}
	n, err := r.c.ReadAt(p, r.pos)
	r.pos += int64(n)
	if n > 0 {
		err = nil
	}
	return n, err
}

// Seek sets the offset of the next Read (io.Seeker).
func (r *ChunksReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += r.pos
	case io.SeekEnd:
		offset += r.c.Len()
	}
	if offset < 0 {
		return r.pos, errors.New("shard: seek before start")
	}
	r.pos = offset
	return offset, nil
}

// WriteTo writes the rest of the body to w, one write per chunk, with no
// copy (io.WriterTo).
func (r *ChunksReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.pos < r.c.Len() {
		i, in := r.pos/ChunkSize, r.pos%ChunkSize
		n, err := w.Write(r.c[i][in:])
		r.pos += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// Close does nothing: the memory belongs to the item.
func (r *ChunksReader) Close() error { return nil }

// sameChunks reports whether a and b are the very same chunk slices.
func sameChunks(a, b Chunks) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	for i := range a {
		if !sameBytes(a[i], b[i]) {
			return false
		}
	}
	return true
}
