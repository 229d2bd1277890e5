package cluster

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// When the ring changes (a member joins or leaves), a node's store stays:
// it drops the items it no longer holds and loads the ones it newly holds
// (shard.Store.SetOwns). A newly held item comes from the memory of a node
// that held it under the previous ring (Handoff), from storage only when no
// such node can supply it; the node that gave an item up keeps serving it
// to its peers for a while (Dropped), until its new holder has it.

// handoffTTL is how long a node keeps serving the items it gave up at a
// ring change: long enough for the new holders to load their share from
// it, whatever the share's size on a LAN.
const handoffTTL = 2 * time.Minute

// handoffItem is an item this node gave up, kept for its new holder.
type handoffItem struct {
	it    *shard.Item
	until time.Time
}

// Dropped keeps it, an item of group that this node no longer holds after
// a ring change, for its new holder to fetch: call it from the store's
// OnDrop.
func (c *Cluster) Dropped(group string, it *shard.Item) {
	g := c.lookupGroup(group)
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	for p, h := range g.handoff {
		if now.After(h.until) {
			delete(g.handoff, p)
		}
	}
	g.handoff[it.Path] = handoffItem{it: it, until: now.Add(handoffTTL)}
}

// handedOff returns the item this node gave up at path, if it still keeps
// it.
func (g *Group) handedOff(path string) *shard.Item {
	g.mu.RLock()
	h, ok := g.handoff[path]
	g.mu.RUnlock()
	if !ok || time.Now().After(h.until) {
		return nil
	}
	return h.it
}

// Handoff returns the item at path of group, which this node newly holds,
// as a node that held it under the previous ring has it in memory: call it
// from the store's Handoff. size and modTime are what this node's storage
// says of the file; the store checks them and the bytes' hash again.
func (c *Cluster) Handoff(ctx context.Context, group, path string, size int64, modTime time.Time) (*shard.Item, bool) {
	n := c.node.Load()
	if n == nil {
		return nil, false
	}
	holders := c.prevHolders(path)
	var fctx context.Context // made for the first holder asked: a cluster that starts asks none
	for _, h := range holders {
		if !c.handoffWorth(h) {
			continue
		}
		if !c.waitUp(ctx, h) {
			continue // not worth waiting for: storage is the fallback
		}
		if fctx == nil {
			var cancel context.CancelFunc
			fctx, cancel = context.WithTimeout(ctx, time.Duration(c.fetchTimeout.Load())+time.Duration(shard.NumChunks(size))*time.Second)
			defer cancel()
		}
		it, err := fetchItem(fctx, n, h, group, path, size, c.members.Load().Epoch())
		c.handoffResult(h, err == nil)
		if err != nil {
			if c := c.log.Check(zap.DebugLevel, "handoff fetch failed"); c != nil {
				c.Write(zap.String("group", group), zap.String("path", path), zap.String("from", h), zap.Error(err))
			}
			continue
		}
		if it.Size != size || !it.ModTime().Equal(modTime) {
			continue // another version than storage's: read storage
		}
		if g := c.lookupGroup(group); g != nil {
			g.stats.handoffItems.Add(1)
			g.stats.handoffBytes.Add(size)
		}
		return it, true
	}
	return nil, false
}

// prevHolders lists the other nodes that held path before this node took
// it: under the previous ring, or, when there is none or it was this node
// alone (a node that just started: its first ring may have been its own
// before its peer sources answered), the nodes that would hold it without
// this node.
func (c *Cluster) prevHolders(path string) []string {
	var out []string
	if prev := c.prevMembers.Load(); prev != nil {
		for _, h := range prev.Holders(path) {
			if h != c.cfg.Name {
				out = append(out, h)
			}
		}
	}
	if len(out) == 0 {
		if others := c.members.Load().Others(); others.Ring().Len() > 0 {
			out = others.Holders(path)
		}
	}
	return out
}

// joinWait is how long after it starts a node waits for the connections
// to its peers before it loads its share from storage instead of their
// memory: a node joining a running cluster connects within milliseconds
// on a LAN (more on a loaded machine); peers that are priming themselves
// (a cluster starting) are not waited for, and only a node whose peers are
// unreachable loses this much, once.
const joinWait = 2 * time.Second

// waitUp reports whether holder is connected and primed, waiting for the
// connection while this node is in its first joinWait (not for a holder
// that is connected but priming: it has nothing to hand over).
func (c *Cluster) waitUp(ctx context.Context, holder string) bool {
	deadline := time.Unix(0, c.started.Load()).Add(joinWait)
	for {
		up, ready := c.peerUp(holder)
		if up {
			return ready
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// handoffGiveUp is how many handoff fetches in a row a node may fail
// (without any success) before this node stops asking it until the next
// ring change: a restarted member asks its peers for its share, and they
// do not have it when they never left it (same ring).
const handoffGiveUp = 16

// handoffWorth reports whether asking holder for handed-off items is still
// worth a round trip.
func (c *Cluster) handoffWorth(holder string) bool {
	c.handoffMu.Lock()
	defer c.handoffMu.Unlock()
	r := c.handoffStats[holder]
	return r.hits > 0 || r.misses < handoffGiveUp
}

// handoffResult records the outcome of a handoff fetch from holder.
func (c *Cluster) handoffResult(holder string, ok bool) {
	c.handoffMu.Lock()
	defer c.handoffMu.Unlock()
	if c.handoffStats == nil {
		c.handoffStats = make(map[string]handoffRecord)
	}
	r := c.handoffStats[holder]
	if ok {
		r.hits++
	} else if r.hits == 0 {
		r.misses++
	}
	c.handoffStats[holder] = r
}

// handoffRecord counts the handoff fetches from one node since the last
// ring change.
type handoffRecord struct{ hits, misses int }

// fetchItem fetches the whole item at path (size bytes) from holder: in
// one piece, or chunk by chunk, all of the version its first answer names.
func fetchItem(ctx context.Context, n *peering.Node, holder, group, path string, size int64, epoch uint64) (*shard.Item, error) {
	req := peering.Request{Group: group, Path: path, Epoch: epoch}
	var m peering.Meta
	var chunks shard.Chunks
	var body []byte
	for i := range max(1, shard.NumChunks(size)) {
		if size > shard.ChunkSize {
			req.Offset, req.Length = shard.ChunkRange(size, i)
		}
		meta, data, err := n.Fetch(ctx, holder, req)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			m, req.Version = meta, meta.Version
		}
		if size > shard.ChunkSize {
			if int64(len(data)) != req.Length {
				return nil, fmt.Errorf("chunk %d: %d bytes, want %d", i, len(data), req.Length)
			}
			chunks = append(chunks, data)
		} else {
			body = data
		}
	}
	if size <= shard.ChunkSize && int64(len(body)) != size {
		return nil, fmt.Errorf("%d bytes, want %d", len(body), size)
	}
	it := &shard.Item{Path: path, Size: size}
	it.SetContentType(m.ContentType)
	if err := it.SetBody(body); err != nil {
		return nil, err
	}
	it.SetModTime(m.ModTime)
	it.SetETag(m.ETag)
	it.SetChunks(chunks)
	return it, nil
}
