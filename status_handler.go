package shardcache

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(StatusPage{})
	httpcaddyfile.RegisterHandlerDirective("shardcache_status", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		var s StatusPage
		err := s.UnmarshalCaddyfile(h.Dispenser)
		return s, err
	})
	httpcaddyfile.RegisterDirectiveOrder("shardcache_status", httpcaddyfile.Before, "reverse_proxy")
}

// StatusPage serves the node's status page (the one the admin endpoint
// serves at /shardcache/) from a site. Caddy's admin endpoint refuses
// requests a browser makes when its address is typed in (they carry
// Sec-Fetch-Mode and no Origin: its cross-site protection), so to look at
// the page in a browser, put it on a site of your own, behind your own
// authentication:
//
//	admin.example.com {
//		basic_auth { ops $2a$14$... }
//		shardcache_status
//	}
//
// It answers GET and HEAD; other methods get 405.
type StatusPage struct{}

// CaddyModule returns the Caddy module information.
func (StatusPage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.shardcache_status",
		New: func() caddy.Module { return new(StatusPage) },
	}
}

// ServeHTTP renders the page.
func (StatusPage) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header()["Allow"] = allowGetHead
		return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
	}
	page, err := currentStatusPage()
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	writeStatusPage(w, r, page)
	return nil
}

// writeStatusPage sends a rendered page with the headers that keep it
// inert: inline CSS only, nothing else may load or run.
func writeStatusPage(w http.ResponseWriter, r *http.Request, page []byte) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(page)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	shardcache_status [<matcher>]
//
// It is ordered before reverse_proxy (and so before shardcache): with a
// matcher, it answers the paths it matches and shardcache the rest.
func (*StatusPage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive
	if d.NextArg() {
		return d.Errf("shardcache_status: unexpected argument '%s'", d.Val())
	}
	if d.NextBlock(0) {
		return d.Errf("shardcache_status: unexpected block (option '%s')", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = StatusPage{}
	_ caddyfile.Unmarshaler       = (*StatusPage)(nil)
)
