package cluster

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// ownerTOC is what one peer published in a group: its compact table, and
// where in the peer's change log the table is.
type ownerTOC struct {
	tab tocTable
	// log and seq: the table holds the peer's group as of change seq of
	// its change log log (0: the peer numbers none).
	log, seq uint64
	// complete: a whole snapshot (or a resume) was applied, and every
	// change since: the table can be resumed from (log, seq).
	complete bool
}

// Bounds on what one peer may publish in one group: a holder of a cluster
// certificate must not be able to exhaust a node's memory with invented
// entries. 4M entries is 4× the largest site a node is measured with
// (about 240 MB of slots).
var (
	maxEntriesPerPeer       = 4 << 20
	maxWeightPerPeer  int64 = 1 << 30 // bytes of slots and of entries kept whole
)

// maxPresize bounds the entries a table is sized for when a snapshot
// begins (60 MB of slots).
const maxPresize = 1 << 20

// metaWeight is what an entry kept whole takes: its strings.
func metaWeight(it *shard.Item) int64 {
	w := int64(len(it.Path) + len(it.ContentType()) + len(it.ETag())) // the Version is in the ETag
	for _, v := range it.Variants() {
		w += int64(len(v.Encoding) + len(v.ETag))
	}
	return w
}

// lookup returns the entry of path published by the first of holders that
// published it (this node skipped; with ready, only holders connected and
// primed). unsure: a holder's slot for path is shared with another path
// (or its details are missing) and its owner could not be asked: the
// caller must not answer 404 from the tables.
func (g *Group) lookup(path string, holders []string, ready bool) (e *Entry, unsure bool) {
	if len(holders) == 0 {
		return nil, false
	}
	key, fp := g.hash(path)
	for _, h := range holders {
		if h == g.c.cfg.Name || ready && !g.c.peerReady(h) {
			continue
		}
		g.mu.RLock()
		ot := g.owners[h]
		i := -1
		if ot != nil {
			i = ot.tab.find(key, fp)
		}
		if i < 0 {
			g.mu.RUnlock()
			continue
		}
		s := ot.tab.slots[i]
		var side *shard.Item
		if s.flags&slotSide != 0 {
			side = ot.tab.side[path].it
		}
		g.mu.RUnlock()
		if side != nil {
			return &Entry{Owner: h, Item: side}, false
		}
		if s.flags&slotSide != 0 && s.flags&slotCollided == 0 {
			continue // another path's entry, kept whole: not path
		}
		e, found, ok := g.entryFor(key, h, path, &s)
		if !ok {
			unsure = true
			continue
		}
		if found {
			return e, false
		}
	}
	return nil, unsure
}

// entryFor returns the entry slot s of owner describes for path: from the
// item cache, built from the slot, or, when the slot does not say it all
// (variants, a collision), asked of the owner. found false: the owner
// says path is not there (a collided slot). ok false: the owner could not
// be asked for what only it can say.
func (g *Group) entryFor(key uint64, owner, path string, s *tocSlot) (e *Entry, found, ok bool) {
	if e := g.items.get(key, path, owner, s); e != nil {
		return e, true, true
	}
	if s.flags&(slotEncodings|slotCollided) == 0 {
		g.mu.RLock()
		it := g.types.item(path, s)
		g.mu.RUnlock()
		return g.items.put(key, owner, s, it), true, true
	}
	meta, err := g.fetchMeta(owner, path)
	collided := s.flags&slotCollided != 0
	switch {
	case err == nil && (collided || g.types.item(path, s).HasVersion(meta.Version)):
		it := fromMeta(meta)
		it.Path = path
		return g.items.put(key, owner, s, it), true, true
	case collided && peeringNotFound(err):
		return nil, false, true
	case collided:
		return nil, false, false
	}
	// The owner cannot say which variants it has now: the identity bytes
	// are right whatever they are. Not cached (the next request asks
	// again), but for an owner that predates META (it refuses the
	// request): its next snapshot clears the cache.
	g.mu.RLock()
	it := g.types.item(path, s)
	g.mu.RUnlock()
	if errors.Is(err, peering.ErrBadRequest) {
		return g.items.put(key, owner, s, it), true, true
	}
	return &Entry{Owner: owner, Item: it}, true, true
}

// fetchMeta asks owner for path's metadata with its variants; concurrent
// requests for the same path share one.
func (g *Group) fetchMeta(owner, path string) (peering.Meta, error) {
	n := g.c.node.Load()
	if n == nil {
		return peering.Meta{}, peering.ErrPeerDown
	}
	v, err, _ := g.metaFlight.Do(owner+"\x00"+path, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(g.c.fetchTimeout.Load()))
		defer cancel()
		g.metaFetches.Add(1)
		return n.FetchMeta(ctx, owner, peering.Request{Group: g.name, Path: path, Epoch: g.c.members.Load().Epoch()})
	})
	if err != nil {
		return peering.Meta{}, err
	}
	return v.(peering.Meta), nil
}

// ownerLocked returns owner's table, making it on first use. Called with
// g.mu held.
func (g *Group) ownerLocked(owner string) *ownerTOC {
	ot := g.owners[owner]
	if ot == nil {
		ot = &ownerTOC{}
		g.owners[owner] = ot
	}
	return ot
}

// beginSnapshot starts applying a snapshot of owner's table (sync), which
// lists about sync.Items entries.
func (g *Group) beginSnapshot(owner string, sync peering.Sync) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ot := g.ownerLocked(owner)
	// The count is the peer's word: the table is sized for it only up to
	// a bound (and less for a group this node does not serve), then grows
	// with what actually arrives.
	limit := uint64(maxPresize)
	if g.store.Load() == nil {
		limit = 4096
	}
	ot.tab.begin(int(min(sync.Items, limit)))
	ot.log, ot.seq, ot.complete = sync.Log, sync.Seq, false
}

// endSnapshot ends the snapshot of owner's table begun by beginSnapshot:
// the entries it did not list are dropped.
func (g *Group) endSnapshot(owner string, sync peering.Sync) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ot := g.owners[owner]
	if ot == nil {
		return
	}
	ot.tab.end()
	ot.seq = sync.Seq
	ot.complete = ot.log != 0 && ot.log == sync.Log
	if ot.tab.entries() == 0 && len(ot.tab.side) == 0 && !ot.complete {
		delete(g.owners, owner)
	}
	g.items.clear()
}

// resumed ends a resume of owner's table: the changes since the table's
// position were applied.
func (g *Group) resumed(owner string, sync peering.Sync) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ot := g.owners[owner]; ot != nil && ot.log == sync.Log {
		ot.seq, ot.complete = max(ot.seq, sync.Seq), true
	}
}

// dropOwner forgets what owner published (it has nothing published, or
// left). It returns how many entries went.
func (g *Group) dropOwner(owner string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	ot := g.owners[owner]
	if ot == nil {
		return 0
	}
	delete(g.owners, owner)
	g.items.clear()
	return ot.tab.entries()
}

// resumeFrom says where owner's table can be resumed from (ok false if it
// cannot).
func (g *Group) resumeFrom(owner string) (log, seq uint64, ok bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	ot := g.owners[owner]
	if ot == nil || !ot.complete || ot.log == 0 {
		return 0, 0, false
	}
	return ot.log, ot.seq, true
}

// snapshotItems applies items of the snapshot of owner's table being
// received.
func (g *Group) snapshotItems(owner string, items []peering.Meta, m *Membership) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.upsertLocked(owner, items, m, false)
}

// apply applies a delta from owner: a numbered change after a complete
// table keeps it complete, a gap (or an unnumbered change) makes it one
// to send whole at the next connect.
func (g *Group) apply(owner string, d peering.Delta, m *Membership) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.upsertLocked(owner, d.Upserts, m, true)
	ot := g.owners[owner]
	for _, p := range d.Deletes {
		if ot == nil {
			continue
		}
		key, fp := g.hash(p)
		i := ot.tab.find(key, fp)
		if i < 0 {
			continue
		}
		s := ot.tab.slots[i]
		if e, ok := ot.tab.side[p]; ok {
			ot.tab.sideWeight -= metaWeight(e.it)
			delete(ot.tab.side, p)
		}
		g.dropHotLocked(p, &s)
		g.items.drop(key, p)
		if s.flags&slotCollided == 0 {
			// A collided slot stays: the other path may still be there,
			// and its owner is asked.
			ot.tab.removeAt(i)
		}
	}
	if ot == nil {
		return
	}
	switch {
	case d.Seq == 0:
		ot.complete = false
	case d.Seq > ot.seq+1:
		ot.complete = false // a gap: changes were missed
		ot.seq = d.Seq
	default:
		ot.seq = max(ot.seq, d.Seq)
	}
}

// upsertLocked adds items published by owner to its table. Those it does
// not hold under this node's ring are counted (and logged) as refused: a
// peer cannot claim another node's paths or forge their ETags; they are
// kept but never served (see Group.owners). No more than the per-peer
// bounds in all.
func (g *Group) upsertLocked(owner string, items []peering.Meta, m *Membership, dropHot bool) {
	if len(items) == 0 {
		return
	}
	ot := g.ownerLocked(owner)
	t := &ot.tab
	notHeld, overCap := 0, 0
	for i := range items {
		meta := &items[i]
		key, fp := g.hash(meta.Path)
		s, compact := g.types.slotFor(meta, key, fp)
		if compact && ot.log == 0 && s.flags&slotEncodings != 0 {
			// A peer that numbers no changes predates META too: it could
			// not tell the variants' details later.
			compact = false
		}
		s.flags |= t.gen
		at := t.find(key, fp)
		var side *shard.Item
		var w int64
		if !compact {
			side = fromMeta(*meta)
			w = metaWeight(side)
		}
		if at < 0 && (t.n >= maxEntriesPerPeer || t.bytes()+slotSize+w > maxWeightPerPeer) {
			overCap++
			continue
		}
		if !g.c.cfg.Observer && !m.Holds(owner, meta.Path) {
			notHeld++
		}
		if at >= 0 {
			old := &t.slots[at]
			collided := old.flags&slotCollided != 0
			if t.snapshot && old.flags&slotGen == t.gen {
				// Listed twice in one snapshot: another path with the
				// same key and fingerprint.
				collided = true
			}
			if old.flags&slotSide != 0 {
				if _, ok := t.side[meta.Path]; !ok {
					collided = true // the entry kept whole is another path's
				}
			}
			if dropHot {
				g.dropHotLocked(meta.Path, old)
			}
			g.items.drop(key, meta.Path)
			if collided {
				s.flags |= slotCollided
			}
			if old.flags&slotSide != 0 && compact && !collided {
				e := t.side[meta.Path]
				t.sideWeight -= metaWeight(e.it)
				delete(t.side, meta.Path)
			}
			if old.flags&slotSide != 0 && collided {
				s.flags |= slotSide // other paths' entries kept whole stay
			}
		}
		if !compact {
			s.flags |= slotSide
			if t.side == nil {
				t.side = make(map[string]sideEntry)
			}
			if e, ok := t.side[meta.Path]; ok {
				t.sideWeight -= metaWeight(e.it)
			}
			t.side[meta.Path] = sideEntry{it: side, gen: t.gen}
			t.sideWeight += w
		}
		if at >= 0 {
			t.slots[at] = s
		} else {
			t.insert(s)
		}
	}
	if notHeld+overCap > 0 {
		g.stats.refusedEntries.Add(int64(notHeld + overCap))
		r := g.refused[owner]
		r.notHeld += notHeld
		r.overCap += overCap
		if now := time.Now(); now.Sub(r.logged) >= refusedLogEvery {
			// At most one line per peer and interval: a flood of
			// entries must not become a flood of log lines.
			g.c.log.Warn("refused table-of-content entries from a peer",
				zap.String("peer", owner), zap.String("group", g.name),
				zap.Int("not_its_paths_under_this_ring", r.notHeld), zap.Int("over_cap", r.overCap),
				zap.Int("cap_entries", maxEntriesPerPeer), zap.Int64("cap_bytes", maxWeightPerPeer))
			r = refusedLog{logged: now}
		}
		g.refused[owner] = r
	}
}

// refusedLogEvery is how often refused entries from one peer are logged
// (with what was refused since).
const refusedLogEvery = 10 * time.Second

// refusedLog counts the entries refused from one peer since the last log
// line about them.
type refusedLog struct {
	logged           time.Time
	notHeld, overCap int
}

// dropHotLocked drops the hot copies of path, of the version slot s
// describes (a new version or a delete replaces it).
func (g *Group) dropHotLocked(path string, s *tocSlot) {
	h := g.hot.Load()
	if h == nil {
		return
	}
	it := g.cachedItem(path) // with its variants, if known
	if it == nil {
		it = &shard.Item{Path: path, Size: s.size}
	}
	dropHot(h, path, it)
}

// cachedItem returns the item cached for path, any version.
func (g *Group) cachedItem(path string) *shard.Item {
	key, _ := g.hash(path)
	return g.items.item(key, path)
}

// prune applies a new ring m: what peers that are no longer members
// published is dropped; the rest stays (a path's entry is chosen at lookup,
// under the ring of the moment). It returns how many entries went.
func (g *Group) prune(m *Membership) (dropped int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for owner, ot := range g.owners {
		if !m.IsMember(owner) {
			dropped += ot.tab.entries()
			delete(g.owners, owner)
		}
	}
	g.items.clear()
	return dropped
}

// peeringNotFound reports whether err is a peer's "not found".
func peeringNotFound(err error) bool { return err != nil && errors.Is(err, peering.ErrNotFound) }
