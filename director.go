package shardcache

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/shardcache/caddy-shardcache/cluster"
	"github.com/shardcache/caddy-shardcache/peering"
	"github.com/shardcache/caddy-shardcache/spread"
)

func init() {
	caddy.RegisterModule(Director{})
}

// Director is a reverse_proxy load-balancing policy that sends each request
// to the content node that owns the requested path, so that the node that
// receives it serves it from its own memory.
//
// The front Caddy that runs it joins the cluster as an observer (the
// shardcache global option with `observer`): it holds no content and is in
// no ring, but it learns the ring, each member's readiness and the LAN
// address each member advertises (`lan` on the content nodes). Upstreams
// are matched to members by that address.
//
// If the owner is down or not yet primed, the request goes to the next
// member on the ring (the node that would read the owner's files from its
// own storage), then to any available upstream.
//
// A path ending in `/` is routed by its index file (`index.html`), which is
// what the node will serve. The director routes by the request path as it
// receives it: rewrite or strip prefixes on the content nodes, not before
// the proxy.
//
// Hot paths are spread (unless `spread off`): the director estimates each
// path's share of its requests, and a path whose share is more than a
// 64th of a member's fair share (1/N of the traffic for N members) is
// served by its owner and the next members on the ring, as many as its
// share needs; each request goes to the one of two of them, picked at
// random, with fewer requests in flight. A new member of a path's set is
// sent requests for it only once it has said it holds the path's bytes
// (the owner's, fetched over the SAN when the director asked), so its first
// request is a hot hit. A path that cools down returns to its owner alone;
// paths that are not hot are routed exactly as without spreading.
type Director struct {
	// Index file name used to route directory paths. Default: `index.html`.
	Index string `json:"index,omitempty"`

	// NoSpread turns spreading of hot paths off: every request goes to
	// its path's owner.
	NoSpread bool `json:"no_spread,omitempty"`

	c  *clusterRef
	sp *spreader
}

// CaddyModule returns the Caddy module information.
func (Director) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.shardcache",
		New: func() caddy.Module { return new(Director) },
	}
}

// Provision finds the cluster this Caddy is a member (or observer) of.
func (d *Director) Provision(ctx caddy.Context) error {
	if d.Index == "" {
		d.Index = "index.html"
	}
	appVal, err := ctx.App("shardcache")
	if err != nil {
		return fmt.Errorf("loading shardcache app: %v", err)
	}
	d.c = appVal.(*App).cluster
	if d.c == nil {
		return errors.New("lb_policy shardcache needs the shardcache global option: `node <name> <san_address>`, the content nodes as `peer`s, `secret` and `observer`")
	}
	if !d.NoSpread {
		d.sp = newSpreader(d.c.Cluster, spread.Config{})
	}
	return nil
}

// Cleanup stops spreading for this config.
func (d *Director) Cleanup() error {
	if d.sp != nil {
		d.sp.stop()
	}
	return nil
}

// Select returns the upstream of the node that owns the request's path or,
// for a spread path, of one of the members that serve it.
func (d *Director) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	key := cleanPath(r.URL.Path)
	if strings.HasSuffix(r.URL.Path, "/") {
		key = strings.TrimSuffix(key, "/") + "/" + d.Index
	}
	if d.sp != nil {
		if up := d.spreadPick(pool, key); up != nil {
			return up
		}
	}
	if up := d.pick(pool, key); up != nil {
		if d.sp != nil {
			d.sp.recent(up.Dial).Add(1)
		}
		return up
	}
	// No member is up and ready: any available upstream.
	for _, up := range pool {
		if up.Available() {
			return up
		}
	}
	return nil
}

// pick walks the ring from key's owner and returns the first member that
// is up, primed and reachable through an available upstream.
func (d *Director) pick(pool reverseproxy.UpstreamPool, key string) *reverseproxy.Upstream {
	n := d.c.Node()
	if n == nil {
		return nil
	}
	peers := n.Peers()
	ring := d.c.Members().Ring()
	for _, name := range ring.Owners(key, ring.Len()) {
		if up := upstreamOf(pool, peers, name); up != nil {
			return up
		}
	}
	return nil
}

// spreadPick counts the request for key and, if key is spread over more
// than one member that holds its bytes, returns the upstream of one of
// them: of two picked at random, the one with fewer requests in flight
// (then the one sent fewer requests lately). nil: route as usual.
func (d *Director) spreadPick(pool reverseproxy.UpstreamPool, key string) *reverseproxy.Upstream {
	ring := d.c.Members().Ring()
	p := d.sp.t.Observe(key, ring.Len())
	if p == nil {
		return nil
	}
	route := p.Route()
	if len(route) < 2 {
		return nil
	}
	n := d.c.Node()
	if n == nil {
		return nil
	}
	peers := n.Peers()
	a, b := spread.Two(len(route), rand.Uint64())
	ua, ub := upstreamOf(pool, peers, route[a]), upstreamOf(pool, peers, route[b])
	up := ua
	switch {
	case ua == nil && ub == nil:
		return nil
	case ua == nil:
		up = ub
	case ub != nil:
		ra, rb := d.sp.recent(ua.Dial), d.sp.recent(ub.Dial)
		if !spread.Prefer(int64(ua.NumRequests()), int64(ub.NumRequests()), ra.Load(), rb.Load()) {
			up = ub
		}
	}
	d.sp.recent(up.Dial).Add(1)
	p.Requests.Add(1)
	spreadRequests.Add(1)
	return up
}

// upstreamOf returns the available upstream of the member named name, if
// it is up and ready.
func upstreamOf(pool reverseproxy.UpstreamPool, peers []peering.PeerState, name string) *reverseproxy.Upstream {
	for i := range peers {
		p := &peers[i]
		if p.Name != name || !p.Up || !p.Ready || p.Lan == "" {
			continue
		}
		for _, up := range pool {
			if up.Dial == p.Lan && up.Available() {
				return up
			}
		}
	}
	return nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy shardcache [<index_file>] {
//		index <index_file>
//		spread on|off
//	}
func (d *Director) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next() // consume policy name
	if disp.NextArg() {
		d.Index = disp.Val()
	}
	if disp.NextArg() {
		return disp.Errf("lb_policy shardcache: unexpected argument '%s'", disp.Val())
	}
	for disp.NextBlock(0) {
		switch disp.Val() {
		case "index":
			if !disp.NextArg() {
				return disp.ArgErr()
			}
			d.Index = disp.Val()
		case "spread":
			if !disp.NextArg() {
				return disp.ArgErr()
			}
			switch disp.Val() {
			case "on":
				d.NoSpread = false
			case "off":
				d.NoSpread = true
			default:
				return disp.Errf("lb_policy shardcache: spread on|off, not '%s'", disp.Val())
			}
		default:
			return disp.Errf("lb_policy shardcache: unknown option '%s'", disp.Val())
		}
		if disp.NextArg() {
			return disp.Errf("lb_policy shardcache: unexpected argument '%s'", disp.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Director)(nil)
	_ caddy.CleanerUpper    = (*Director)(nil)
	_ reverseproxy.Selector = (*Director)(nil)
	_ caddyfile.Unmarshaler = (*Director)(nil)
)

// spreadRequests counts the requests the directors of this process routed
// through a spread path's set (metrics.go).
var spreadRequests atomic.Int64

// spreaders are the live directors' spreading, for the status and the
// metrics.
var spreaders struct {
	sync.Mutex
	m map[*spreader]struct{}
}

// spreader is a director's spreading: the popularity tracker, and what it
// asked the members (to carry which path) and what they answered (HELD).
type spreader struct {
	c          *cluster.Cluster
	t          *spread.Tracker
	wake       chan struct{}
	done       chan struct{}
	stopOnce   sync.Once
	removeHeld func()

	// counts is the requests this director sent to each upstream (by
	// dial address) lately, spread or not (halved every second): the
	// tie-breaker of Prefer. Copy on write.
	counts   atomic.Pointer[map[string]*atomic.Int64]
	countsMu sync.Mutex

	mu    sync.Mutex
	paths map[string]*spreadState
}

// spreadState is what the director asked the members about one path.
type spreadState struct {
	asked map[string]time.Time // member → last SPREAD sent
	held  map[string]string    // member → version it said it holds
}

func newSpreader(c *cluster.Cluster, cfg spread.Config) *spreader {
	s := &spreader{c: c, wake: make(chan struct{}, 1), done: make(chan struct{}), paths: map[string]*spreadState{}}
	cfg.OnChange = s.poke
	s.t = spread.New(cfg)
	empty := map[string]*atomic.Int64{}
	s.counts.Store(&empty)
	s.removeHeld = c.OnHeld(s.held)
	spreaders.Lock()
	if spreaders.m == nil {
		spreaders.m = map[*spreader]struct{}{}
	}
	spreaders.m[s] = struct{}{}
	spreaders.Unlock()
	go s.run()
	return s
}

func (s *spreader) stop() {
	s.stopOnce.Do(func() {
		close(s.done)
		s.removeHeld()
		spreaders.Lock()
		delete(spreaders.m, s)
		spreaders.Unlock()
	})
}

func (s *spreader) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// recent returns the counter of requests sent to the upstream dialled at
// name lately.
func (s *spreader) recent(name string) *atomic.Int64 {
	if c := (*s.counts.Load())[name]; c != nil {
		return c
	}
	s.countsMu.Lock()
	defer s.countsMu.Unlock()
	old := *s.counts.Load()
	if c := old[name]; c != nil {
		return c
	}
	m := make(map[string]*atomic.Int64, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	c := new(atomic.Int64)
	m[name] = c
	s.counts.Store(&m)
	return c
}

// held receives a member's HELD: it may be sent the path's requests (or
// no longer).
func (s *spreader) held(from string, msg peering.Spread) {
	s.mu.Lock()
	st := s.paths[msg.Path]
	if st == nil || st.asked[from].IsZero() {
		s.mu.Unlock()
		return // not ours, or no longer asked
	}
	if msg.Carry {
		st.held[from] = msg.Version
	} else {
		delete(st.held, from)
	}
	s.mu.Unlock()
	s.poke()
}

// run updates the routes of the spread paths when the tracker or a member
// says something changed, and at least every 250 ms.
func (s *spreader) run() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	lastDecay := time.Now()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		case <-s.wake:
		}
		s.update()
		if time.Since(lastDecay) >= time.Second {
			lastDecay = time.Now()
			for _, c := range *s.counts.Load() {
				c.Store(c.Load() / 2)
			}
		}
	}
}

// update gives every spread path its set (the first members of its ring
// order that are up and ready, as many as its width), asks the set's new
// members to carry it (and repeats that every cluster.CarryRefresh), tells
// those that left the set to stop, and routes the path to its owner and
// the members that said they hold it.
func (s *spreader) update() {
	n := s.c.Node()
	if n == nil {
		return
	}
	ready := map[string]bool{}
	for _, p := range n.Peers() {
		if p.Up && p.Ready && p.Lan != "" {
			ready[p.Name] = true
		}
	}
	ring := s.c.Members().Ring()
	now := time.Now()
	type msg struct {
		to, path string
		carry    bool
	}
	var out []msg
	live := map[string]bool{}
	for _, p := range s.t.Paths() {
		live[p.Name] = true
		var set []string
		for _, m := range ring.Owners(p.Name, ring.Len()) {
			if ready[m] {
				set = append(set, m)
				if len(set) == p.Width() {
					break
				}
			}
		}
		s.mu.Lock()
		st := s.paths[p.Name]
		if st == nil {
			st = &spreadState{asked: map[string]time.Time{}, held: map[string]string{}}
			s.paths[p.Name] = st
		}
		var others []string
		if len(set) > 1 {
			others = set[1:]
		}
		for _, m := range others {
			if at, ok := st.asked[m]; !ok || now.Sub(at) >= cluster.CarryRefresh {
				st.asked[m] = now
				out = append(out, msg{m, p.Name, true})
			}
		}
		for m := range st.asked {
			if !slices.Contains(others, m) {
				delete(st.asked, m)
				delete(st.held, m)
				out = append(out, msg{m, p.Name, false})
			}
		}
		var route []string
		if len(set) > 0 {
			route = append(route, set[0])
			for _, m := range others {
				if st.held[m] != "" {
					route = append(route, m)
				}
			}
		}
		s.mu.Unlock()
		if !slices.Equal(route, p.Route()) {
			p.SetRoute(route)
		}
	}
	s.mu.Lock()
	for name, st := range s.paths {
		if live[name] {
			continue
		}
		for m := range st.asked {
			out = append(out, msg{m, name, false})
		}
		delete(s.paths, name)
	}
	s.mu.Unlock()
	for _, m := range out {
		s.c.SendSpread(m.to, m.path, m.carry)
	}
}

// SpreadStatus is one spread path on a director (GET /shardcache/status).
type SpreadStatus struct {
	Path string `json:"path"`
	// Share of the director's requests, at the last estimate.
	Share float64 `json:"share"`
	// Width: how many members the path should be served by.
	Width int `json:"width"`
	// Members serving it now: its owner, then those that said they hold
	// its bytes.
	Members []string `json:"members"`
	// Asked: the members asked to carry it.
	Asked    []string `json:"asked,omitempty"`
	Requests int64    `json:"requests"`
}

// spreadStatus lists the spread paths of every live director, the largest
// share first.
func spreadStatus() []SpreadStatus {
	spreaders.Lock()
	list := make([]*spreader, 0, len(spreaders.m))
	for s := range spreaders.m {
		list = append(list, s)
	}
	spreaders.Unlock()
	var out []SpreadStatus
	for _, s := range list {
		for _, p := range s.t.Paths() {
			ss := SpreadStatus{Path: p.Name, Share: p.Share(), Width: p.Width(), Members: slices.Clone(p.Route()), Requests: p.Requests.Load()}
			s.mu.Lock()
			if st := s.paths[p.Name]; st != nil {
				for m := range st.asked {
					ss.Asked = append(ss.Asked, m)
				}
			}
			s.mu.Unlock()
			slices.Sort(ss.Asked)
			out = append(out, ss)
		}
	}
	slices.SortStableFunc(out, func(a, b SpreadStatus) int { return cmp.Compare(b.Share, a.Share) })
	return out
}

// spreadWhere returns the spread state of path on this process's
// directors, if it is spread.
func spreadWhere(path string) *SpreadStatus {
	for _, ss := range spreadStatus() {
		if ss.Path == path {
			return &ss
		}
	}
	return nil
}
