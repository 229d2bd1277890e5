package shardcache

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

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

// sizeOf is the length of it's bytes in encoding enc ("" identity).
func sizeOf(it *shard.Item, enc string) int64 {
	if enc != "" {
		if v := variant(it, enc); v != nil {
			return v.Size
		}
	}
	return it.Size
}

// heldBytes returns the bytes of it in encoding enc as this node holds
// them: one slice, or chunks; both nil when they are not in memory.
func heldBytes(it *shard.Item, enc string) (data []byte, chunks shard.Chunks, size int64, ok bool) {
	if enc == "" {
		return it.Body, it.Chunks, it.Size, true
	}
	v := variant(it, enc)
	if v == nil {
		return nil, nil, 0, false
	}
	return v.Body, v.Chunks, v.Size, true
}

// readRange reads n bytes at off of it's bytes in encoding enc: from memory
// (no copy when they lie in one slice or chunk) or from storage.
func readRange(st *shard.Store, it *shard.Item, enc string, off, n int64) ([]byte, error) {
	data, chunks, size, ok := heldBytes(it, enc)
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

// chunk returns chunk i of ri's item in encoding enc (size bytes in all):
// from the hot cache, else from a holder over the SAN (that chunk's bytes
// only; concurrent requests for it share one fetch), else from this node's
// own storage if it has the very same version (a response never mixes the
// bytes of two versions). tier says which.
func (g *group) chunk(ri *remoteItem, enc string, size int64, i int) (data []byte, tier string, err error) {
	it := ri.it
	off, n := shard.ChunkRange(size, i)
	data, fromHot, err := g.fetchCached(ri, enc, chunkKey(it.Path, enc, i), off, n)
	if err == nil {
		if fromHot {
			return data, "hot", nil
		}
		return data, "peer", nil
	}
	if c := g.c.cfg.logger.Check(zap.WarnLevel, "peer fetch of a chunk failed; reading from own storage"); c != nil {
		c.Write(zap.String("group", g.name), zap.String("path", it.Path), zap.Int("chunk", i),
			zap.String("owner", ri.owner), zap.Error(err))
	}
	st := g.store.Load()
	if st == nil {
		return nil, "", err
	}
	own, isDir, lerr := st.Lookup(it.Path)
	switch {
	case lerr != nil:
		return nil, "", fmt.Errorf("%w; own storage: %v", err, lerr)
	case isDir || own.Version != it.Version:
		return nil, "", fmt.Errorf("%w; own storage has another version", err)
	}
	data, serr := readRange(st, own, enc, off, n)
	if serr != nil {
		return nil, "", fmt.Errorf("%w; own storage: %v", err, serr)
	}
	return data, "storage", nil
}

// fetchChunked starts the response body of a large item another node owns:
// it fetches the first chunk the request needs now (so that a failure is
// a 502, not a cut response) and the rest as the response is written.
func (g *group) fetchChunked(ri *remoteItem, enc string, r *http.Request) (body, error) {
	size := sizeOf(ri.it, enc)
	rb := &remoteBody{g: g, ri: ri, enc: enc, size: size, curIdx: -1, ahead: map[int]*chunkCall{}}
	rb.spans = wantedSpans(r.Header.Get("Range"), size)
	tier := "local" // no byte needed (416): answered from the table of content
	if len(rb.spans) > 0 {
		if _, err := rb.get(int(rb.spans[0].lo / shard.ChunkSize)); err != nil {
			return body{}, err
		}
		tier = rb.firstTier
	}
	switch tier {
	case "local":
		g.stats.local.Add(1)
	case "hot":
		g.stats.hot.Add(1)
	case "storage":
		g.stats.storage.Add(1)
	default:
		g.stats.peer.Add(1)
	}
	return body{it: ri.it, enc: enc, remote: rb, tier: tier}, nil
}

// span is a byte range [lo, hi).
type span struct{ lo, hi int64 }

// maxSpans bounds the ranges of one Range header that wantedSpans tracks;
// past it, the whole body counts as wanted.
const maxSpans = 16

// wantedSpans is what of a body of size bytes a request with the given
// Range header needs, in the header's order: the whole body when the
// header is absent or not understood, none when no range is satisfiable.
// http.ServeContent decides what is sent (and may send everything, for
// instance when If-Range does not match); this only bounds what is
// fetched ahead.
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

// remoteBody is the body of a large item another node owns, read chunk by
// chunk as http.ServeContent (or the plain-GET path) asks for it. It is
// used by one request's goroutine; only its prefetches run elsewhere.
type remoteBody struct {
	g    *group
	ri   *remoteItem
	enc  string
	size int64

	pos   int64
	spans []span // what the request needs: only chunks in them are fetched ahead

	cur       []byte
	curIdx    int
	ahead     map[int]*chunkCall // chunks being fetched ahead
	firstTier string
	err       error // the first chunk that could not be had, if any
}

// chunkCall is one chunk being fetched.
type chunkCall struct {
	done chan struct{}
	data []byte
	tier string
	err  error
}

// get returns chunk i, fetched ahead or now, and starts fetching the next
// ones the response will need.
func (rb *remoteBody) get(i int) ([]byte, error) {
	if i == rb.curIdx {
		return rb.cur, nil
	}
	c := rb.ahead[i]
	delete(rb.ahead, i)
	if c == nil {
		c = &chunkCall{}
		c.data, c.tier, c.err = rb.g.chunk(rb.ri, rb.enc, rb.size, i)
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
				a.data, a.tier, a.err = rb.g.chunk(rb.ri, rb.enc, rb.size, j)
			}()
		}
	}
	if c.err != nil {
		if rb.err == nil {
			rb.err = c.err
		}
		return nil, c.err
	}
	if rb.firstTier == "" {
		rb.firstTier = c.tier
	}
	st := &rb.g.stats
	switch c.tier {
	case "hot":
		st.hotBytes.Add(int64(len(c.data)))
	case "storage":
		st.storageBytes.Add(int64(len(c.data)))
	default:
		st.peerBytes.Add(int64(len(c.data)))
	}
	rb.cur, rb.curIdx = c.data, i
	return c.data, nil
}

// needs reports whether chunk i holds bytes the request wants.
func (rb *remoteBody) needs(i int) bool {
	off, n := shard.ChunkRange(rb.size, i)
	for _, sp := range rb.spans {
		if sp.lo < off+n && off < sp.hi {
			return true
		}
	}
	return false
}

func (rb *remoteBody) Read(p []byte) (int, error) {
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
func (rb *remoteBody) Seek(offset int64, whence int) (int64, error) {
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
// from the fetched (or hot) chunks.
func (rb *remoteBody) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for rb.pos < rb.size {
		data, err := rb.get(int(rb.pos / shard.ChunkSize))
		if err != nil {
			return total, err
		}
		n, err := w.Write(data[rb.pos%shard.ChunkSize:])
		rb.pos += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
