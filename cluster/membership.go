package cluster

import (
	"slices"
	"sync"

	"github.com/shardcache/caddy-shardcache/peering"
)

// Membership is one config's view of the cluster: the ring over the
// members' names and how many of them hold each file. Immutable; a reload
// that changes the members or replicas makes a new one.
type Membership struct {
	self     string
	ring     *peering.Ring
	replicas int
	peers    []peering.Peer

	othersOnce sync.Once
	others     *Membership
}

// NewMembership makes the membership of the node self (in no ring when it
// is an observer) with peers, each path held by replicas members.
func NewMembership(self string, observer bool, peers []peering.Peer, replicas int) *Membership {
	var names []string
	if !observer {
		names = append(names, self) // an observer is in no ring
	}
	for _, p := range peers {
		if p.Name != "" { // a peer known by address only is dialled, not placed
			names = append(names, p.Name)
		}
	}
	return &Membership{
		self:     self,
		ring:     peering.NewRing(0, nil, names...),
		replicas: max(replicas, 1),
		peers:    slices.Clone(peers),
	}
}

// Ring returns the ring.
func (m *Membership) Ring() *peering.Ring { return m.ring }

// Replicas is how many members hold each path.
func (m *Membership) Replicas() int { return m.replicas }

// Holders returns the nodes that hold path: its owner, then its replicas.
func (m *Membership) Holders(path string) []string {
	if m.replicas <= 1 {
		return []string{m.ring.Owner(path)}
	}
	return m.ring.Owners(path, m.replicas)
}

// Owner returns the node that owns path.
func (m *Membership) Owner(path string) string { return m.ring.Owner(path) }

// Holds reports whether node holds path: as its owner or a replica.
func (m *Membership) Holds(node, path string) bool {
	if m.replicas <= 1 {
		return m.ring.Owner(path) == node
	}
	return slices.Contains(m.ring.Owners(path, m.replicas), node)
}

// Owns reports whether this node holds path.
func (m *Membership) Owns(path string) bool { return m.Holds(m.self, path) }

// Epoch names what decides ownership: the members and the replicas. Two
// nodes with the same epoch agree on who holds every path.
func (m *Membership) Epoch() uint64 {
	return m.ring.Epoch()*31 + uint64(m.replicas)
}

// IsMember reports whether node is in the ring.
func (m *Membership) IsMember(node string) bool { return slices.Contains(m.ring.Nodes(), node) }

// Others is the membership the other members would have without this node:
// who held this node's share before it joined.
func (m *Membership) Others() *Membership {
	m.othersOnce.Do(func() { m.others = NewMembership(m.self, true, m.peers, m.replicas) })
	return m.others
}

// Peers lists the peers to dial.
func (m *Membership) Peers() []peering.Peer { return slices.Clone(m.peers) }
