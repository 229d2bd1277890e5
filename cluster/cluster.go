// Package cluster is a node's membership in a shardcache cluster, without
// Caddy: its groups (one per content tree), the tables of content of what
// its peers hold, fetches from their memory over the SAN (with a hot cache
// of popular copies), and what it tells its peers about itself.
//
// It sits between the Caddy glue (the root package: config, HTTP
// semantics) and the packages shard (a node's memory) and peering (QUIC,
// mutual TLS, frames, ring). A Cluster is made once per node identity and
// lives across config reloads; each committed config hands it its
// membership and its groups' stores (Commit), so that a config that fails
// to load changes nothing a running node shares.
//
// The rule it holds above all: a node answers 404 for a path another node
// holds only when one of that path's holders is trusted for its group —
// connected, in the same ring, with the group primed and its table of
// content received. Otherwise the node's own storage answers.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

// Config is a node's identity in the cluster: what cannot change without
// a new Cluster (and a new SAN socket).
type Config struct {
	// Name is this node's name: in its certificate and the ring.
	Name string
	// Addr is the SAN (UDP) address to bind.
	Addr string
	// Observer: a content director that holds nothing and is in no ring.
	Observer bool
	// Logger receives the cluster's logs; nil means none.
	Logger *zap.Logger
	// OnPeerFetch, if set, observes the latency of each successful peer
	// fetch.
	OnPeerFetch func(time.Duration)
	// Peering, if set, adjusts the peering configuration before the node
	// listens (tests: timeouts, a socket of their own).
	Peering func(*peering.Config)
}

// Cluster is a node's membership in the cluster: the SAN endpoint, the
// ring, and its groups.
type Cluster struct {
	cfg      Config
	log      *zap.Logger
	members  atomic.Pointer[Membership]
	memberMu sync.Mutex // serialises SetMembers

	handoffMu    sync.Mutex
	handoffStats map[string]handoffRecord // by holder, since the last ring change
	// prevMembers is the membership before the last ring change: the
	// nodes that held what this node newly holds (handoff.go).
	prevMembers atomic.Pointer[Membership]

	lan          atomic.Pointer[string]
	fetchTimeout atomic.Int64

	startOnce sync.Once
	startErr  error
	node      atomic.Pointer[peering.Node]
	started   atomic.Int64 // unix nanos of Start

	mu     sync.RWMutex
	groups map[string]*Group    // every group known: ours and our peers'
	own    map[string]*ownGroup // the groups of the committed config
	peers  map[string]*peerView // what each peer told us about itself
	// epochs is the ring epoch each store of own holds its share for.
	epochs map[*shard.Store]uint64
	// learned maps the address of a member listed by address only (DNS
	// A/AAAA) to the node name its certificate and HELLO gave.
	learned map[string]string
	// set is the last member set (SetMemberSet), rebuilt into a
	// membership when a name is learned.
	set      []Member
	replicas int

	// stateMu serialises what this node tells its peers about itself
	// (tables of content, state, readiness), so that they arrive in order.
	stateMu   sync.Mutex
	lastReady bool

	purges chan peering.Purge // from peers, applied by purgeLoop
	push   pushState          // spreading hot paths (push.go)
	done   chan struct{}
	closed atomic.Bool
}

// ownGroup is a group of the committed config: its store, and whether its
// table of content is complete at its peers.
type ownGroup struct {
	g     *Group
	store *shard.Store
	// published: the store was primed and its table sent whole to the
	// peers (Node.Resync) once; from then on its changes are published as
	// they happen. Peers connecting before that get the group as pending.
	published bool
	// sent: published, and no ring change is being applied: the group is
	// advertised ready.
	sent bool
	// settling counts the ring changes the store is still applying
	// (SetOwns): until they are done its table is not complete.
	settling int
	// primed: the store's table was complete once. A node stays ready
	// (for the director) while a ring change moves part of its share: it
	// serves what it is missing from its peers or storage meanwhile.
	primed bool
}

// peerView is what a peer told us about itself.
type peerView struct {
	state  peering.State
	synced bool // its table of content arrived since it connected
	warned string
	// session lists the groups whose table it sent (or resumed, or said
	// pending) since it connected: at the end of its snapshot, what it
	// published in other groups is gone.
	session map[string]bool
}

// New makes a cluster node; Start binds its socket.
func New(cfg Config, m *Membership) *Cluster {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	c := &Cluster{
		cfg:     cfg,
		log:     log,
		groups:  make(map[string]*Group),
		own:     make(map[string]*ownGroup),
		peers:   make(map[string]*peerView),
		epochs:  make(map[*shard.Store]uint64),
		learned: make(map[string]string),
		purges:  make(chan peering.Purge, 64),
		done:    make(chan struct{}),
	}
	c.members.Store(m)
	c.fetchTimeout.Store(int64(2 * time.Second))
	empty := ""
	c.lan.Store(&empty)
	return c
}

// Name is this node's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// Observer reports whether this node is a content director.
func (c *Cluster) Observer() bool { return c.cfg.Observer }

// Members is the committed membership.
func (c *Cluster) Members() *Membership { return c.members.Load() }

// Node is the peering node, nil before Start.
func (c *Cluster) Node() *peering.Node { return c.node.Load() }

// Start binds the SAN socket and starts dialling the members of the
// membership New was given, once. lan is the HTTP address to advertise.
func (c *Cluster) Start(creds *peering.Credentials, lan string) error {
	c.startOnce.Do(func() {
		var backend peering.Backend = c
		if c.cfg.Observer {
			backend = nil // serves nothing
		}
		pc := peering.Config{
			Name:    c.cfg.Name,
			Addr:    c.cfg.Addr,
			Peers:   c.members.Load().Peers(),
			TLS:     creds,
			Backend: backend,
			OnEvent: c.onEvent,
			Logger:  c.log,
			// Each fetch carries its own deadline (fetch_timeout, which a
			// reload may change); this is only a cap.
			FetchTimeout: time.Minute,
			Lan:          lan,
			Observer:     c.cfg.Observer,
			State:        c.state(),
			Resume:       c.resumeFor,
		}
		pc.OnSpread = c.onSpread // push.go
		if c.cfg.Peering != nil {
			c.cfg.Peering(&pc)
		}
		c.started.Store(time.Now().UnixNano())
		n, err := peering.Listen(pc)
		if err != nil {
			c.startErr = fmt.Errorf("node %s: listening on %s: %v", c.cfg.Name, c.cfg.Addr, err)
			return
		}
		c.lan.Store(&lan)
		c.node.Store(n)
		c.log.Info("node started", zap.String("node", c.cfg.Name), zap.String("san", n.Addr().String()),
			zap.Strings("ring", c.members.Load().Ring().Nodes()))
		go c.purgeLoop()
		go c.watchReady()
	})
	return c.startErr
}

// Close stops the node.
func (c *Cluster) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(c.done)
	if n := c.node.Load(); n != nil {
		return n.Close()
	}
	return nil
}

// GroupConfig is one group of a committed config.
type GroupConfig struct {
	Name  string
	Store *shard.Store
	Hot   int64 // the hot cache's budget
	// Epoch is the ring epoch of the Owns the store was made with, when
	// the cluster has not seen the store before.
	Epoch uint64
}

// Commit is what a committed config shares: called from the config's
// Start, never from Provision, so that a config that fails to load changes
// nothing.
type Commit struct {
	Members      *Membership
	Lan          string
	FetchTimeout time.Duration
	Groups       []GroupConfig
}

// Commit makes cm what this node serves and tells its peers. A changed
// membership re-dials the peers that changed and drops the table-of-content
// entries whose publisher no longer holds their path. A group whose store
// changed is advertised as not ready until the new store is primed and its
// whole table of content sent; groups that cm lacks are no longer served
// to peers.
func (c *Cluster) Commit(cm Commit) {
	if cm.FetchTimeout > 0 {
		c.fetchTimeout.Store(int64(cm.FetchTimeout))
	}
	c.SetMembers(cm.Members)
	n := c.node.Load()
	if n != nil && cm.Lan != *c.lan.Load() {
		if err := n.SetLan(cm.Lan); err != nil {
			c.log.Error("advertising lan", zap.String("lan", cm.Lan), zap.Error(err))
		} else {
			lan := cm.Lan
			c.lan.Store(&lan)
		}
	}

	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	c.mu.Lock()
	own := make(map[string]*ownGroup, len(cm.Groups))
	for _, gc := range cm.Groups {
		g := c.groupLocked(gc.Name)
		prev := c.own[gc.Name]
		og := &ownGroup{g: g, store: gc.Store}
		if prev != nil && prev.store == gc.Store {
			og.published, og.sent, og.settling, og.primed = prev.published, prev.sent, prev.settling, prev.primed
		}
		if _, known := c.epochs[gc.Store]; !known {
			c.epochs[gc.Store] = gc.Epoch
		}
		own[gc.Name] = og
		g.store.Store(gc.Store)
		g.setHot(gc.Hot)
	}
	for name, og := range c.own {
		if own[name] == nil {
			og.g.store.Store(nil)
		}
	}
	c.own = own
	for st := range c.epochs {
		used := false
		for _, og := range own {
			used = used || og.store == st
		}
		if !used {
			delete(c.epochs, st)
		}
	}
	c.settleLocked(cm.Members)
	c.mu.Unlock()
	c.publishStateLocked()
}

// MembershipFor returns the membership of the members found (static
// peers and sources), each held by replicas members: a member listed by
// address only takes the name it was last seen with, and is only dialled
// until then. This node's own entry is left out.
func (c *Cluster) MembershipFor(members []Member, replicas int) *Membership {
	c.mu.Lock()
	c.set, c.replicas = slices.Clone(members), replicas
	c.mu.Unlock()
	return c.membership()
}

// membership builds the membership of the last member set.
func (c *Cluster) membership() *Membership {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var peers []peering.Peer
	seen := map[string]bool{}
	for _, m := range c.set {
		if m.Name == "" {
			m.Name = c.learned[m.Addr]
		}
		if m.Name == c.cfg.Name || m.Name != "" && seen[m.Name] {
			continue
		}
		seen[m.Name] = m.Name != ""
		peers = append(peers, m)
	}
	return NewMembership(c.cfg.Name, c.cfg.Observer, peers, c.replicas)
}

// SetMemberSet makes the members found the membership (a peer source's
// answer changed): see MembershipFor and SetMembers.
func (c *Cluster) SetMemberSet(members []Member, replicas int) {
	c.SetMembers(c.MembershipFor(members, replicas))
}

// SetMembers makes m the membership: a reload, or a change in what a peer
// source (DNS) finds. A changed ring re-dials the peers that changed, moves
// the table-of-content entries whose publisher no longer holds their path,
// and has every store of this node drop what it no longer holds and load
// what it newly holds (from the previous holders' memory first); each
// group is advertised as not ready until its store has done so and its
// whole table of content was sent.
func (c *Cluster) SetMembers(m *Membership) {
	c.memberMu.Lock()
	defer c.memberMu.Unlock()
	old := c.members.Swap(m)
	if old == m {
		return
	}
	if old.Epoch() == m.Epoch() {
		if n := c.node.Load(); n != nil {
			n.SetPeers(m.Peers())
		}
		return
	}
	if n := c.node.Load(); n != nil {
		// Members that left stay connected until this node's stores have
		// taken their share (from their memory, while they are up).
		n.SetPeers(withLeavers(m, old))
	}
	c.prevMembers.Store(old)
	c.handoffMu.Lock()
	c.handoffStats = nil
	c.handoffMu.Unlock()
	dropped := 0
	c.mu.RLock()
	for _, g := range c.groups {
		dropped += g.prune(m)
	}
	c.mu.RUnlock()
	c.log.Info("cluster membership changed", zap.String("node", c.cfg.Name),
		zap.Strings("ring", m.Ring().Nodes()), zap.Int("replicas", m.Replicas()),
		zap.Int("toc_entries_moved", dropped))
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	c.mu.Lock()
	c.settleLocked(m)
	settling := false
	for _, og := range c.own {
		settling = settling || og.settling > 0
	}
	c.mu.Unlock()
	if !settling {
		c.dropLeavers() // nothing to take from them
	}
	c.publishStateLocked()
}

// settleLocked has every store of the committed config whose share is for
// another ring than m's take m's share, in the background. Called with
// c.mu held.
func (c *Cluster) settleLocked(m *Membership) {
	for _, og := range c.own {
		if og.store == nil || c.epochs[og.store] == m.Epoch() {
			continue
		}
		c.epochs[og.store] = m.Epoch()
		if !og.store.Started() {
			// Not priming yet (a new store of the config being
			// committed): it primes m's share from the start.
			og.store.SetOwns(m.Owns)
			continue
		}
		og.sent = false
		og.settling++
		go func() {
			start := time.Now()
			before := og.store.Stats()
			og.store.SetOwns(m.Owns)
			after := og.store.Stats()
			c.log.Info("share moved to the new ring", zap.String("group", og.g.name),
				zap.Duration("took", time.Since(start)),
				zap.Int64("items", after.Items), zap.Int64("from_peers_memory", after.HandoffItems-before.HandoffItems),
				zap.Int64("storage_reads_meanwhile", after.StorageReads-before.StorageReads))
			c.stateMu.Lock()
			defer c.stateMu.Unlock()
			c.mu.Lock()
			og.settling--
			settled := true
			for _, o := range c.own {
				settled = settled && o.settling == 0
			}
			c.mu.Unlock()
			if settled {
				c.dropLeavers()
			}
			c.publishStateLocked()
		}()
	}
}

// withLeavers lists m's peers and, after them, the members of old that m
// lacks: dialled (for handoff) but in no ring.
func withLeavers(m, old *Membership) []peering.Peer {
	peers := m.Peers()
	for _, p := range old.peers {
		if p.Name != "" && p.Name != m.self && !m.IsMember(p.Name) {
			peers = append(peers, p)
		}
	}
	return peers
}

// dropLeavers stops dialling the members that left, once every store has
// taken its share from them.
func (c *Cluster) dropLeavers() {
	if n := c.node.Load(); n != nil {
		n.SetPeers(c.members.Load().Peers())
	}
}

// watchReady publishes each group's table of content and readiness once
// its store is primed.
func (c *Cluster) watchReady() {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		c.stateMu.Lock()
		c.publishStateLocked()
		c.stateMu.Unlock()
	}
}

// publishStateLocked publishes the table of content of every group whose
// store became ready since (Node.Resync: each peer gets it whole, streamed,
// once), marks ready the groups that finished applying a ring change (a
// flag: their changes were published as they happened), then sends this
// node's state and readiness when they changed. Called with stateMu held.
func (c *Cluster) publishStateLocked() {
	n := c.node.Load()
	if n == nil {
		return
	}
	c.mu.Lock()
	var fresh []*ownGroup
	for _, og := range c.own {
		if og.sent || og.settling > 0 || og.store == nil || !og.store.Ready() {
			continue
		}
		if !og.published {
			// Stores report no changes while priming: peers that
			// connected meanwhile were told the group is pending. Now
			// it is sent to each of them, whole and streamed.
			fresh = append(fresh, og)
		}
		og.published, og.sent, og.primed = true, true, true
	}
	c.mu.Unlock()
	for _, og := range fresh {
		n.Resync(og.g.name)
		c.log.Info("group ready: table of content published to peers", zap.String("group", og.g.name),
			zap.Int64("items", og.store.Stats().Items))
	}
	st := c.state()
	if !st.Equal(n.State()) {
		n.SetState(st)
	}
	if ready := c.Ready(); ready != c.lastReady {
		c.lastReady = ready
		n.PublishReady(ready)
	}
}

// state is what this node advertises: its ring and its groups. A group is
// ready only when its store's share is for that very ring: SetMembers
// swaps the membership before it has the stores take their new share
// (settleLocked), and a state published in between (watchReady's tick)
// would otherwise call a table ready for a ring it lacks the gained files
// of, and the peers would answer 404 for them (TestStateReadyOnlyForTheStoresRing).
func (c *Cluster) state() peering.State {
	c.mu.RLock()
	defer c.mu.RUnlock()
	st := peering.State{Epoch: c.members.Load().Epoch()}
	for name, og := range c.own {
		ready := og.sent && og.store != nil && c.epochs[og.store] == st.Epoch
		st.Groups = append(st.Groups, peering.GroupState{Name: name, Ready: ready})
	}
	sort.Slice(st.Groups, func(i, j int) bool { return st.Groups[i].Name < st.Groups[j].Name })
	return st
}

// Group returns the group named name, making it on first use (a config
// being provisioned looks its groups up; only Commit gives them stores).
func (c *Cluster) Group(name string) *Group {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.groupLocked(name)
}

func (c *Cluster) groupLocked(name string) *Group {
	g := c.groups[name]
	if g == nil {
		g = &Group{name: name, c: c, owners: make(map[string]*ownerTOC), hash: newPathHash(),
			handoff: make(map[string]handoffItem), refused: make(map[string]refusedLog)}
		c.groups[name] = g
	}
	return g
}

// maxPeerGroups bounds the groups made for names only peers sent.
const maxPeerGroups = 256

// peerGroup returns the group a peer's table of content names, or nil
// when there are already too many groups (a peer cannot make this node
// allocate without bound).
func (c *Cluster) peerGroup(name string) *Group {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g := c.groups[name]; g != nil {
		return g
	}
	if len(c.groups) >= maxPeerGroups+len(c.own) {
		return nil
	}
	return c.groupLocked(name)
}

// Groups lists the groups of the committed config, by name.
func (c *Cluster) Groups() []*Group {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*Group, 0, len(c.own))
	for _, og := range c.own {
		out = append(out, og.g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (c *Cluster) lookupGroup(name string) *Group {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.groups[name]
}

// Get serves a peer's fetch from this node's memory or storage. It never
// asks another node, and refuses a path this node does not hold without
// reading or hashing anything.
func (c *Cluster) Get(ctx context.Context, req peering.Request) (peering.Meta, []byte, error) {
	g := c.lookupGroup(req.Group)
	if g == nil {
		return peering.Meta{}, nil, peering.ErrNotFound
	}
	st := g.store.Load()
	if st == nil {
		return peering.Meta{}, nil, peering.ErrUnavailable
	}
	var it *shard.Item
	if c.members.Load().Owns(req.Path) {
		var isDir bool
		var err error
		if it, isDir, err = st.Lookup(req.Path); err != nil || isDir {
			return peering.Meta{}, nil, peering.ErrNotFound
		}
	} else if it = st.Published(req.Path); it == nil {
		// Not ours under the current ring, and not (or no longer) in the
		// store: kept for handoff, or refused without reading or hashing
		// anything.
		if it = g.handedOff(req.Path); it == nil {
			return peering.Meta{}, nil, peering.ErrNotFound
		}
	}
	if req.MetaOnly {
		return toMeta(it), nil, nil
	}
	if req.Version != "" && !it.HasVersion(req.Version) {
		return peering.Meta{}, nil, peering.ErrNotFound
	}
	_, _, size, ok := HeldBytes(it, req.Encoding)
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
	g.stats.servedB.Add(int64(len(body)))
	m := toMeta(it)
	m.Encoding = req.Encoding
	m.Size = int64(len(body))
	m.Variants = nil
	return m, body, nil
}

// TOC writes the table of content of every group of the committed config
// (or the one w asks for) to w: the metadata of the items this node holds,
// read from the store as it is written, in bounded frames. A group whose
// store is not published yet (priming) is sent as pending.
func (c *Cluster) TOC(w *peering.TOCWriter) error {
	c.mu.RLock()
	type grp struct {
		name      string
		store     *shard.Store
		published bool
	}
	own := make([]grp, 0, len(c.own))
	for name, og := range c.own {
		if only := w.Only(); only == "" || only == name {
			own = append(own, grp{name, og.store, og.published})
		}
	}
	c.mu.RUnlock()
	sort.Slice(own, func(i, j int) bool { return own[i].name < own[j].name })
	m := c.members.Load()
	for _, og := range own {
		if og.store == nil {
			continue
		}
		want, err := w.Group(og.name, int(og.store.Stats().Items), og.published)
		if err != nil {
			return err
		}
		if !want {
			continue
		}
		var meta peering.Meta
		var variants []peering.Variant
		var etag etagScratch
		og.store.Each(func(it *shard.Item) bool {
			if !m.Owns(it.Path) {
				return true
			}
			variants = metaInto(&meta, it, variants[:0], &etag)
			err = w.Item(&meta)
			return err == nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// etagScratch is where metaInto writes an item's ETag.
type etagScratch [2 + 2*len(shard.Tag{})]byte

// metaInto sets *m to it's metadata, its variants in vs (reused). Its ETag
// and Version are in etag, valid until the next call with the same etag:
// the table of content is written one item at a time (TOCWriter.Item
// copies them into its frame), so a snapshot of a million items allocates
// no ETag or Version.
func metaInto(m *peering.Meta, it *shard.Item, vs []peering.Variant, etag *etagScratch) []peering.Variant {
	b := it.AppendETag(etag[:0])
	e := unsafe.String(unsafe.SliceData(b), len(b))
	v := ""
	if len(e) >= 2 {
		v = e[1 : len(e)-1]
	}
	*m = peering.Meta{Path: it.Path, Version: v, Size: it.Size, ContentType: it.ContentType(),
		ModTime: it.ModTime(), ETag: e}
	for _, v := range it.Variants() {
		vs = append(vs, peering.Variant{Encoding: v.Encoding, Size: v.Size, ETag: v.ETag})
	}
	m.Variants = vs
	return vs
}

// resumeFor lists what this node holds of peer's tables of content, for
// peer to send only the changes since (peering.Config.Resume).
func (c *Cluster) resumeFor(peer string) []peering.Resume {
	c.mu.RLock()
	groups := make([]*Group, 0, len(c.groups))
	for _, g := range c.groups {
		groups = append(groups, g)
	}
	c.mu.RUnlock()
	var out []peering.Resume
	for _, g := range groups {
		if log, seq, ok := g.resumeFrom(peer); ok {
			out = append(out, peering.Resume{Group: g.name, Log: log, Seq: seq})
		}
	}
	return out
}

// Ready reports whether every group of the committed config is primed and
// its table of content was sent: the node wants traffic. A ring change
// that moves part of a group's share does not make it unready (its
// advertised group state does say so, for its peers' tables).
func (c *Cluster) Ready() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, og := range c.own {
		if !og.primed {
			return false
		}
	}
	return true
}

// onEvent applies what peers tell us.
func (c *Cluster) onEvent(ev peering.Event) {
	switch ev.Kind {
	case peering.EventUp:
		c.mu.Lock()
		c.peers[ev.Peer] = &peerView{state: ev.State, session: map[string]bool{}}
		c.mu.Unlock()
		c.checkPeerState(ev.Peer)
	case peering.EventNamed:
		c.mu.Lock()
		changed := c.learned[ev.Addr] != ev.Peer
		c.learned[ev.Addr] = ev.Peer
		known := c.set != nil
		c.mu.Unlock()
		if changed && known {
			c.log.Info("member named", zap.String("addr", ev.Addr), zap.String("name", ev.Peer))
			// Not on this goroutine: SetMembers re-dials through peering.
			go c.SetMembers(c.membership())
		}
	case peering.EventDown:
		c.mu.Lock()
		if pv := c.peers[ev.Peer]; pv != nil {
			pv.synced = false
		}
		c.mu.Unlock()
	case peering.EventState:
		c.mu.Lock()
		pv := c.peers[ev.Peer]
		if pv == nil {
			pv = &peerView{}
			c.peers[ev.Peer] = pv
		}
		pv.state = ev.State
		c.mu.Unlock()
		c.checkPeerState(ev.Peer)
	case peering.EventSync:
		g := c.peerGroup(ev.Sync.Group)
		if g == nil {
			c.log.Warn("table of content for too many groups: ignored", zap.String("peer", ev.Peer),
				zap.String("group", ev.Sync.Group), zap.Int("max_groups", maxPeerGroups))
			return
		}
		c.mu.Lock()
		if pv := c.peers[ev.Peer]; pv != nil && pv.session != nil {
			pv.session[ev.Sync.Group] = true
		}
		c.mu.Unlock()
		switch {
		case ev.Sync.Mode == peering.SyncPending:
			g.dropOwner(ev.Peer)
		case ev.Sync.Mode == peering.SyncSnapshot && !ev.Sync.End:
			g.beginSnapshot(ev.Peer, ev.Sync)
		case ev.Sync.Mode == peering.SyncSnapshot:
			g.endSnapshot(ev.Peer, ev.Sync)
		case ev.Sync.End: // a resume
			g.resumed(ev.Peer, ev.Sync)
		}
	case peering.EventTOC:
		if g := c.peerGroup(ev.Delta.Group); g != nil {
			g.snapshotItems(ev.Peer, ev.Delta.Upserts, c.members.Load())
		}
	case peering.EventSnapshot:
		c.mu.Lock()
		var stale []*Group
		pv := c.peers[ev.Peer]
		if pv == nil {
			pv = &peerView{}
			c.peers[ev.Peer] = pv
		}
		for name, g := range c.groups {
			if !pv.session[name] {
				stale = append(stale, g)
			}
		}
		pv.synced = true
		c.mu.Unlock()
		for _, g := range stale {
			g.dropOwner(ev.Peer)
		}
	case peering.EventDelta:
		if g := c.peerGroup(ev.Delta.Group); g != nil {
			g.apply(ev.Peer, ev.Delta, c.members.Load())
		}
	case peering.EventPurge:
		if ev.Purge.Prefix && ev.Purge.Path == "" {
			c.log.Warn("refused a purge of everything from a peer", zap.String("peer", ev.Peer),
				zap.String("group", ev.Purge.Group))
			return
		}
		// Re-reading from storage may take a while: not on the peer's
		// connection goroutine, and one at a time (coalesced), so that a
		// burst of purges costs a bounded queue, not a goroutine each.
		select {
		case c.purges <- ev.Purge:
		default:
			c.log.Warn("purge dropped: too many queued", zap.String("peer", ev.Peer),
				zap.String("path", ev.Purge.Path), zap.Bool("prefix", ev.Purge.Prefix))
		}
	}
}

// checkPeerState warns, once per difference, when a peer uses another
// ring or names its groups otherwise than this node: the files it holds in
// the groups it lacks are then served from this node's storage.
func (c *Cluster) checkPeerState(peer string) {
	c.mu.Lock()
	pv := c.peers[peer]
	if pv == nil {
		c.mu.Unlock()
		return
	}
	ours := make([]string, 0, len(c.own))
	for name := range c.own {
		ours = append(ours, name)
	}
	theirs := make([]string, 0, len(pv.state.Groups))
	for _, gs := range pv.state.Groups {
		theirs = append(theirs, gs.Name)
	}
	sort.Strings(ours)
	missing, extra := diff(ours, theirs), diff(theirs, ours)
	epochDiffers := !c.cfg.Observer && pv.state.Epoch != 0 && pv.state.Epoch != c.members.Load().Epoch()
	key := fmt.Sprint(missing, extra, epochDiffers)
	if key == pv.warned {
		c.mu.Unlock()
		return
	}
	pv.warned = key
	c.mu.Unlock()
	if len(missing) > 0 && !c.cfg.Observer {
		c.log.Warn("groups differ between nodes: files the peer holds in a group it lacks are served from this node's storage; "+
			"give the group the same name on every node (`group <name>` in the shardcache handler)",
			zap.String("node", c.cfg.Name), zap.String("peer", peer),
			zap.Strings("node_groups", ours), zap.Strings("peer_groups", theirs),
			zap.Strings("missing_on_peer", missing), zap.Strings("only_on_peer", extra))
	}
	if epochDiffers {
		c.log.Warn("peer uses another ring (its peer list or replicas differ): its table of content is not trusted; "+
			"files it holds are served from this node's storage until the configs agree",
			zap.String("node", c.cfg.Name), zap.String("peer", peer))
	}
}

// diff lists the names of a that b lacks.
func diff(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}

// peerUp reports whether the peer named name is connected.
func (c *Cluster) peerUp(name string) (up, ready bool) {
	n := c.node.Load()
	if n == nil {
		return false, false
	}
	return n.PeerUp(name)
}

// peerReady reports whether the peer named name is connected and primed,
// so worth asking for bytes.
func (c *Cluster) peerReady(name string) bool {
	up, ready := c.peerUp(name)
	return up && ready
}

// trusted reports whether this node may take name's table of content for
// group as complete: name is connected, has sent its table since, uses the
// same ring, and has the group primed.
func (c *Cluster) trusted(name, group string, m *Membership) bool {
	if up, _ := c.peerUp(name); !up {
		return false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	pv := c.peers[name]
	if pv == nil || !pv.synced || pv.state.Epoch != m.Epoch() {
		return false
	}
	for _, gs := range pv.state.Groups {
		if gs.Name == group {
			return gs.Ready
		}
	}
	return false
}

// Publish sends a change of one of this node's items to the peers: call it
// from the store's OnChange.
func (c *Cluster) Publish(group, path string, it *shard.Item) {
	n := c.node.Load()
	if n == nil || !c.members.Load().Owns(path) {
		return // peers get the whole table when the group is ready
	}
	d := peering.Delta{Group: group}
	if it == nil {
		d.Deletes = []string{path}
	} else {
		d.Upserts = []peering.Meta{toMeta(it)}
	}
	n.Publish(d)
}

// Purge applies p on this node and sends it to every node connected to it.
// It returns what it did here.
func (c *Cluster) Purge(p peering.Purge) (dropped, refreshed int, broadcast bool) {
	dropped, refreshed = c.purgeLocal(p)
	if n := c.node.Load(); n != nil {
		n.Purge(p)
		broadcast = true
	}
	return dropped, refreshed, broadcast
}

// purgeLocal applies a purge on this node: it drops hot copies of the
// path (or prefix) and re-reads the files this node holds from storage. It
// returns the number of hot copies dropped and of files looked at.
func (c *Cluster) purgeLocal(p peering.Purge) (dropped, refreshed int) {
	c.mu.RLock()
	groups := make([]*Group, 0, len(c.own))
	for name, og := range c.own {
		if p.Group == "" || p.Group == name {
			groups = append(groups, og.g)
		}
	}
	c.mu.RUnlock()
	for _, g := range groups {
		if h := g.hot.Load(); h != nil {
			if p.Prefix {
				dropped += h.DropPrefix(p.Path)
			} else {
				var old *shard.Item
				if e, ok := g.entry(p.Path); ok {
					old = e.Item
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

// purgeLoop applies the purges peers send, one batch at a time: what
// queued meanwhile is coalesced (the same purge twice is applied once, a
// prefix covers the paths under it), so a node sent purges faster than it
// can apply them never re-reads the same files once per frame.
func (c *Cluster) purgeLoop() {
	for {
		var batch []peering.Purge
		select {
		case <-c.done:
			return
		case p := <-c.purges:
			batch = append(batch, p)
		}
	drain:
		for len(batch) < cap(c.purges) {
			select {
			case p := <-c.purges:
				batch = append(batch, p)
			default:
				break drain
			}
		}
		for _, p := range coalesce(batch) {
			c.purgeLocal(p)
		}
	}
}

// coalesce drops the purges of a batch that another one covers.
func coalesce(batch []peering.Purge) []peering.Purge {
	covers := func(a, b peering.Purge) bool { // a does everything b does
		if a.Group != "" && a.Group != b.Group {
			return false
		}
		if a.Prefix {
			return strings.HasPrefix(b.Path, a.Path)
		}
		return !b.Prefix && a.Path == b.Path
	}
	var out []peering.Purge
	for i, b := range batch {
		covered := false
		for j, a := range batch {
			if i != j && covers(a, b) && (!covers(b, a) || j < i) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, b)
		}
	}
	return out
}
