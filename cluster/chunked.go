package cluster

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/shard"
)

// Large items (over shard.ChunkSize) are held in chunks on their owner and
// move between nodes chunk by chunk: a non-owner fetches only the chunks a
// response needs (a Range request for 1 KiB of a 1 GiB file moves one
// chunk), keeps the popular ones in its hot cache, and fetches the next
// chunks of a long response in parallel while it sends the current one.

// chunkAhead is how many chunks past the one being sent a response fetches
// in parallel (each on its own QUIC stream): enough to keep the SAN busy
// while the client drains a chunk, without holding more than
// (1 + chunkAhead) × ChunkSize per response.
const chunkAhead = 2

// chunkKey names chunk i of an item's encoding enc in the hot cache.
func chunkKey(path, enc string, i int) string {
	return hotKey(path, enc) + "\x00" + strconv.Itoa(i)
}

// ChunkKey names chunk i of path's bytes in encoding enc in the hot cache.
func ChunkKey(path, enc string, i int) string { return chunkKey(path, enc, i) }

// SizeOf is the length of it's bytes in encoding enc ("" identity).
func SizeOf(it *shard.Item, enc string) int64 {
	if enc != "" {
		if v := it.Variant(enc); v != nil {
			return v.Size
		}
	}
	return it.Size
}

// HeldBytes returns the bytes of it in encoding enc as this node holds
// them: one slice, or chunks; both nil when they are not in memory. ok is
// false when it has no such encoding.
func HeldBytes(it *shard.Item, enc string) (data []byte, chunks shard.Chunks, size int64, ok bool) {
	if enc == "" {
		return it.Body(), it.Chunks(), it.Size, true
	}
	v := it.Variant(enc)
	if v == nil {
		return nil, nil, 0, false
	}
	return v.Body, v.Chunks, v.Size, true
}

// readRange reads n bytes at off of it's bytes in encoding enc: from memory
// (no copy when they lie in one slice or chunk) or from storage.
func readRange(st *shard.Store, it *shard.Item, enc string, off, n int64) ([]byte, error) {
	data, chunks, size, ok := HeldBytes(it, enc)
	if !ok {
		return nil, shard.ErrNotFound
	}
	if off < 0 || n < 0 || off+n > size {
		return nil, fmt.Errorf("range %d+%d outside %d bytes", off, n, size)
	}
	switch {
	case chunks != nil:
		return chunks.Slice(off, n), nil
	case data != nil || size == 0:
		return data[off : off+n : off+n], nil
	}
	f, err := st.Open(it, enc)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if ra, ok := f.(io.ReaderAt); ok {
		_, err = ra.ReadAt(b, off)
	} else if _, err = f.Seek(off, io.SeekStart); err == nil {
		_, err = io.ReadFull(f, b)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s at %d: %w", it.Path, off, err)
	}
	return b, nil
}

// chunk returns chunk i of e's item in encoding enc (size bytes in all):
// from the hot cache, else from a holder over the SAN (that chunk's bytes
// only; concurrent requests for it share one fetch), else from this node's
// own storage if it has the very same version (a response never mixes the
// bytes of two versions).
func (g *Group) chunk(e *Entry, enc string, size int64, i int) (data []byte, tier Tier, err error) {
	it := e.Item
	off, n := shard.ChunkRange(size, i)
	data, fromHot, err := g.fetchCached(e, enc, chunkKey(it.Path, enc, i), off, n)
	if err == nil {
		if fromHot {
			return data, TierHot, nil
		}
		return data, TierPeer, nil
	}
	if c := g.c.log.Check(zap.WarnLevel, "peer fetch of a chunk failed; reading from own storage"); c != nil {
		c.Write(zap.String("group", g.name), zap.String("path", it.Path), zap.Int("chunk", i),
			zap.String("owner", e.Owner), zap.Error(err))
	}
	st := g.store.Load()
	if st == nil {
		return nil, 0, err
	}
	own, isDir, lerr := st.Lookup(it.Path)
	switch {
	case lerr != nil:
		return nil, 0, fmt.Errorf("%w; own storage: %v", err, lerr)
	case isDir || !shard.SameVersion(own, it):
		return nil, 0, fmt.Errorf("%w; own storage has another version", err)
	}
	data, serr := readRange(st, own, enc, off, n)
	if serr != nil {
		return nil, 0, fmt.Errorf("%w; own storage: %v", err, serr)
	}
	return data, TierStorage, nil
}

// openChunked starts the response body of a large item another node holds:
// it fetches the first chunk the response needs now (so that a failure is
// a 502 or a read from storage, not a cut response) and the rest as the
// response is written.
func (g *Group) openChunked(e *Entry, enc, rangeHdr string) (Body, error) {
	size := SizeOf(e.Item, enc)
	rb := &RemoteBody{g: g, e: e, enc: enc, size: size, curIdx: -1, ahead: map[int]*chunkCall{}}
	rb.spans = wantedSpans(rangeHdr, size)
	tier := TierMeta // no byte needed (416): answered from the table of content
	if len(rb.spans) > 0 {
		if _, err := rb.get(int(rb.spans[0].lo / shard.ChunkSize)); err != nil {
			return Body{}, err
		}
		tier = rb.firstTier
	}
	g.stats.Count(tier, 0) // bytes are counted chunk by chunk
	return Body{Item: e.Item, Enc: enc, Remote: rb, Tier: tier}, nil
}

// span is a byte range [lo, hi).
type span struct{ lo, hi int64 }

// maxSpans bounds the ranges of one Range header that wantedSpans tracks;
// past it, the whole body counts as wanted.
const maxSpans = 16

// wantedSpans is what of a body of size bytes a request with the given
// Range header needs, in the header's order: the whole body when the
// header is absent or not understood, none when no range is satisfiable.
// The caller passes "" when the response will not honour the Range (an
// If-Range that does not match).
func wantedSpans(rangeHdr string, size int64) []span {
	all := []span{{0, size}}
	if size == 0 {
		return nil
	}
	spec, ok := strings.CutPrefix(rangeHdr, "bytes=")
	if !ok {
		return all
	}
	var out []span
	for ra := range strings.SplitSeq(spec, ",") {
		ra = strings.TrimSpace(ra)
		if ra == "" {
			continue
		}
		start, end, ok := strings.Cut(ra, "-")
		if !ok || len(out) == maxSpans {
			return all
		}
		var sp span
		if start == "" { // a suffix: the last n bytes
			n, err := strconv.ParseInt(end, 10, 64)
			if err != nil || n < 0 {
				return all
			}
			sp = span{max(0, size-n), size}
		} else {
			lo, err := strconv.ParseInt(start, 10, 64)
			if err != nil || lo < 0 {
				return all
			}
			sp = span{lo, size}
			if end != "" {
				e, err := strconv.ParseInt(end, 10, 64)
				if err != nil || e < lo {
					return all
				}
				sp.hi = min(e+1, size)
			}
		}
		if sp.lo < sp.hi {
			out = append(out, sp)
		}
	}
	return out
}

// errBodyClosed is what a RemoteBody read after Close returns.
var errBodyClosed = errors.New("cluster: response body closed")

// RemoteBody is the body of a large item another node holds, read chunk by
// chunk as the response asks for it. Reads may come from a goroutine other
// than the one that opened it (http.ServeContent writes multi-range
// responses from one), and may go on after the response has ended (that
// goroutine notices only at its next write): a mutex orders them, and Close
// makes later reads fail at once instead of fetching.
type RemoteBody struct {
	g    *Group
	e    *Entry
	enc  string
	size int64

	closed atomic.Bool // set by Close, without waiting for a read in progress

	mu    sync.Mutex
	pos   int64
	spans []span // what the request needs: only chunks in them are fetched ahead

	cur       []byte
	curIdx    int
	ahead     map[int]*chunkCall // chunks being fetched ahead
	firstTier Tier
	err       error // the first chunk that could not be had, if any
}

// chunkCall is one chunk being fetched.
type chunkCall struct {
	done chan struct{}
	data []byte
	tier Tier
	err  error
}

// Err returns the error of the first chunk that could not be had, if any:
// the response was cut short by the cluster (not by the client).
func (rb *RemoteBody) Err() error {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.err
}

// Close ends the body: later reads fail without fetching.
func (rb *RemoteBody) Close() {
	rb.closed.Store(true)
}

// get returns chunk i, fetched ahead or now, and starts fetching the next
// ones the response will need. Called with rb.mu held (or before rb is
// shared).
func (rb *RemoteBody) get(i int) ([]byte, error) {
	if rb.closed.Load() {
		return nil, errBodyClosed
	}
	if i == rb.curIdx {
		return rb.cur, nil
	}
	c := rb.ahead[i]
	delete(rb.ahead, i)
	if c == nil {
		c = &chunkCall{}
		c.data, c.tier, c.err = rb.g.chunk(rb.e, rb.enc, rb.size, i)
	} else {
		<-c.done
	}
	n := shard.NumChunks(rb.size)
	for j := i + 1; j <= i+chunkAhead && j < n; j++ {
		if rb.ahead[j] == nil && rb.needs(j) {
			a := &chunkCall{done: make(chan struct{})}
			rb.ahead[j] = a
			go func() {
				defer close(a.done)
				a.data, a.tier, a.err = rb.g.chunk(rb.e, rb.enc, rb.size, j)
			}()
		}
	}
	if c.err != nil {
		if rb.err == nil {
			rb.err = c.err
		}
		return nil, c.err
	}
	if rb.curIdx == -1 {
		rb.firstTier = c.tier
	}
	rb.g.stats.AddBytes(c.tier, int64(len(c.data)))
	rb.cur, rb.curIdx = c.data, i
	return c.data, nil
}

// needs reports whether chunk i holds bytes the request wants.
func (rb *RemoteBody) needs(i int) bool {
	off, n := shard.ChunkRange(rb.size, i)
	for _, sp := range rb.spans {
		if sp.lo < off+n && off < sp.hi {
			return true
		}
	}
	return false
}

// Read reads the body at the current offset.
func (rb *RemoteBody) Read(p []byte) (int, error) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if rb.pos >= rb.size {
		return 0, io.EOF
	}
	data, err := rb.get(int(rb.pos / shard.ChunkSize))
	if err != nil {
		return 0, err
	}
	n := copy(p, data[rb.pos%shard.ChunkSize:])
	rb.pos += int64(n)
	return n, nil
}

// Seek sets the offset of the next Read; it fetches nothing.
func (rb *RemoteBody) Seek(offset int64, whence int) (int64, error) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	switch whence {
	case io.SeekCurrent:
		offset += rb.pos
	case io.SeekEnd:
		offset += rb.size
	}
	if offset < 0 {
		return rb.pos, errors.New("seek before start")
	}
	rb.pos = offset
	return offset, nil
}

// WriteTo writes the rest of the body to w, a chunk per write, straight
// from the fetched (or hot) chunks. The error tells whether the body
// (Err() set) or w failed.
func (rb *RemoteBody) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		rb.mu.Lock()
		if rb.pos >= rb.size {
			rb.mu.Unlock()
			return total, nil
		}
		data, err := rb.get(int(rb.pos / shard.ChunkSize))
		pos := rb.pos
		rb.mu.Unlock()
		if err != nil {
			return total, err
		}
		n, err := w.Write(data[pos%shard.ChunkSize:])
		rb.mu.Lock()
		rb.pos += int64(n)
		rb.mu.Unlock()
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}
