package cluster

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/shardcache/caddy-shardcache/peering"
)

// Tier says where the bytes of a response came from.
type Tier uint8

// Tiers, in the order a request tries them.
const (
	// TierMeta: no bytes were needed (HEAD, 304, 412, 416): the answer
	// came from metadata, this node's or a peer's table of content. Counted
	// with the local tier.
	TierMeta Tier = iota
	// TierLocal: this node's own memory (its primed share).
	TierLocal
	// TierHot: this node's copy of another node's popular item.
	TierHot
	// TierPeer: fetched from the item's holder over the SAN.
	TierPeer
	// TierStorage: read from this node's own view of storage.
	TierStorage
)

// String names the tier as the status and metrics do.
func (t Tier) String() string {
	switch t {
	case TierMeta, TierLocal:
		return "local"
	case TierHot:
		return "hot"
	case TierPeer:
		return "peer"
	case TierStorage:
		return "storage"
	}
	return "unknown"
}

// Tiers are the tiers' names as counted, in order.
var Tiers = [...]string{"local", "hot", "peer", "storage"}

// PeerErrorKinds are the kinds of failed peer fetches, as counted.
var PeerErrorKinds = [...]string{"down", "timeout", "not_found", "other"}

// Stats count the requests of one group (or, on a single node, one store)
// and bytes by the tier that served them. Safe for concurrent use.
type Stats struct {
	requests, bytes [len(Tiers)]atomic.Int64
	peerErrors      [len(PeerErrorKinds)]atomic.Int64
	served, servedB atomic.Int64 // fetches answered for peers
	noTable         atomic.Int64 // lookups answered from storage: no trusted table of content
	refusedEntries  atomic.Int64 // table-of-content entries refused from peers
	// items newly held after a ring change that came from a previous
	// holder's memory, and their bytes
	handoffItems, handoffBytes atomic.Int64
}

func tierIndex(t Tier) int {
	if t == TierMeta {
		return 0
	}
	return int(t) - 1
}

// Count counts one request answered by tier t with n body bytes.
func (s *Stats) Count(t Tier, n int64) {
	i := tierIndex(t)
	s.requests[i].Add(1)
	s.bytes[i].Add(n)
}

// AddBytes counts n more body bytes for tier t (a chunked body's later
// chunks), without counting a request.
func (s *Stats) AddBytes(t Tier, n int64) { s.bytes[tierIndex(t)].Add(n) }

// TierCount is one tier's counters.
type TierCount struct {
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
}

// Snapshot is a copy of Stats' counters.
type Snapshot struct {
	Tiers       map[string]TierCount
	PeerErrors  map[string]int64
	Served      int64
	ServedBytes int64
	// NoTable counts lookups of paths other nodes hold that were answered
	// from this node's storage because no holder's table of content was
	// trusted (holder down, priming, in another ring, or without the
	// group).
	NoTable int64
	// RefusedEntries counts table-of-content entries refused from peers
	// (paths the sender does not hold, or over the per-peer cap).
	RefusedEntries int64
	// HandoffItems and HandoffBytes count the items (and their bytes)
	// this node newly held after ring changes that came from a previous
	// holder's memory rather than from storage.
	HandoffItems, HandoffBytes int64
}

// Snapshot reads the counters.
func (s *Stats) Snapshot() Snapshot {
	out := Snapshot{Tiers: map[string]TierCount{}, PeerErrors: map[string]int64{}}
	for i, name := range Tiers {
		out.Tiers[name] = TierCount{s.requests[i].Load(), s.bytes[i].Load()}
	}
	for i, k := range PeerErrorKinds {
		out.PeerErrors[k] = s.peerErrors[i].Load()
	}
	out.Served, out.ServedBytes = s.served.Load(), s.servedB.Load()
	out.NoTable, out.RefusedEntries = s.noTable.Load(), s.refusedEntries.Load()
	out.HandoffItems, out.HandoffBytes = s.handoffItems.Load(), s.handoffBytes.Load()
	return out
}

// PeerErrorTotal is the number of failed peer fetches.
func (s Snapshot) PeerErrorTotal() int64 {
	var n int64
	for _, v := range s.PeerErrors {
		n += v
	}
	return n
}

// peerErrorKind maps a peer fetch error to one of PeerErrorKinds.
func peerErrorKind(err error) int {
	switch {
	case errors.Is(err, peering.ErrPeerDown):
		return 0
	case errors.Is(err, peering.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return 1
	case errors.Is(err, peering.ErrNotFound):
		return 2
	default:
		return 3
	}
}

func (s *Stats) countPeerError(err error) { s.peerErrors[peerErrorKind(err)].Add(1) }

// CountPeerError counts a failed peer fetch by its kind.
func (s *Stats) CountPeerError(err error) { s.countPeerError(err) }
