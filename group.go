package shardcache

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// A group is one content tree (one root) in a cluster: this node's store
// of the items it owns, the table of content of the items its peers own,
// and the hot cache of copies of their popular items.
type group struct {
	name string
	c    *cluster

	store atomic.Pointer[shard.Store]
	hot   atomic.Pointer[shard.Hot]

	mu      sync.RWMutex
	toc     map[string]*remoteItem     // path → an item a peer owns
	byOwner map[string]map[string]bool // peer → the paths it published

	flight singleflight.Group
	stats  tierStats
}

// remoteItem is an entry of the table of content: an item's metadata
// (Body nil) and its owner.
type remoteItem struct {
	owner string
	it    *shard.Item
}

// tierStats count requests and bytes by the tier that served them.
type tierStats struct {
	local, hot, peer, storage                     atomic.Int64
	localBytes, hotBytes, peerBytes, storageBytes atomic.Int64
	peerErrors                                    atomic.Int64
	peerErrorsByKind                              [len(peerErrorKinds)]atomic.Int64
	served, servedBytes                           atomic.Int64 // fetches answered for peers
}

// setHot sizes the hot cache; a new budget starts an empty cache.
func (g *group) setHot(budget int64) {
	if h := g.hot.Load(); h != nil && h.Stats().Budget == budget {
		return
	}
	g.hot.Store(shard.NewHot(budget))
}

// lookup answers path from the table of content. ok is false when the table
// does not know the path.
func (g *group) lookup(path string) (ri *remoteItem, ok bool) {
	g.mu.RLock()
	ri, ok = g.toc[path]
	g.mu.RUnlock()
	return ri, ok
}

// replace sets everything owner owns in this group (a snapshot).
func (g *group) replace(owner string, items []peering.Meta) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for p := range g.byOwner[owner] {
		if ri := g.toc[p]; ri != nil && ri.owner == owner {
			delete(g.toc, p)
		}
	}
	paths := make(map[string]bool, len(items))
	for _, m := range items {
		g.toc[m.Path] = &remoteItem{owner: owner, it: fromMeta(m)}
		paths[m.Path] = true
	}
	g.byOwner[owner] = paths
	// Hot copies of versions the owner no longer has are dropped lazily: a
	// request for the new version replaces them.
}

// apply applies a delta from owner.
func (g *group) apply(owner string, d peering.Delta) {
	g.mu.Lock()
	defer g.mu.Unlock()
	paths := g.byOwner[owner]
	if paths == nil {
		paths = make(map[string]bool)
		g.byOwner[owner] = paths
	}
	h := g.hot.Load()
	drop := func(p string) {
		if h != nil {
			var old *shard.Item
			if ri := g.toc[p]; ri != nil {
				old = ri.it
			}
			dropHot(h, p, old)
		}
	}
	for _, m := range d.Upserts {
		drop(m.Path)
		g.toc[m.Path] = &remoteItem{owner: owner, it: fromMeta(m)}
		paths[m.Path] = true
	}
	for _, p := range d.Deletes {
		drop(p)
		if ri := g.toc[p]; ri != nil && ri.owner == owner {
			delete(g.toc, p)
		}
		delete(paths, p)
	}
}

func fromMeta(m peering.Meta) *shard.Item {
	it := &shard.Item{
		Path:        m.Path,
		Size:        m.Size,
		ModTime:     m.ModTime,
		ContentType: m.ContentType,
		ETag:        m.ETag,
		Version:     m.Version,
	}
	for _, v := range m.Variants {
		it.Variants = append(it.Variants, shard.Variant{Encoding: v.Encoding, Size: v.Size, ETag: v.ETag})
	}
	return it
}

// body is where a response's bytes come from: data in memory (one slice,
// or chunks), a large item another node owns (fetched chunk by chunk), or
// a file.
type body struct {
	it     *shard.Item // the item the bytes belong to (its headers)
	enc    string      // their Content-Encoding
	data   []byte
	chunks shard.Chunks
	remote *remoteBody
	file   shard.File
	tier   string
}

// hotKey names a copy in the hot cache: the path for the identity bytes
// (no allocation on a hit), the path and the encoding for a variant.
func hotKey(path, enc string) string {
	if enc == "" {
		return path
	}
	return path + "\x00" + enc
}

// dropHot drops every copy of path (all its encodings) from h, and the
// chunks of old (the table of content's entry for path, if any).
func dropHot(h *shard.Hot, path string, old *shard.Item) int {
	n := 0
	for _, enc := range [...]string{"", "br", "zstd", "gzip"} {
		if h.Drop(hotKey(path, enc)) {
			n++
		}
		if old == nil {
			continue
		}
		if size := sizeOf(old, enc); size > shard.ChunkSize && (enc == "" || variant(old, enc) != nil) {
			for i := range shard.NumChunks(size) {
				if h.Drop(chunkKey(path, enc, i)) {
					n++
				}
			}
		}
	}
	return n
}

// fetch returns the bytes of ri's item in encoding enc (""
// identity): from the hot cache, else from the owner over the SAN, else
// from this node's own storage when the owner is down or too slow. The
// result may be a newer version than ri's when storage has one.
func (g *group) fetch(ri *remoteItem, enc string) (body, error) {
	it := ri.it
	data, fromHot, err := g.fetchCached(ri, enc, hotKey(it.Path, enc), 0, 0)
	if err == nil {
		if fromHot {
			g.stats.hot.Add(1)
			g.stats.hotBytes.Add(int64(len(data)))
			return body{it: it, enc: enc, data: data, tier: "hot"}, nil
		}
		g.stats.peer.Add(1)
		g.stats.peerBytes.Add(int64(len(data)))
		return body{it: it, enc: enc, data: data, tier: "peer"}, nil
	}
	if c := g.c.cfg.logger.Check(zap.WarnLevel, "peer fetch failed; reading from own storage"); c != nil {
		c.Write(zap.String("group", g.name), zap.String("path", it.Path), zap.String("owner", ri.owner), zap.Error(err))
	}
	return g.fromStorage(it.Path, enc)
}

// fetchCached returns the bytes the hot cache names key, of ri's item at
// its version in encoding enc: the whole body (length 0) or the length
// bytes at off (a chunk). They come from the hot cache (fromHot), else from
// one fetch from a holder, shared by every request for key meanwhile, which
// the hot cache may then keep.
func (g *group) fetchCached(ri *remoteItem, enc, key string, off, length int64) (data []byte, fromHot bool, err error) {
	version := ri.it.Version
	hot := g.hot.Load()
	if hot != nil {
		if c, ok := hot.Get(key, version); ok {
			return c.Body, true, nil
		}
	}
	v, err, _ := g.flight.Do(key+"@"+version, func() (any, error) {
		start := time.Now()
		data, err := g.fetchPeer(ri, enc, off, length)
		if err == nil && length > 0 && int64(len(data)) != length {
			err = fmt.Errorf("%s at %d: %d bytes, want %d", ri.it.Path, off, len(data), length)
		}
		if err == nil {
			observePeerFetch(time.Since(start))
		} else {
			g.stats.countPeerError(err)
		}
		return data, err
	})
	if err != nil {
		return nil, false, err
	}
	data = v.([]byte)
	if hot != nil {
		hot.Admit(&shard.Item{Path: key, Version: version, Size: int64(len(data)), Body: data})
	}
	return data, false, nil
}

// fetchPeer asks the nodes that hold the item, the owner first, then its
// replicas, skipping any that is not connected (no waiting on a dead peer)
// or not primed yet (a priming node is sent no traffic). The attempts
// share one deadline of their own, not the client's: one impatient client
// must not fail the others waiting on the same fetch. length > 0 asks for
// the length bytes at off only (a chunk).
func (g *group) fetchPeer(ri *remoteItem, enc string, off, length int64) ([]byte, error) {
	n := g.c.node.Load()
	if n == nil {
		return nil, peering.ErrPeerDown
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(g.c.fetchTimeout.Load()))
	defer cancel()
	err := error(peering.ErrPeerDown)
	for _, holder := range g.c.holders(ri.it.Path) {
		if holder == g.c.cfg.name || !g.c.peerReady(holder) {
			continue
		}
		var m peering.Meta
		var data []byte
		m, data, err = n.Fetch(ctx, holder, peering.Request{
			Group:    g.name,
			Path:     ri.it.Path,
			Version:  ri.it.Version,
			Encoding: enc,
			Epoch:    g.c.ring().Epoch(),
			Offset:   off,
			Length:   length,
		})
		if err == nil && m.Version != ri.it.Version {
			err = fmt.Errorf("%s answered version %s, want %s", holder, m.Version, ri.it.Version)
		}
		if err == nil {
			return data, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

// fromStorage reads path from this node's own view of storage: the last
// resort, when the owner cannot answer.
func (g *group) fromStorage(path, enc string) (body, error) {
	st := g.store.Load()
	if st == nil {
		return body{}, shard.ErrNotFound
	}
	it, isDir, err := st.Lookup(path)
	if err != nil {
		return body{}, err
	}
	if isDir {
		return body{}, shard.ErrNotFound
	}
	data, chunks, size, ok := heldBytes(it, enc)
	if !ok {
		enc = "" // storage has no such sidecar: send the identity
		data, chunks, size, _ = heldBytes(it, enc)
	}
	b := body{it: it, enc: enc, data: data, chunks: chunks, tier: "storage"}
	if data == nil && chunks == nil && size > 0 {
		f, err := st.Open(it, enc)
		if err != nil {
			return body{}, err
		}
		b.file = f
	}
	g.stats.storage.Add(1)
	g.stats.storageBytes.Add(size)
	return b, nil
}
