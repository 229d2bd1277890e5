package shardcache

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
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
type Director struct {
	// Index file name used to route directory paths. Default: `index.html`.
	Index string `json:"index,omitempty"`

	c *clusterRef
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
	return nil
}

// Select returns the upstream of the node that owns the request's path.
func (d *Director) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	key := cleanPath(r.URL.Path)
	if strings.HasSuffix(r.URL.Path, "/") {
		key = strings.TrimSuffix(key, "/") + "/" + d.Index
	}
	if up := d.pick(pool, key); up != nil {
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
	}
	return nil
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy shardcache [<index_file>]
func (d *Director) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next() // consume policy name
	if disp.NextArg() {
		d.Index = disp.Val()
	}
	if disp.NextArg() {
		return disp.Errf("lb_policy shardcache: unexpected argument '%s'", disp.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Director)(nil)
	_ reverseproxy.Selector = (*Director)(nil)
	_ caddyfile.Unmarshaler = (*Director)(nil)
)
