package cluster

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// Spreading hot paths, the content nodes' side (the director's is package
// spread and the root package's director.go).
//
// A director that spreads a path over more members than its owner tells
// each new member to carry it (a SPREAD frame): the member fetches the
// path's bytes (and its precompressed variants) from the holder's memory
// over the SAN, at the version its table of content lists, keeps them in
// its hot cache (shard.Hot.Push: within its hot budget, without waiting to
// be asked twice), and answers HELD with that version. Only then does the
// director send it requests for the path, so the first one is a hot hit.
//
// A carried path follows its owner: when the owner publishes a new version
// (its table-of-content delta drops the old copy), the member says it no
// longer holds it (HELD off: the director stops sending it the path),
// fetches the new version and says HELD again. A copy is keyed by its
// version, so a member never serves an old version for a new one, pushed
// or not. When the director narrows the path's set (SPREAD off), or stops
// repeating its SPREAD (it went away: carryTTL), the member forgets the
// path, and its copy ages out of the hot cache like any other.
//
// Items larger than one chunk (4 MiB) are not carried: a member fetches
// their chunks on demand, as without spreading.

const (
	// carryTTL is how long a member carries a path after the last SPREAD
	// for it; directors repeat theirs every CarryRefresh.
	carryTTL = 30 * time.Second
	// CarryRefresh is how often a director repeats the SPREAD of each
	// member of each spread path.
	CarryRefresh = 10 * time.Second
	// carryTick is how often a member checks its carried paths: a new
	// version is fetched at most this late.
	carryTick = 50 * time.Millisecond
	// carryRetry is how long a member waits before fetching again a
	// version it fetched and could not keep.
	carryRetry = 5 * time.Second
	// carryFetches bounds the carried paths fetched at once.
	carryFetches = 4
	// maxCarried bounds the paths one node carries.
	maxCarried = 16384
)

// pushState is a node's spreading state: the paths it carries for
// directors, and, on a director, the handlers of HELD messages.
type pushState struct {
	mu       sync.Mutex
	paths    map[string]*carried
	started  bool
	wake     chan struct{}
	sem      chan struct{}
	handlers map[int]func(from string, s peering.Spread)
	nextID   int

	items, bytes atomic.Int64 // copies fetched for carrying
}

// carried is a path this node carries for a director.
type carried struct {
	director string
	until    time.Time
	held     string // the version last announced as held, "" if none
	fetching bool
	// tried is the version last fetched, at triedAt: a copy the hot cache
	// refused (over its budget) is not fetched again every tick.
	tried   string
	triedAt time.Time
}

// onSpread receives SPREAD frames (on a content node) and HELD frames (on
// a director).
func (c *Cluster) onSpread(from string, s peering.Spread) {
	ps := &c.push
	if s.Kind == peering.SpreadHeld {
		ps.mu.Lock()
		hs := make([]func(string, peering.Spread), 0, len(ps.handlers))
		for _, h := range ps.handlers {
			hs = append(hs, h)
		}
		ps.mu.Unlock()
		for _, h := range hs {
			h(from, s)
		}
		return
	}
	if c.cfg.Observer {
		return // holds nothing
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if !ps.started {
		ps.started = true
		ps.paths = make(map[string]*carried)
		ps.wake = make(chan struct{}, 1)
		ps.sem = make(chan struct{}, carryFetches)
		go c.carryLoop()
	}
	cp := ps.paths[s.Path]
	if !s.Carry {
		if cp != nil {
			delete(ps.paths, s.Path)
		}
		return
	}
	if cp == nil {
		if len(ps.paths) >= maxCarried {
			c.log.Warn("spread: too many carried paths; refused", zap.String("director", from),
				zap.String("path", s.Path), zap.Int("max", maxCarried))
			return
		}
		cp = &carried{}
		ps.paths[s.Path] = cp
	}
	cp.director, cp.until = from, time.Now().Add(carryTTL)
	// A repeated SPREAD is answered again: the director may have
	// restarted and forgotten.
	cp.held = ""
	select {
	case ps.wake <- struct{}{}:
	default:
	}
}

// OnHeld registers f to receive the HELD messages of content nodes (a
// director's spreading); the returned func unregisters it.
func (c *Cluster) OnHeld(f func(from string, s peering.Spread)) (remove func()) {
	ps := &c.push
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.handlers == nil {
		ps.handlers = make(map[int]func(string, peering.Spread))
	}
	id := ps.nextID
	ps.nextID++
	ps.handlers[id] = f
	return func() {
		ps.mu.Lock()
		delete(ps.handlers, id)
		ps.mu.Unlock()
	}
}

// SendSpread tells the member named to to carry path or to stop (a
// director's spreading). It reports whether the message was queued.
func (c *Cluster) SendSpread(to, path string, carry bool) bool {
	n := c.node.Load()
	if n == nil {
		return false
	}
	ok, err := n.SendSpread(to, peering.Spread{Kind: peering.SpreadCarry, Path: path, Carry: carry})
	if err != nil {
		c.log.Debug("spread: message not sent", zap.String("to", to), zap.Error(err))
	}
	return ok
}

// PushStats are a node's spreading counters.
type PushStats struct {
	// Carried is the number of paths this node carries for directors now.
	Carried int `json:"carried"`
	// Items and Bytes count the copies it fetched to carry them.
	Items int64 `json:"pushed_items"`
	Bytes int64 `json:"pushed_bytes"`
}

// PushStats returns the node's spreading counters.
func (c *Cluster) PushStats() PushStats {
	ps := &c.push
	ps.mu.Lock()
	n := len(ps.paths)
	ps.mu.Unlock()
	return PushStats{Carried: n, Items: ps.items.Load(), Bytes: ps.bytes.Load()}
}

// Carries reports whether this node carries path for a director, and for
// which.
func (c *Cluster) Carries(path string) (director string, ok bool) {
	ps := &c.push
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if cp := ps.paths[path]; cp != nil {
		return cp.director, true
	}
	return "", false
}

// carryLoop keeps the carried paths: it drops those whose director went
// quiet, fetches what is missing (a new path, a new version, a copy the
// hot cache evicted) and tells the directors what changed.
func (c *Cluster) carryLoop() {
	ps := &c.push
	t := time.NewTicker(carryTick)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		case <-ps.wake:
		}
		now := time.Now()
		type job struct {
			path string
			cp   *carried
		}
		var jobs []job
		ps.mu.Lock()
		for p, cp := range ps.paths {
			if now.After(cp.until) {
				delete(ps.paths, p)
				continue
			}
			jobs = append(jobs, job{p, cp})
		}
		ps.mu.Unlock()
		for _, j := range jobs {
			c.checkCarried(j.path, j.cp)
		}
	}
}

// checkCarried looks at one carried path: it tells its director when the
// version held changed, and starts a fetch when the bytes are missing.
func (c *Cluster) checkCarried(path string, cp *carried) {
	ps := &c.push
	version, held, missing := c.carryState(path)
	ps.mu.Lock()
	director, last, fetching := cp.director, cp.held, cp.fetching
	if ps.paths[path] != cp {
		ps.mu.Unlock()
		return // dropped meanwhile
	}
	announce := held && version != last || !held && last != ""
	if announce {
		if held {
			cp.held = version
		} else {
			cp.held = ""
		}
	}
	start := !held && missing != nil && !fetching &&
		(cp.tried != version || time.Since(cp.triedAt) > carryRetry)
	if start {
		select {
		case ps.sem <- struct{}{}:
			cp.fetching, cp.tried, cp.triedAt = true, version, time.Now()
		default:
			start = false // busy: next tick
		}
	}
	ps.mu.Unlock()
	if announce {
		if n := c.node.Load(); n != nil {
			n.SendSpread(director, peering.Spread{Kind: peering.SpreadHeld, Path: path, Version: version, Carry: held})
		}
	}
	if start {
		go func() {
			defer func() {
				<-ps.sem
				ps.mu.Lock()
				cp.fetching = false
				ps.mu.Unlock()
				select {
				case ps.wake <- struct{}{}:
				default:
				}
			}()
			missing()
		}()
	}
}

// carryState says whether this node can serve path from memory now, at
// which version, and if not, returns the fetch that would make it so (nil
// when there is nothing to fetch: the path is unknown, too large, or has
// no holder to ask).
func (c *Cluster) carryState(path string) (version string, held bool, fetch func()) {
	m := c.members.Load()
	for _, g := range c.Groups() {
		if m.Owns(path) {
			if st := g.store.Load(); st != nil {
				if it := st.Published(path); it != nil {
					return it.Version(), it.Resident(), nil
				}
			}
			continue
		}
		e, ok := g.entry(path)
		if !ok {
			continue
		}
		version := e.Item.Version()
		h := g.hot.Load()
		if h == nil || e.Item.Size > shard.ChunkSize {
			return version, false, nil
		}
		encs := []string{""}
		for _, v := range e.Item.Variants() {
			if v.Size <= shard.ChunkSize {
				encs = append(encs, v.Encoding)
			}
		}
		var want []string
		for _, enc := range encs {
			if !h.Contains(hotKey(path, enc), version) {
				want = append(want, enc)
			}
		}
		if len(want) == 0 {
			return version, true, nil
		}
		return version, false, func() { g.carry(e, want) }
	}
	return "", false, nil
}

// carry fetches the bytes of e's item in the encodings encs from its
// holder (shared with the requests' fetches of the same version) and
// pushes them into the hot cache.
func (g *Group) carry(e *Entry, encs []string) {
	h := g.hot.Load()
	if h == nil {
		return
	}
	version := e.Item.Version()
	for _, enc := range encs {
		key := hotKey(e.Item.Path, enc)
		v, err, _ := g.flight.Do(key+"@"+version, func() (any, error) {
			return g.fetchPeer(e, enc, 0, 0)
		})
		if err != nil {
			g.c.log.Debug("spread: fetching a carried path failed", zap.String("path", e.Item.Path),
				zap.String("encoding", enc), zap.Error(err))
			return
		}
		data := v.([]byte)
		c := &shard.Item{Path: key, Size: int64(len(data))}
		_ = c.SetBody(data) // Size bytes
		c.SetETagOf(e.Item)
		if h.Push(c) {
			g.c.push.items.Add(1)
			g.c.push.bytes.Add(int64(len(data)))
		}
	}
}

// carriedPaths lists the paths this node carries, sorted (for tests).
func (c *Cluster) carriedPaths() []string {
	ps := &c.push
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := make([]string, 0, len(ps.paths))
	for p := range ps.paths {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
