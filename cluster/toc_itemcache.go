package cluster

import (
	"strings"
	"sync/atomic"

	"github.com/shardcache/caddy-shardcache/shard"
)

// itemCache keeps the Items built for the remote files a node served
// recently: a hit on a remote file reuses the Item (and the response
// headers the handler memoised in it) instead of building one per request,
// and an item whose variants were asked of its owner is asked once. It is
// direct-mapped by the path's key: maxCachedItems entries, a new entry
// replacing the one in its place; reads take no lock. An entry is valid
// only for the slot it was built from: a new version of the file is a new
// slot, and the entry is then built again.
type itemCache struct {
	ents atomic.Pointer[[maxCachedItems]atomic.Pointer[cachedItem]]
}

// cachedItem is immutable once stored.
type cachedItem struct {
	slot tocSlot
	e    *Entry // its owner and item
}

// maxCachedItems bounds a group's item cache (a power of two): about 300
// bytes each plus the memoised headers.
const maxCachedItems = 16 << 10

func (c *itemCache) at(key uint64) *cachedItem {
	ents := c.ents.Load()
	if ents == nil {
		return nil
	}
	return ents[key&(maxCachedItems-1)].Load()
}

func (c *itemCache) get(key uint64, path, owner string, s *tocSlot) *Entry {
	// The slot first: it is in the cached item, the Entry and Item are
	// further away.
	if ce := c.at(key); ce != nil && sameSlot(&ce.slot, s) && ce.e.Owner == owner && ce.e.Item.Path == path {
		return ce.e
	}
	return nil
}

func (c *itemCache) put(key uint64, owner string, s *tocSlot, it *shard.Item) *Entry {
	it.Path = strings.Clone(it.Path) // not a request's string
	e := &Entry{Owner: owner, Item: it}
	ents := c.ents.Load()
	if ents == nil {
		c.ents.CompareAndSwap(nil, new([maxCachedItems]atomic.Pointer[cachedItem]))
		ents = c.ents.Load()
	}
	ents[key&(maxCachedItems-1)].Store(&cachedItem{slot: *s, e: e})
	return e
}

// item returns the item cached for path, any version.
func (c *itemCache) item(key uint64, path string) *shard.Item {
	if ce := c.at(key); ce != nil && ce.e.Item.Path == path {
		return ce.e.Item
	}
	return nil
}

func (c *itemCache) drop(key uint64, path string) {
	ents := c.ents.Load()
	if ents == nil {
		return
	}
	p := &ents[key&(maxCachedItems-1)]
	if ce := p.Load(); ce != nil && ce.e.Item.Path == path {
		p.CompareAndSwap(ce, nil)
	}
}

func (c *itemCache) clear() { c.ents.Store(nil) }
