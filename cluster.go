package shardcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// clusterConfig is what makes a node.
type clusterConfig struct {
	name, addr string
	secret     string
	tls        *TLSFiles
	lan        string
	observer   bool
	members    *membership
	logger     *zap.Logger
}

// cluster is a node's membership in the cluster: the SAN endpoint, the
// ring, and its groups (one per content root). It lives in a usage pool, so
// reloads that keep the node keep it, its connections and its tables of
// content.
type cluster struct {
	key     string // its usage pool key
	cfg     clusterConfig
	members atomic.Pointer[membership] // swapped by reloads
	lan     atomicString               // what this node advertises

	// fetchTimeout bounds the attempts of one peer fetch. Not part of the
	// node's identity: a reload sets it in place.
	fetchTimeout atomic.Int64

	startOnce sync.Once
	startErr  error
	node      atomic.Pointer[peering.Node]

	mu     sync.RWMutex
	groups map[string]*group

	purges chan peering.Purge // from peers, applied by purgeLoop
	done   chan struct{}
}

func newCluster(key string, cfg clusterConfig) (*cluster, error) {
	c := &cluster{
		key:    key,
		cfg:    cfg,
		groups: make(map[string]*group),
		purges: make(chan peering.Purge, 64),
		done:   make(chan struct{}),
	}
	c.members.Store(cfg.members)
	return c, nil
}

// ring returns the current ring.
func (c *cluster) ring() *peering.Ring { return c.members.Load().ring }

// reconfigure makes m the cluster's membership (a reload that changed the
// peers or replicas) and advertises lan: the node keeps its socket, and its
// connections to the peers that stay.
func (c *cluster) reconfigure(m *membership, lan string) {
	old := c.members.Swap(m)
	n := c.node.Load()
	if n == nil {
		return
	}
	if old != m {
		n.SetPeers(m.peeringPeers())
		if old.ring.Epoch() != m.ring.Epoch() || old.replicas != m.replicas {
			c.cfg.logger.Info("cluster membership changed", zap.String("node", c.cfg.name),
				zap.Strings("ring", m.ring.Nodes()), zap.Int("replicas", m.replicas))
		}
	}
	if lan != c.lan.Load() {
		if err := n.SetLan(lan); err != nil {
			c.cfg.logger.Error("advertising lan", zap.String("lan", lan), zap.Error(err))
		} else {
			c.lan.Store(lan)
		}
	}
}

// fingerprint names a secret without revealing it.
func fingerprint(secret string) string {
	if secret == "" {
		return ""
	}
	sum := sha256.Sum256([]byte("shardcache fingerprint\x00" + secret))
	return hex.EncodeToString(sum[:8])
}

// start binds the SAN socket and starts dialling peers, once.
func (c *cluster) start() error {
	c.startOnce.Do(func() {
		var creds *peering.Credentials
		var err error
		if c.cfg.tls != nil {
			creds, err = peering.CredentialsFromFiles(c.cfg.tls.Cert, c.cfg.tls.Key, c.cfg.tls.CA)
		} else {
			creds, err = peering.CredentialsFromSecret(c.cfg.secret, c.cfg.name)
		}
		if err != nil {
			c.startErr = fmt.Errorf("node %s: credentials: %v", c.cfg.name, err)
			return
		}
		peers := c.members.Load().peeringPeers()
		var backend peering.Backend = c
		if c.cfg.observer {
			backend = nil // serves nothing
		}
		n, err := peering.Listen(peering.Config{
			Name:    c.cfg.name,
			Addr:    c.cfg.addr,
			Peers:   peers,
			TLS:     creds,
			Backend: backend,
			OnEvent: c.onEvent,
			Logger:  c.cfg.logger,
			// Each fetch carries its own deadline (fetch_timeout, which a
			// reload may change); this is only a cap.
			FetchTimeout: time.Minute,
			Lan:          c.cfg.lan,
			Observer:     c.cfg.observer,
		})
		if err != nil {
			c.startErr = fmt.Errorf("node %s: listening on %s: %v", c.cfg.name, c.cfg.addr, err)
			return
		}
		c.node.Store(n)
		c.lan.Store(c.cfg.lan)
		liveKeys.Store(c.cfg.addr, c.key)
		c.cfg.logger.Info("node started", zap.String("node", c.cfg.name), zap.String("san", n.Addr().String()),
			zap.Strings("ring", c.ring().Nodes()))
		go c.announceReady()
		go c.purgeLoop()
	})
	return c.startErr
}

// announceReady tells the peers once every group of this node is primed.
func (c *cluster) announceReady() {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if c.Ready() {
			if n := c.node.Load(); n != nil {
				// Stores report no changes while priming: peers that
				// connected meanwhile got a partial table. Send it whole.
				for _, toc := range c.Snapshot() {
					n.Publish(peering.Delta{Group: toc.Group, Upserts: toc.Items})
				}
				n.PublishReady(true)
			}
			return
		}
	}
}

// Destruct closes the node when the last config using it is gone.
func (c *cluster) Destruct() error {
	close(c.done)
	liveKeys.CompareAndDelete(c.cfg.addr, c.key)
	if n := c.node.Load(); n != nil {
		return n.Close()
	}
	return nil
}

// holders returns the nodes that hold path: its owner, then its replicas.
func (c *cluster) holders(path string) []string { return c.members.Load().holders(path) }

// owns reports whether this node holds path: as its owner or a replica.
func (c *cluster) owns(path string) bool { return c.members.Load().owns(path) }

// atomicString is a string read and written atomically.
type atomicString struct{ v atomic.Pointer[string] }

func (a *atomicString) Load() string {
	if p := a.v.Load(); p != nil {
		return *p
	}
	return ""
}

func (a *atomicString) Store(s string) { a.v.Store(&s) }

// group returns the group named name, making it on first use.
func (c *cluster) group(name string) *group {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.groups[name]
	if g == nil {
		g = &group{name: name, c: c, toc: make(map[string]*remoteItem), byOwner: make(map[string]map[string]bool)}
		c.groups[name] = g
	}
	return g
}

func (c *cluster) lookupGroup(name string) *group {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.groups[name]
}

// Get serves a peer's fetch from this node's memory or storage. It never
// asks another node.
func (c *cluster) Get(ctx context.Context, req peering.Request) (peering.Meta, []byte, error) {
	g := c.lookupGroup(req.Group)
	if g == nil {
		return peering.Meta{}, nil, peering.ErrNotFound
	}
	st := g.store.Load()
	if st == nil {
		return peering.Meta{}, nil, peering.ErrUnavailable
	}
	it, isDir, err := st.Lookup(req.Path)
	if err != nil || isDir {
		return peering.Meta{}, nil, peering.ErrNotFound
	}
	if req.Version != "" && it.Version != req.Version {
		return peering.Meta{}, nil, peering.ErrNotFound
	}
	_, _, size, ok := heldBytes(it, req.Encoding)
	if !ok {
		return peering.Meta{}, nil, peering.ErrNotFound
	}
	off, n := int64(0), size
	if req.Length > 0 {
		if req.Offset > size {
			return peering.Meta{}, nil, peering.ErrBadRequest
		}
		off, n = req.Offset, min(req.Length, size-req.Offset)
	}
	if n > shard.ChunkSize {
		// Large items move a chunk at a time (chunked.go): a request for
		// more would make this node build one slice of that size.
		return peering.Meta{}, nil, peering.ErrTooLarge
	}
	body, err := readRange(st, it, req.Encoding, off, n)
	if err != nil {
		if errors.Is(err, shard.ErrChanged) {
			return peering.Meta{}, nil, peering.ErrNotFound
		}
		return peering.Meta{}, nil, err
	}
	g.stats.served.Add(1)
	g.stats.servedBytes.Add(int64(len(body)))
	m := toMeta(it)
	m.Encoding = req.Encoding
	m.Size = int64(len(body))
	m.Variants = nil
	return m, body, nil
}

// Snapshot lists the items this node owns, per group.
func (c *cluster) Snapshot() []peering.GroupTOC {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []peering.GroupTOC
	for name, g := range c.groups {
		st := g.store.Load()
		if st == nil {
			continue
		}
		toc := peering.GroupTOC{Group: name}
		st.Each(func(it *shard.Item) bool {
			if c.owns(it.Path) {
				toc.Items = append(toc.Items, toMeta(it))
			}
			return true
		})
		out = append(out, toc)
	}
	return out
}

// Ready reports whether every group of this node is primed.
func (c *cluster) Ready() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, g := range c.groups {
		if st := g.store.Load(); st != nil && !st.Ready() {
			return false
		}
	}
	return true
}

// onEvent applies what peers tell us to the tables of content.
func (c *cluster) onEvent(ev peering.Event) {
	switch ev.Kind {
	case peering.EventSnapshot:
		seen := map[string]bool{}
		for _, toc := range ev.Snapshot {
			c.group(toc.Group).replace(ev.Peer, toc.Items)
			seen[toc.Group] = true
		}
		c.mu.RLock()
		var stale []*group
		for name, g := range c.groups {
			if !seen[name] {
				stale = append(stale, g)
			}
		}
		c.mu.RUnlock()
		for _, g := range stale {
			g.replace(ev.Peer, nil)
		}
	case peering.EventDelta:
		c.group(ev.Delta.Group).apply(ev.Peer, ev.Delta)
	case peering.EventPurge:
		// Re-reading from storage may take a while: not on the peer's
		// connection goroutine, and one at a time, so that a burst of
		// purges costs a bounded queue, not a goroutine each.
		select {
		case c.purges <- ev.Purge:
		default:
			c.cfg.logger.Warn("purge dropped: too many queued", zap.String("peer", ev.Peer),
				zap.String("path", ev.Purge.Path), zap.Bool("prefix", ev.Purge.Prefix))
		}
	}
}

// peerReady reports whether the peer named name is connected and primed:
// then its table of content is complete.
func (c *cluster) peerReady(name string) bool {
	n := c.node.Load()
	if n == nil {
		return false
	}
	for _, p := range n.Peers() {
		if p.Name == name {
			return p.Up && p.Ready
		}
	}
	return false
}

// publish sends a change of one of this node's items to the peers.
func (c *cluster) publish(group, path string, it *shard.Item) {
	n := c.node.Load()
	if n == nil || !c.owns(path) {
		return // peers get a snapshot when they connect
	}
	d := peering.Delta{Group: group}
	if it == nil {
		d.Deletes = []string{path}
	} else {
		d.Upserts = []peering.Meta{toMeta(it)}
	}
	n.Publish(d)
}

func toMeta(it *shard.Item) peering.Meta {
	m := peering.Meta{
		Path:        it.Path,
		Version:     it.Version,
		Size:        it.Size,
		ContentType: it.ContentType,
		ModTime:     it.ModTime,
		ETag:        it.ETag,
	}
	for _, v := range it.Variants {
		m.Variants = append(m.Variants, peering.Variant{Encoding: v.Encoding, Size: v.Size, ETag: v.ETag})
	}
	return m
}

func variant(it *shard.Item, enc string) *shard.Variant {
	for i := range it.Variants {
		if it.Variants[i].Encoding == enc {
			return &it.Variants[i]
		}
	}
	return nil
}

// purgeLocal applies a purge on this node: it drops hot copies of the
// path (or prefix) and re-reads the files this node owns from storage. It
// returns the number of hot copies dropped and of files looked at.
func (c *cluster) purgeLocal(p peering.Purge) (dropped, refreshed int) {
	c.mu.RLock()
	groups := make([]*group, 0, len(c.groups))
	for name, g := range c.groups {
		if p.Group == "" || p.Group == name {
			groups = append(groups, g)
		}
	}
	c.mu.RUnlock()
	for _, g := range groups {
		if h := g.hot.Load(); h != nil {
			if p.Prefix {
				dropped += h.DropPrefix(p.Path)
			} else {
				var old *shard.Item
				if ri, ok := g.lookup(p.Path); ok {
					old = ri.it
				}
				dropped += dropHot(h, p.Path, old)
			}
		}
		if st := g.store.Load(); st != nil {
			refreshed += st.Refresh(p.Path, p.Prefix)
		}
	}
	return dropped, refreshed
}

// purgeLoop applies the purges peers send, one at a time.
func (c *cluster) purgeLoop() {
	for {
		select {
		case <-c.done:
			return
		case p := <-c.purges:
			c.purgeLocal(p)
		}
	}
}
