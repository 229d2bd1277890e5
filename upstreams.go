package shardcache

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/shardcache/caddy-shardcache/peering"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// Upstreams is a reverse_proxy upstream source that lists the content
// nodes of the cluster this Caddy observes, so that the content
// director's config names no node:
//
//	reverse_proxy {
//		dynamic shardcache
//		lb_policy shardcache
//	}
//
// It gives one upstream per ring member that has advertised the address
// of its HTTP site (`lan` in the content nodes' shardcache global
// option), dialed at that address, sorted by member name. Members that
// are down or not yet primed are listed too: `lb_policy shardcache` skips
// them, and passive health checks apply to them as to any upstream. A
// member that has not connected since this Caddy started, and observers,
// which advertise no address, are not listed; nor is this Caddy itself.
//
// The list is read from the peering layer's table in memory, never over
// the network, so it follows members as they come and go at no cost to
// the request. While no member is known, it is an error, and
// reverse_proxy falls back to its static upstreams, if any.
//
// The shardcache global option must name this Caddy (`node`); a
// director also sets `observer`.
type Upstreams struct {
	c *clusterRef

	// last is the list built from the last peer table seen, reused while
	// the table says the same.
	last *atomic.Pointer[upstreamList]
}

// upstreamList is one peer table's upstreams: the (name, lan) pairs in
// the table's order, to tell whether a new table says the same, and the
// dial addresses sorted by name.
type upstreamList struct {
	ring  *peering.Ring
	seen  []memberLan
	dials []string
}

type memberLan struct{ name, lan string }

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.shardcache",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// Provision finds the cluster this Caddy is a member (or observer) of.
func (u *Upstreams) Provision(ctx caddy.Context) error {
	appVal, err := ctx.App("shardcache")
	if err != nil {
		return fmt.Errorf("loading shardcache app: %v", err)
	}
	u.c = appVal.(*App).cluster
	u.last = new(atomic.Pointer[upstreamList])
	if u.c == nil {
		return errors.New("dynamic shardcache needs the shardcache global option: `node <name> <san_address>`, the content nodes as `peer`s, `secret` and `observer`")
	}
	return nil
}

// GetUpstreams returns the members' sites. The values are new on each
// call, as reverse_proxy fills them in for the request; their health
// (failures, requests in flight) is kept by reverse_proxy per address, so
// it carries over from one call to the next.
func (u *Upstreams) GetUpstreams(*http.Request) ([]*reverseproxy.Upstream, error) {
	n := u.c.Node()
	if n == nil {
		return nil, errors.New("dynamic shardcache: the cluster node is not running")
	}
	l := u.list(u.c.Members().Ring(), n.Peers())
	if len(l.dials) == 0 {
		return nil, errors.New("dynamic shardcache: no cluster member has advertised its site (`lan`) yet")
	}
	out := make([]*reverseproxy.Upstream, len(l.dials))
	for i, d := range l.dials {
		out[i] = &reverseproxy.Upstream{Dial: d}
	}
	return out, nil
}

// list returns the upstream list of ring and peers: the last one if it
// says the same, else a new one (kept for the next call).
func (u *Upstreams) list(ring *peering.Ring, peers []peering.PeerState) *upstreamList {
	if l := u.last.Load(); l != nil && l.ring == ring && l.same(peers) {
		return l
	}
	l := &upstreamList{ring: ring}
	for _, p := range peers {
		if p.Lan == "" || !ring.Has(p.Name) {
			continue
		}
		l.seen = append(l.seen, memberLan{p.Name, p.Lan})
	}
	sorted := slices.SortedFunc(slices.Values(l.seen), func(a, b memberLan) int { return cmp.Compare(a.name, b.name) })
	for _, m := range sorted {
		if !slices.Contains(l.dials, m.lan) { // two members with one address: one upstream
			l.dials = append(l.dials, m.lan)
		}
	}
	u.last.Store(l)
	return l
}

// same reports whether peers lists the (name, lan) pairs l was built from,
// in the same order.
func (l *upstreamList) same(peers []peering.PeerState) bool {
	i := 0
	for _, p := range peers {
		if p.Lan == "" || !l.ring.Has(p.Name) {
			continue
		}
		if i == len(l.seen) || l.seen[i] != (memberLan{p.Name, p.Lan}) {
			return false
		}
		i++
	}
	return i == len(l.seen)
}

// UnmarshalCaddyfile sets up the source from Caddyfile tokens. Syntax:
//
//	dynamic shardcache
func (u *Upstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume upstream source name
	if d.NextArg() {
		return d.Errf("dynamic shardcache takes no arguments: unexpected '%s'", d.Val())
	}
	if d.NextBlock(0) {
		return d.Errf("dynamic shardcache takes no options: unexpected '%s'", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Upstreams)(nil)
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
	_ caddyfile.Unmarshaler       = (*Upstreams)(nil)
)
