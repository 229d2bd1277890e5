package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// A Group is one content tree (one root) in a cluster: this node's store
// of the items it holds, the table of content of the items its peers hold,
// and the hot cache of copies of their popular items.
//
// A group's store and hot budget are set by Cluster.Commit, when Caddy
// commits a config; a config being provisioned only looks the group up.
type Group struct {
	name string
	c    *Cluster

	store atomic.Pointer[shard.Store]
	hot   atomic.Pointer[shard.Hot]

	mu sync.RWMutex
	// owners holds, per peer, the compact table of what it published in
	// this group (toc.go), whether it holds those paths under this node's
	// ring or not: a path's entry is that of the first of its holders (in
	// ring order) that published it, chosen at lookup, so a ring change
	// moves nothing; entries of paths their publisher does not hold are
	// never served (but for the previous holders', during a ring change),
	// and kept because this node's ring may be the one behind (a reload
	// reaches the nodes one after another).
	owners map[string]*ownerTOC
	types  typeTable // content types, interned for owners' slots
	hash   pathHash
	// handoff holds the items this node gave up at a ring change, served
	// to their new holders for a while (handoff.go).
	handoff map[string]handoffItem
	refused map[string]refusedLog // by peer, under mu

	items      itemCache // Items built for remote files (toc_itemcache.go)
	flight     singleflight.Group
	metaFlight singleflight.Group
	stats      Stats

	lastNoTableLog atomic.Int64 // unix nanos of the last "no trusted table" warning
	metaFetches    atomic.Int64 // items' metadata asked of their owners (variants, collisions)
}

// Entry is an entry of the table of content: an item's metadata (Body nil)
// and the peer that published it.
type Entry struct {
	Owner string
	Item  *shard.Item
}

// Name is the group's name.
func (g *Group) Name() string { return g.name }

// Stats are the group's counters.
func (g *Group) Stats() *Stats { return &g.stats }

// Store is the store committed for the group (nil if none).
func (g *Group) Store() *shard.Store { return g.store.Load() }

// Hot is the group's hot cache (nil if none).
func (g *Group) Hot() *shard.Hot { return g.hot.Load() }

// TOCLen is the number of entries in the group's tables of content (what
// its peers published, each path once per publisher).
func (g *Group) TOCLen() int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	n := 0
	for _, ot := range g.owners {
		n += ot.tab.entries()
	}
	return n
}

// TOCBytes is the memory the group's tables of content take: their slots
// and the entries kept whole.
func (g *Group) TOCBytes() int64 {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var n int64
	for _, ot := range g.owners {
		n += ot.tab.bytes()
	}
	return n
}

// setHot sizes the hot cache; a new budget starts an empty cache.
func (g *Group) setHot(budget int64) {
	if h := g.hot.Load(); h != nil && h.Stats().Budget == budget {
		return
	}
	g.hot.Store(shard.NewHot(budget))
}

// entry answers path from the table of content: the entry of the first of
// its holders under the current ring that published it.
func (g *Group) entry(path string) (*Entry, bool) {
	e, _ := g.lookup(path, g.c.members.Load().Holders(path), false)
	return e, e != nil
}

// Resolved is what a path names in a group, as a handler sees it.
type Resolved struct {
	// Item is the item's metadata (and, when this node holds it, its
	// bytes).
	Item  *shard.Item
	IsDir bool
	// Remote is set when another node holds the item: its bytes come
	// through Open.
	Remote *Entry
	// Storage: another node holds the item, but no holder's table of
	// content is trusted, so this node's storage answered.
	Storage bool
}

// Resolve looks path up for a response. A path this node holds is looked
// up in store (the handler's own); another node's path in the table of
// content. When that table does not list the path, the answer is 404 only
// if one of the path's holders is trusted for this group (connected,
// primed, in the same ring, with the same group and its table of content
// received): otherwise the table may be incomplete or for other content,
// and store (this node's own view of storage) answers. A node never
// answers 404 for a file its own storage has just because a peer's table
// is missing.
func (g *Group) Resolve(store *shard.Store, path string) (Resolved, error) {
	m := g.c.members.Load()
	var holders []string
	var owns bool
	if m.replicas <= 1 {
		var one [1]string // one ring search, no allocation: the common case
		one[0] = m.ring.Owner(path)
		holders, owns = one[:], one[0] == m.self
	} else {
		holders = m.Holders(path)
		owns = slices.Contains(holders, m.self)
	}
	if owns {
		if it := store.Published(path); it != nil {
			return Resolved{Item: it}, nil
		}
		// Not loaded yet (priming, or a ring change gave it to this
		// node): the node that held it still has it in memory.
		if e := g.previousEntry(path); e != nil {
			return Resolved{Item: e.Item, Remote: e}, nil
		}
		it, isDir, err := store.Lookup(path)
		return Resolved{Item: it, IsDir: isDir}, err
	}
	e, unsure := g.lookup(path, holders, false)
	if e != nil {
		return Resolved{Item: e.Item, Remote: e}, nil
	}
	if !unsure {
		for _, h := range holders {
			if h != g.c.cfg.Name && g.c.trusted(h, g.name, m) {
				return Resolved{}, shard.ErrNotFound
			}
		}
	}
	// The ring changed and the new holder is not ready yet: the bytes are
	// still in this node's memory (it gave the item up) or in that of the
	// node that held it before.
	if it := g.handedOff(path); it != nil {
		return Resolved{Item: it}, nil
	}
	if e := g.previousEntry(path); e != nil {
		return Resolved{Item: e.Item, Remote: e}, nil
	}
	it, isDir, err := store.Lookup(path)
	if err == nil && !isDir {
		g.stats.noTable.Add(1)
		g.warnNoTable(path, m)
	}
	return Resolved{Item: it, IsDir: isDir, Storage: true}, err
}

// previousEntry returns the entry a node that held path under the
// previous ring published, if that node is connected and primed: it still
// has the bytes (its store, or what it handed off).
func (g *Group) previousEntry(path string) *Entry {
	e, _ := g.lookup(path, g.c.prevHolders(path), true)
	return e
}

// warnNoTable logs, at most once a minute per group, that a path another
// node holds was answered from this node's storage.
func (g *Group) warnNoTable(path string, m *Membership) {
	now := time.Now().UnixNano()
	last := g.lastNoTableLog.Load()
	if now-last < int64(time.Minute) || !g.lastNoTableLog.CompareAndSwap(last, now) {
		return
	}
	holders := m.Holders(path)
	g.c.log.Warn("serving from this node's storage: no trusted table of content from the path's holders "+
		"(down, priming, another ring, or without this group: see /shardcache/status)",
		zap.String("group", g.name), zap.String("path", path), zap.Strings("holders", holders),
		zap.Int64("so_far", g.stats.noTable.Load()))
}

// fromMeta is the Item a peer's entry describes. Its Version is its ETag's
// (shard.Item.Version); the entry's Version field repeats it.
func fromMeta(m peering.Meta) *shard.Item {
	it := &shard.Item{Path: m.Path, Size: m.Size}
	it.SetContentType(m.ContentType)
	it.SetModTime(m.ModTime)
	it.SetETag(m.ETag)
	if len(m.Variants) > 0 {
		vs := make([]shard.Variant, 0, len(m.Variants))
		for _, v := range m.Variants {
			vs = append(vs, shard.Variant{Encoding: v.Encoding, Size: v.Size, ETag: v.ETag})
		}
		it.SetVariants(vs)
	}
	return it
}

func toMeta(it *shard.Item) peering.Meta {
	m := peering.Meta{
		Path:        it.Path,
		Version:     it.Version(),
		Size:        it.Size,
		ContentType: it.ContentType(),
		ModTime:     it.ModTime(),
		ETag:        it.ETag(),
	}
	for _, v := range it.Variants() {
		m.Variants = append(m.Variants, peering.Variant{Encoding: v.Encoding, Size: v.Size, ETag: v.ETag})
	}
	return m
}

// Body is where a response's bytes come from: data in memory (one slice,
// or chunks), a large item another node holds (fetched chunk by chunk), or
// a file. A Body with a File or Remote must be closed.
type Body struct {
	Item   *shard.Item // the item the bytes belong to (its headers)
	Enc    string      // their Content-Encoding
	Data   []byte
	Chunks shard.Chunks
	Remote *RemoteBody
	File   shard.File
	Tier   Tier
}

// Close releases the body's file, or stops the remote body's fetches.
func (b *Body) Close() {
	if b.File != nil {
		b.File.Close()
	}
	if b.Remote != nil {
		b.Remote.Close()
	}
}

// hotKey names a copy in the hot cache: the path for the identity bytes
// (no allocation on a hit), the path and the encoding for a variant.
func hotKey(path, enc string) string {
	if enc == "" {
		return path
	}
	return path + "\x00" + enc
}

// HotKey names the hot copy of path's bytes in encoding enc.
func HotKey(path, enc string) string { return hotKey(path, enc) }

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
		if size := SizeOf(old, enc); size > shard.ChunkSize && (enc == "" || old.Variant(enc) != nil) {
			for i := range shard.NumChunks(size) {
				if h.Drop(chunkKey(path, enc, i)) {
					n++
				}
			}
		}
	}
	return n
}

// Open returns the body of e's item in encoding enc for a response, first
// from the hot cache, else from a holder over the SAN, else from store
// (this node's own storage) when no holder can answer. rangeHdr is the
// Range header the response will honour ("" for the whole body): of a
// large item only the chunks it needs are fetched. The result may be a
// newer version than e's when storage has one. The body is counted in the
// group's stats.
func (g *Group) Open(store *shard.Store, e *Entry, enc, rangeHdr string) (Body, error) {
	if SizeOf(e.Item, enc) > shard.ChunkSize {
		b, err := g.openChunked(e, enc, rangeHdr)
		if err == nil {
			return b, nil
		}
		return g.FromStorage(store, e.Item.Path, enc)
	}
	it := e.Item
	data, fromHot, err := g.fetchCached(e, enc, hotKey(it.Path, enc), 0, 0)
	if err == nil {
		t := TierPeer
		if fromHot {
			t = TierHot
		}
		g.stats.Count(t, int64(len(data)))
		return Body{Item: it, Enc: enc, Data: data, Tier: t}, nil
	}
	if c := g.c.log.Check(zap.WarnLevel, "peer fetch failed; reading from own storage"); c != nil {
		c.Write(zap.String("group", g.name), zap.String("path", it.Path), zap.String("owner", e.Owner), zap.Error(err))
	}
	return g.FromStorage(store, it.Path, enc)
}

// fetchCached returns the bytes the hot cache names key, of e's item at
// its version in encoding enc: the whole body (length 0) or the length
// bytes at off (a chunk). They come from the hot cache (fromHot), else from
// one fetch from a holder, shared by every request for key meanwhile, which
// the hot cache may then keep.
func (g *Group) fetchCached(e *Entry, enc, key string, off, length int64) (data []byte, fromHot bool, err error) {
	version := e.Item.Version()
	hot := g.hot.Load()
	if hot != nil {
		if c, ok := hot.Get(key, version); ok {
			return c.Body(), true, nil
		}
	}
	v, err, _ := g.flight.Do(key+"@"+version, func() (any, error) {
		start := time.Now()
		data, err := g.fetchPeer(e, enc, off, length)
		if err == nil && length > 0 && int64(len(data)) != length {
			err = fmt.Errorf("%s at %d: %d bytes, want %d", e.Item.Path, off, len(data), length)
		}
		if err == nil {
			if f := g.c.cfg.OnPeerFetch; f != nil {
				f(time.Since(start))
			}
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
		c := &shard.Item{Path: key, Size: int64(len(data))}
		_ = c.SetBody(data) // Size bytes
		c.SetETagOf(e.Item)
		hot.Admit(c)
	}
	return data, false, nil
}

// fetchPeer asks the nodes that hold the item, the owner first, then its
// replicas, skipping any that is not connected (no waiting on a dead peer)
// or not primed yet (a priming node is sent no traffic). The attempts
// share one deadline of their own, not the client's: one impatient client
// must not fail the others waiting on the same fetch. length > 0 asks for
// the length bytes at off only (a chunk).
func (g *Group) fetchPeer(e *Entry, enc string, off, length int64) ([]byte, error) {
	n := g.c.node.Load()
	if n == nil {
		return nil, peering.ErrPeerDown
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(g.c.fetchTimeout.Load()))
	defer cancel()
	m := g.c.members.Load()
	err := error(peering.ErrPeerDown)
	holders := m.Holders(e.Item.Path)
	if !slices.Contains(holders, e.Owner) {
		// An entry of the previous ring's holder (previousEntry): ask it
		// first.
		holders = append([]string{e.Owner}, holders...)
	}
	for _, holder := range holders {
		if holder == g.c.cfg.Name || !g.c.peerReady(holder) {
			continue
		}
		var meta peering.Meta
		var data []byte
		meta, data, err = n.Fetch(ctx, holder, peering.Request{
			Group:    g.name,
			Path:     e.Item.Path,
			Version:  e.Item.Version(),
			Encoding: enc,
			Epoch:    m.Epoch(),
			Offset:   off,
			Length:   length,
		})
		if err == nil && !e.Item.HasVersion(meta.Version) {
			err = fmt.Errorf("%s answered version %s, want %s", holder, meta.Version, e.Item.Version())
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

// FromStorage reads path from store, this node's own view of storage: the
// last resort, when no holder can answer. The body is counted.
func (g *Group) FromStorage(store *shard.Store, path, enc string) (Body, error) {
	return FromStore(store, &g.stats, path, enc)
}

// FromStore returns the body of path in encoding enc (the identity when
// the store has no such variant) as store holds it: from memory, or an
// open file. It counts the response in stats as TierStorage.
func FromStore(store *shard.Store, stats *Stats, path, enc string) (Body, error) {
	if store == nil {
		return Body{}, shard.ErrNotFound
	}
	it, isDir, err := store.Lookup(path)
	if err != nil {
		return Body{}, err
	}
	if isDir {
		return Body{}, shard.ErrNotFound
	}
	data, chunks, size, ok := HeldBytes(it, enc)
	if !ok {
		enc = "" // storage has no such sidecar: send the identity
		data, chunks, size, _ = HeldBytes(it, enc)
	}
	b := Body{Item: it, Enc: enc, Data: data, Chunks: chunks, Tier: TierStorage}
	if data == nil && chunks == nil && size > 0 {
		f, err := store.Open(it, enc)
		if err != nil {
			return Body{}, err
		}
		b.File = f
	}
	stats.Count(TierStorage, size)
	return b, nil
}

// Learn applies a peer's table-of-content delta as if it had arrived over
// the SAN (with the same checks): for tools and tests that build a node's
// view without a peer.
func (g *Group) Learn(owner string, d peering.Delta) {
	g.apply(owner, d, g.c.members.Load())
}
