package shardcache

import (
	"github.com/shardcache/caddy-shardcache/peering"
)

// membership is one config's view of the cluster: the ring over the
// members' names and how many of them hold each file. Immutable; a reload
// that changes the members or replicas swaps in a new one.
type membership struct {
	self     string
	ring     *peering.Ring
	replicas int
	peers    []Member
}

func newMembership(self string, observer bool, peers []Member, replicas int) *membership {
	var names []string
	if !observer {
		names = append(names, self) // an observer is in no ring
	}
	for _, p := range peers {
		names = append(names, p.Name)
	}
	return &membership{
		self:     self,
		ring:     peering.NewRing(0, nil, names...),
		replicas: max(replicas, 1),
		peers:    peers,
	}
}

// holders returns the nodes that hold path: its owner, then its replicas.
func (m *membership) holders(path string) []string {
	if m.replicas <= 1 {
		return []string{m.ring.Owner(path)}
	}
	return m.ring.Owners(path, m.replicas)
}

// owns reports whether this node holds path: as its owner or a replica.
func (m *membership) owns(path string) bool {
	if m.replicas <= 1 {
		return m.ring.Owner(path) == m.self
	}
	for _, h := range m.ring.Owners(path, m.replicas) {
		if h == m.self {
			return true
		}
	}
	return false
}

// epoch names what decides ownership: the members and the replicas.
func (m *membership) epoch() uint64 {
	return m.ring.Epoch()*31 + uint64(m.replicas)
}

// peeringPeers lists the peers for the peering package.
func (m *membership) peeringPeers() []peering.Peer {
	peers := make([]peering.Peer, len(m.peers))
	for i, p := range m.peers {
		peers[i] = peering.Peer{Name: p.Name, Addr: p.Address}
	}
	return peers
}
