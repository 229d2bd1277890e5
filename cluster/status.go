package cluster

import (
	"sort"

	"github.com/shardcache/caddy-shardcache/shard"
)

// MemberStatus is one peer as this node sees it.
type MemberStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Up      bool   `json:"up"`
	Ready   bool   `json:"ready"`
	// Synced: its table of content arrived since it connected.
	Synced bool `json:"synced"`
	// SameRing: it uses this node's ring (peer list and replicas).
	SameRing bool `json:"same_ring"`
	// Groups are the groups it advertises, with their readiness.
	Groups []MemberGroup `json:"groups,omitempty"`
	// MissingGroups are this node's groups the peer does not have (named
	// differently, or not configured there): the files it holds in them
	// are served from this node's storage.
	MissingGroups []string `json:"missing_groups,omitempty"`
}

// MemberGroup is a group a peer advertises.
type MemberGroup struct {
	Name  string `json:"name"`
	Ready bool   `json:"ready"`
}

// Status is the node's view of the cluster.
type Status struct {
	Node    string         `json:"node"`
	SAN     string         `json:"san,omitempty"`
	Epoch   uint64         `json:"ring_epoch"`
	Ring    []string       `json:"ring"`
	Members []MemberStatus `json:"members"`
	// TOCBytesSent is what syncing its peers' tables of content has cost
	// this node since it started: snapshots and the changes a reconnecting
	// peer asked for (peering.Node.TOCBytesSent), not the changes
	// published as they happen.
	TOCBytesSent int64 `json:"toc_bytes_sent"`
}

// Status reports the node and its peers.
func (c *Cluster) Status() Status {
	m := c.members.Load()
	st := Status{Node: c.cfg.Name, Epoch: m.Ring().Epoch(), Ring: m.Ring().Nodes()}
	n := c.node.Load()
	if n == nil {
		return st
	}
	st.SAN = n.Addr().String()
	st.TOCBytesSent = n.TOCBytesSent()
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, p := range n.Peers() {
		ms := MemberStatus{Name: p.Name, Address: p.Addr, Up: p.Up, Ready: p.Ready}
		if pv := c.peers[p.Name]; pv != nil {
			ms.Synced = pv.synced && p.Up
			ms.SameRing = pv.state.Epoch == m.Epoch()
			for _, gs := range pv.state.Groups {
				ms.Groups = append(ms.Groups, MemberGroup{Name: gs.Name, Ready: gs.Ready})
			}
			for name := range c.own {
				found := false
				for _, gs := range pv.state.Groups {
					found = found || gs.Name == name
				}
				if !found && p.Up {
					ms.MissingGroups = append(ms.MissingGroups, name)
				}
			}
			sort.Strings(ms.MissingGroups)
		}
		st.Members = append(st.Members, ms)
	}
	return st
}

// Where says where a path is in one group.
type Where struct {
	Path     string   `json:"path"`
	Group    string   `json:"group,omitempty"`
	Owner    string   `json:"owner,omitempty"`
	Holders  []string `json:"holders,omitempty"`
	Local    bool     `json:"local"` // this node holds it
	Found    bool     `json:"found"` // the path names a file
	Version  string   `json:"version,omitempty"`
	Size     int64    `json:"size,omitempty"`
	Resident bool     `json:"resident"` // its bytes are in this node's memory (primed or hot)
	// For a large file another node holds: how many of its chunks (the
	// identity bytes) are hot here, of how many.
	HotChunks int `json:"hot_chunks,omitempty"`
	Chunks    int `json:"chunks,omitempty"`
}

// Where reports, for each group of the committed config, who holds p and
// whether its bytes are in this node's memory.
func (c *Cluster) Where(p string) []Where {
	m := c.members.Load()
	var out []Where
	for _, g := range c.Groups() {
		wh := Where{Path: p, Group: g.name, Owner: m.Owner(p), Holders: m.Holders(p), Local: m.Owns(p)}
		if wh.Local {
			if s := g.store.Load(); s != nil {
				if it, isDir, err := s.Lookup(p); err == nil && !isDir {
					wh.Found, wh.Version, wh.Size, wh.Resident = true, it.Version(), it.Size, it.Resident()
				}
			}
		} else if e, ok := g.entry(p); ok {
			wh.Found, wh.Version, wh.Size = true, e.Item.Version(), e.Item.Size
			if h := g.hot.Load(); h != nil {
				if e.Item.Size > shard.ChunkSize {
					wh.Chunks = shard.NumChunks(e.Item.Size)
					for i := range wh.Chunks {
						if h.Contains(chunkKey(p, "", i), e.Item.Version()) {
							wh.HotChunks++
						}
					}
					wh.Resident = wh.HotChunks == wh.Chunks
				} else {
					wh.Resident = h.Contains(hotKey(p, ""), e.Item.Version())
				}
			}
		}
		out = append(out, wh)
	}
	return out
}

// MetadataBytes is the memory the cluster's tables of content take, over
// every group: what the Go memory limit counts besides the stores' own
// metadata.
func (c *Cluster) MetadataBytes() int64 {
	var n int64
	for _, g := range c.Groups() {
		n += g.TOCBytes()
	}
	return n
}
