package shardcache

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/shard"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves the node's state on Caddy's admin endpoint:
//
//	GET /shardcache/status           the node, its peers, and per group: priming
//	                                 progress, memory, hot cache and tier counters
//	GET /shardcache/where?path=/x    who owns /x, its version, where it is held
//	POST /shardcache/purge           {"path": "/x"} or {"prefix": "/img/"}: drops hot
//	                                 copies cluster-wide and re-reads the files on
//	                                 their owners
//	GET /shardcache/                 the status as an HTML page (statuspage.go)
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.shardcache",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/shardcache/status", Handler: caddy.AdminHandlerFunc(handleStatus)},
		{Pattern: "/shardcache/where", Handler: caddy.AdminHandlerFunc(handleWhere)},
		{Pattern: "/shardcache/purge", Handler: caddy.AdminHandlerFunc(handlePurge)},
		{Pattern: "/shardcache/", Handler: caddy.AdminHandlerFunc(handleStatusPage)}, // statuspage.go
	}
}

// Status is the body of GET /shardcache/status.
type Status struct {
	Node    string                 `json:"node,omitempty"`
	SAN     string                 `json:"san,omitempty"`
	Ready   bool                   `json:"ready"`
	Epoch   uint64                 `json:"ring_epoch,omitempty"`
	Ring    []string               `json:"ring,omitempty"`
	Members []cluster.MemberStatus `json:"members,omitempty"`
	Groups  []GroupStatus          `json:"groups"`
	// Spread lists, on a director, the paths spread over more members
	// than their owner (director.go).
	Spread []SpreadStatus `json:"spread,omitempty"`
	// Push is, on a content node, what it carries for directors.
	Push *cluster.PushStats `json:"push,omitempty"`
	// TOCBytesSent: what syncing its peers' tables of content has cost
	// this node since it started (cluster.Status).
	TOCBytesSent int64 `json:"toc_bytes_sent,omitempty"`
	// Arenas is the memory outside the Go heap that holds the bodies
	// (shard.ArenaStats); absent where bodies live in the Go heap.
	Arenas *ArenaStatus `json:"arenas,omitempty"`
}

// ArenaStatus is shard.ArenaStats in the status's JSON.
type ArenaStatus struct {
	Arenas    int64 `json:"arenas"`
	Mapped    int64 `json:"mapped_bytes"`
	Used      int64 `json:"used_bytes"`
	Retired   int64 `json:"retired_bytes"`
	Free      int64 `json:"free_bytes"`
	FreeRuns  int64 `json:"free_runs"`
	Readers   int64 `json:"readers"`
	Reclaimed int64 `json:"reclaimed_bytes_total"`
	Sendfiles int64 `json:"sendfiles_total"`
}

// GroupStatus is one content tree on this node.
type GroupStatus struct {
	Group       string         `json:"group"`
	Root        string         `json:"root"`
	Ready       bool           `json:"ready"`
	Progress    shard.Progress `json:"progress"`
	PrimedItems int64          `json:"primed_items"`
	// Items this node holds now (its share; priming's count does not
	// follow later ring changes).
	Items       int64 `json:"items"`
	PrimedBytes int64 `json:"primed_bytes"`
	// Bytes of this node's own items held in memory now.
	Memory      int64                        `json:"memory"`
	TOCItems    int                          `json:"toc_items"`
	Hot         *shard.HotStats              `json:"hot,omitempty"`
	Tiers       map[string]cluster.TierCount `json:"tiers"`
	PeerErrors  int64                        `json:"peer_errors"`
	ServedPeers int64                        `json:"served_to_peers"`
	ServedBytes int64                        `json:"served_bytes_to_peers"`
	// Lookups of paths other nodes hold answered from this node's storage
	// because no holder's table of content was trusted.
	StorageNoTable int64 `json:"storage_no_table,omitempty"`
	// Table-of-content entries refused from peers.
	RefusedEntries int64 `json:"refused_toc_entries,omitempty"`
	// Items (and bytes) this node took from other nodes' memory instead
	// of storage when it joined or the ring changed.
	HandoffItems int64 `json:"handoff_items,omitempty"`
	HandoffBytes int64 `json:"handoff_bytes,omitempty"`
	// Files read from storage other than by priming (on-demand lookups,
	// files not held, reloads, share taken at a ring change).
	StorageReads int64 `json:"storage_reads"`
}

func handleStatus(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	return writeJSON(w, currentStatus())
}

func currentStatus() Status {
	var st Status
	st.Ready = true
	if a := shard.Arenas(); a.Enabled {
		st.Arenas = &ArenaStatus{Arenas: a.Arenas, Mapped: a.Mapped, Used: a.Used, Retired: a.Retired, Free: a.Free,
			FreeRuns: a.FreeRuns, Readers: a.Readers, Reclaimed: a.Reclaimed, Sendfiles: a.Sendfiles}
	}
	sources, c := reg.get()
	if c != nil {
		cs := c.Status()
		st.Node, st.SAN, st.Epoch, st.Ring, st.Members = cs.Node, cs.SAN, cs.Epoch, cs.Ring, cs.Members
		st.TOCBytesSent = cs.TOCBytesSent
		if c.Observer() {
			st.Spread = spreadStatus()
		} else {
			ps := c.PushStats()
			st.Push = &ps
		}
	}
	for _, src := range sources {
		s := src.store
		stats := s.Stats()
		snap := src.stats.Snapshot()
		gs := GroupStatus{
			Group:        src.name,
			Root:         s.Root(),
			Ready:        s.Ready(),
			Progress:     s.Progress(),
			PrimedItems:  stats.PrimedItems,
			Items:        stats.Items,
			Memory:       stats.ResidentBytes,
			PrimedBytes:  stats.PrimedBytes,
			HandoffItems: stats.HandoffItems,
			HandoffBytes: stats.HandoffBytes,
			StorageReads: stats.StorageReads,
			Tiers:        map[string]cluster.TierCount{"local": snap.Tiers["local"], "storage": snap.Tiers["storage"]},
		}
		st.Ready = st.Ready && gs.Ready
		if g := src.grp; g != nil {
			gs.TOCItems = g.TOCLen()
			if h := g.Hot(); h != nil {
				hs := h.Stats()
				gs.Hot = &hs
			}
			gs.Tiers["hot"] = snap.Tiers["hot"]
			gs.Tiers["peer"] = snap.Tiers["peer"]
			gs.PeerErrors = snap.PeerErrorTotal()
			gs.ServedPeers = snap.Served
			gs.ServedBytes = snap.ServedBytes
			gs.StorageNoTable = snap.NoTable
			gs.RefusedEntries = snap.RefusedEntries
		}
		st.Groups = append(st.Groups, gs)
	}
	sort.Slice(st.Groups, func(i, j int) bool { return st.Groups[i].Root < st.Groups[j].Root })
	return st
}

// Where is one element of the body of GET /shardcache/where.
type Where = cluster.Where

// WhereAnswer is one element of the body of GET /shardcache/where: where
// the path is in one group (Where) and what spreading does with it.
type WhereAnswer struct {
	Where
	// Pushed: this content node carries the path for a director (its
	// copy, if held, is Resident).
	Pushed bool `json:"pushed,omitempty"`
	// Spread is, on a director, the path's spread set: the members that
	// hold pushed copies and serve it.
	Spread *SpreadStatus `json:"spread,omitempty"`
}

func handleWhere(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	p := r.URL.Query().Get("path")
	if p == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("missing ?path=")}
	}
	_, c := reg.get()
	if c == nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("not a cluster node")}
	}
	p = cleanPath(p)
	var out []WhereAnswer
	if c.Observer() {
		if ss := spreadWhere(p); ss != nil {
			out = append(out, WhereAnswer{Where: Where{Path: p, Owner: c.Members().Owner(p)}, Spread: ss})
		}
	}
	_, pushed := c.Carries(p)
	for _, wh := range c.Where(p) {
		out = append(out, WhereAnswer{Where: wh, Pushed: pushed && !wh.Local})
	}
	return writeJSON(w, out)
}

// PurgeRequest is the body of POST /shardcache/purge: a path, or a prefix
// (every path starting with it), optionally in one group only.
type PurgeRequest struct {
	Path   string `json:"path,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Group  string `json:"group,omitempty"`
}

// PurgeResult says what a purge did on the node that received it; the
// other nodes do the same on their own.
type PurgeResult struct {
	HotDropped int  `json:"hot_dropped"`
	Refreshed  int  `json:"refreshed"`
	Broadcast  bool `json:"broadcast"`
}

func handlePurge(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed: use POST")}
	}
	var req PurgeRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("decoding purge request: %v", err)}
	}
	p := peering.Purge{Group: req.Group}
	switch {
	case req.Path != "" && req.Prefix != "":
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("give path or prefix, not both")}
	case req.Path != "":
		p.Path = cleanPath(req.Path)
	case req.Prefix != "":
		if !strings.HasPrefix(req.Prefix, "/") {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("prefix %q: must start with /", req.Prefix)}
		}
		p.Path, p.Prefix = req.Prefix, true
	default:
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf(`want {"path": "/x"} or {"prefix": "/dir/"}`)}
	}
	sources, c := reg.get()
	var res PurgeResult
	if c != nil {
		res.HotDropped, res.Refreshed, res.Broadcast = c.Purge(p)
	} else {
		for _, src := range sources {
			if p.Group == "" || p.Group == src.name {
				res.Refreshed += src.store.Refresh(p.Path, p.Prefix)
			}
		}
	}
	return writeJSON(w, res)
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Interface guards
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
)
