package cluster

import (
	"strings"
	"sync"

	"github.com/shardcache/caddy-shardcache/shard"
)

// itemCache keeps the Items built for the remote files a node served
// recently: a hit on a remote file reuses the Item (and the response
// headers the handler memoised in it) instead of building one per request,
// and an item whose variants were asked of its owner is asked once. It is
// bounded: past maxCachedItems an arbitrary entry makes room. An entry is
// valid only for the slot it was built from: a new version of the file is
// a new slot, and the entry is then built again.
type itemCache struct {
	mu sync.RWMutex
	m  map[string]cachedItem
}

type cachedItem struct {
	owner string
	slot  tocSlot
	it    *shard.Item
}

// maxCachedItems bounds a group's item cache: about 300 bytes each plus
// the memoised headers.
const maxCachedItems = 16 << 10

func (c *itemCache) get(path, owner string, s *tocSlot) *shard.Item {
	c.mu.RLock()
	e, ok := c.m[path]
	c.mu.RUnlock()
	if ok && e.owner == owner && sameSlot(&e.slot, s) {
		return e.it
	}
	return nil
}

func (c *itemCache) put(owner string, s *tocSlot, it *shard.Item) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]cachedItem)
	}
	if _, ok := c.m[it.Path]; !ok && len(c.m) >= maxCachedItems {
		for p := range c.m { // map order is random enough to evict by
			delete(c.m, p)
			break
		}
	}
	c.m[strings.Clone(it.Path)] = cachedItem{owner: owner, slot: *s, it: it}
}

func (c *itemCache) drop(path string) {
	c.mu.Lock()
	delete(c.m, path)
	c.mu.Unlock()
}

func (c *itemCache) clear() {
	c.mu.Lock()
	c.m = nil
	c.mu.Unlock()
}

func (c *itemCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
