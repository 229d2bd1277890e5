package shardcache

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"

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
	}
}

// Status is the body of GET /shardcache/status.
type Status struct {
	Node    string        `json:"node,omitempty"`
	SAN     string        `json:"san,omitempty"`
	Ready   bool          `json:"ready"`
	Epoch   uint64        `json:"ring_epoch,omitempty"`
	Members []MemberState `json:"members,omitempty"`
	Groups  []GroupStatus `json:"groups"`
}

// MemberState is one peer as this node sees it.
type MemberState struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Up      bool   `json:"up"`
	Ready   bool   `json:"ready"`
}

// GroupStatus is one content tree on this node.
type GroupStatus struct {
	Group       string               `json:"group"`
	Root        string               `json:"root"`
	Ready       bool                 `json:"ready"`
	Progress    shard.Progress       `json:"progress"`
	PrimedItems int64                `json:"primed_items"`
	PrimedBytes int64                `json:"primed_bytes"`
	Memory      int64                `json:"memory"`
	TOCItems    int                  `json:"toc_items"`
	Hot         *shard.HotStats      `json:"hot,omitempty"`
	Tiers       map[string]TierCount `json:"tiers"`
	PeerErrors  int64                `json:"peer_errors"`
	ServedPeers int64                `json:"served_to_peers"`
	ServedBytes int64                `json:"served_bytes_to_peers"`
}

// TierCount counts the requests (with bytes) one tier answered.
type TierCount struct {
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
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
	sources, c := reg.get()
	if c != nil {
		st.Node = c.cfg.name
		st.Epoch = c.ring().Epoch()
		if n := c.node.Load(); n != nil {
			st.SAN = n.Addr().String()
			for _, p := range n.Peers() {
				st.Members = append(st.Members, MemberState{Name: p.Name, Address: p.Addr, Up: p.Up, Ready: p.Ready})
			}
		}
	}
	for _, src := range sources {
		s := src.store
		stats := s.Stats()
		gs := GroupStatus{
			Group:       src.name,
			Root:        s.Root(),
			Ready:       s.Ready(),
			Progress:    s.Progress(),
			PrimedItems: stats.PrimedItems,
			PrimedBytes: stats.PrimedBytes,
			Tiers:       map[string]TierCount{},
		}
		st.Ready = st.Ready && gs.Ready
		t := src.stats
		gs.Tiers["local"] = TierCount{t.local.Load(), t.localBytes.Load()}
		gs.Tiers["storage"] = TierCount{t.storage.Load(), t.storageBytes.Load()}
		if g := src.grp; g != nil {
			g.mu.RLock()
			gs.TOCItems = len(g.toc)
			g.mu.RUnlock()
			if h := g.hot.Load(); h != nil {
				hs := h.Stats()
				gs.Hot = &hs
			}
			gs.Tiers["hot"] = TierCount{t.hot.Load(), t.hotBytes.Load()}
			gs.Tiers["peer"] = TierCount{t.peer.Load(), t.peerBytes.Load()}
			gs.PeerErrors = t.peerErrors.Load()
			gs.ServedPeers = t.served.Load()
			gs.ServedBytes = t.servedBytes.Load()
		}
		st.Groups = append(st.Groups, gs)
	}
	sort.Slice(st.Groups, func(i, j int) bool { return st.Groups[i].Root < st.Groups[j].Root })
	return st
}

// Where is the body of GET /shardcache/where.
type Where struct {
	Path     string `json:"path"`
	Group    string `json:"group,omitempty"`
	Owner    string `json:"owner,omitempty"`
	Local    bool   `json:"local"` // this node owns it
	Found    bool   `json:"found"` // the path names a file
	Version  string `json:"version,omitempty"`
	Size     int64  `json:"size,omitempty"`
	Resident bool   `json:"resident"` // its bytes are in this node's memory (primed or hot)
	// For a large file another node owns: how many of its chunks (the
	// identity bytes) are hot here, of how many.
	HotChunks int `json:"hot_chunks,omitempty"`
	Chunks    int `json:"chunks,omitempty"`
}

func handleWhere(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	p := r.URL.Query().Get("path")
	if p == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("missing ?path=")}
	}
	p = cleanPath(p)
	_, c := reg.get()
	var out []Where
	if c == nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("not a cluster node")}
	}
	owner := c.ring().Owner(p)
	c.mu.RLock()
	groups := make([]*group, 0, len(c.groups))
	for _, g := range c.groups {
		groups = append(groups, g)
	}
	c.mu.RUnlock()
	for _, g := range groups {
		wh := Where{Path: p, Group: g.name, Owner: owner, Local: owner == c.cfg.name}
		if wh.Local {
			if s := g.store.Load(); s != nil {
				if it, isDir, err := s.Lookup(p); err == nil && !isDir {
					wh.Found, wh.Version, wh.Size, wh.Resident = true, it.Version, it.Size, it.Resident()
				}
			}
		} else if ri, ok := g.lookup(p); ok {
			wh.Found, wh.Version, wh.Size = true, ri.it.Version, ri.it.Size
			if h := g.hot.Load(); h != nil {
				if ri.it.Size > shard.ChunkSize {
					wh.Chunks = shard.NumChunks(ri.it.Size)
					for i := range wh.Chunks {
						if h.Contains(chunkKey(p, "", i), ri.it.Version) {
							wh.HotChunks++
						}
					}
					wh.Resident = wh.HotChunks == wh.Chunks
				} else {
					wh.Resident = h.Contains(hotKey(p, ""), ri.it.Version)
				}
			}
		}
		out = append(out, wh)
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
		res.HotDropped, res.Refreshed = c.purgeLocal(p)
		if n := c.node.Load(); n != nil {
			n.Purge(p)
			res.Broadcast = true
		}
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
